// SentencePiece models through the SentencePiece library. With "<prefix>.vocab" (Marian, CTranslate2)
// the ids are positions in that list, not the model's own: pieces are looked up there.
#include <sentencepiece_processor.h>

#include <algorithm>
#include <optional>

#include "engine/error.h"
#include "tokenizer/backends.h"
#include "tokenizer/utf8.h"

namespace octet {
namespace {

void load_model(sentencepiece::SentencePieceProcessor& processor, std::string_view model_bytes,
                const std::string& what) {
  const auto status = processor.LoadFromSerializedProto({model_bytes.data(), model_bytes.size()});
  if (!status.ok()) fail(ErrorCode::Format, what + ": not a loadable SentencePiece model: " + status.ToString());
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const qbin::Metadata& metadata, const std::string& prefix) {
    const std::string model_key = prefix + ".sentencepiece.model";
    const qbin::Bytes& model = metadata.bytes(model_key);
    load_model(processor_, {reinterpret_cast<const char*>(model.data()), model.size()}, model_key);
    if (metadata.has(prefix + ".vocab")) {
      vocab_.emplace(metadata, prefix);
      split_language_code_ = metadata.boolean_or(prefix + ".split_language_code", false);
    }

    const auto ids = detail::read_special_ids(
        metadata, prefix, vocab_ ? detail::SpecialIds{} : model_special_ids(processor_), vocab_size());
    bos_id_ = ids.bos_id, add_bos_ = ids.add_bos, eos_ids_ = ids.eos_ids;

    if (vocab_) return;  // the list's special tokens are matched in text instead of control pieces
    for (int32_t id = 0; id < vocab_size(); ++id) {
      if (processor_.IsControl(id) && !processor_.IdToPiece(id).empty()) control_pieces_.push_back(id);
    }
    // Longest first, so that the first piece found at a position is the longest one there.
    std::sort(control_pieces_.begin(), control_pieces_.end(), [&](int32_t a, int32_t b) {
      return processor_.IdToPiece(a).size() > processor_.IdToPiece(b).size();
    });
  }

  static detail::SpecialIds model_special_ids(const sentencepiece::SentencePieceProcessor& processor) {
    detail::SpecialIds ids;
    ids.bos_id = processor.bos_id();
    ids.add_bos = ids.bos_id >= 0;  // as Llama's tokenizer does
    if (processor.eos_id() >= 0) ids.eos_ids = {processor.eos_id()};
    return ids;
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const override {
    utf8::require_valid(text);
    std::vector<int32_t> ids;
    if (add_bos && add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
    // With parse_special, control pieces written in the text ("<s>", "</s>") become their ids and
    // the text between them is encoded piece by piece, as llama.cpp does.
    size_t text_start = 0, pos = 0;
    while (parse_special && pos < text.size()) {
      const int32_t control = vocab_ ? vocab_->special_at(text, pos) : control_piece_at(text, pos);
      if (control < 0) {
        ++pos;
        continue;
      }
      append_encoded(text.substr(text_start, pos - text_start), ids);
      ids.push_back(control);
      pos += piece_text(control).size();
      text_start = pos;
    }
    append_encoded(text.substr(text_start), ids);
    if (add_bos && vocab_ && vocab_->add_eos() && !eos_ids_.empty()) ids.push_back(eos_ids_.front());
    return ids;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    if (vocab_) return decode_listed(ids, skip_special);
    // Ids outside the vocabulary are dropped, as the Hugging Face decoders do (a model's output
    // layer may be wider than its vocabulary).
    std::vector<int> valid;
    valid.reserve(ids.size());
    for (int32_t id : ids) {
      if (id >= 0 && id < vocab_size()) valid.push_back(id);
    }
    if (skip_special) {
      std::string text;
      const auto status = processor_.Decode(valid, &text);
      if (!status.ok()) fail(ErrorCode::Internal, "SentencePiece decode failed: " + status.ToString());
      return text;
    }

    // The library always hides control pieces; put their text back where they stand.
    const auto decoded = processor_.DecodeIdsAsImmutableProto(valid);
    const std::string& text = decoded.text();
    std::string out;
    size_t copied = 0;
    for (const auto& piece : decoded.pieces()) {
      if (!processor_.IsControl(static_cast<int>(piece.id()))) continue;
      const size_t at = std::min<size_t>(piece.begin(), text.size());
      out.append(text, copied, at - copied);
      out += piece.piece();
      copied = at;
    }
    out.append(text, copied);
    return out;
  }

  int32_t vocab_size() const override { return vocab_ ? vocab_->size() : processor_.GetPieceSize(); }
  bool is_special(int32_t id) const override {
    if (vocab_) return vocab_->is_special(id);
    return id >= 0 && id < vocab_size() && processor_.IsControl(id);
  }

 private:
  const std::string& piece_text(int32_t id) const { return vocab_ ? vocab_->token(id) : processor_.IdToPiece(id); }

  int32_t control_piece_at(std::string_view text, size_t pos) const {
    for (int32_t id : control_pieces_) {
      if (text.substr(pos).starts_with(processor_.IdToPiece(id))) return id;
    }
    return -1;
  }

  void append_encoded(std::string_view text, std::vector<int32_t>& ids) const {
    if (text.empty()) return;
    if (vocab_) return append_listed(text, ids);
    std::vector<int> encoded;
    const auto status = processor_.Encode({text.data(), text.size()}, &encoded);
    if (!status.ok()) fail(ErrorCode::Internal, "SentencePiece encode failed: " + status.ToString());
    ids.insert(ids.end(), encoded.begin(), encoded.end());
  }

  // As MarianTokenizer: a leading language code (">>fr<<") is one token, then the pieces of the
  // rest are looked up in the list.
  void append_listed(std::string_view text, std::vector<int32_t>& ids) const {
    if (split_language_code_ && text.starts_with(">>")) {
      if (const size_t end = text.find("<<"); end != std::string_view::npos) {
        ids.push_back(vocab_->id(text.substr(0, end + 2)));
        text.remove_prefix(end + 2);
      }
    }
    std::vector<std::string> pieces;
    const auto status = processor_.Encode({text.data(), text.size()}, &pieces);
    if (!status.ok()) fail(ErrorCode::Internal, "SentencePiece encode failed: " + status.ToString());
    for (const std::string& piece : pieces) ids.push_back(vocab_->id(piece));
  }

  // As MarianTokenizer.decode: runs of ordinary pieces are detokenized by SentencePiece, special
  // tokens are written as themselves followed by a space (or skipped); then every "▁" left (pieces
  // the model does not know come back as they are) becomes a space, and the ends are trimmed.
  std::string decode_listed(std::span<const int32_t> ids, bool skip_special) const {
    std::string text;
    std::vector<std::string> run;
    auto flush_run = [&] {
      std::string decoded;
      const auto status = processor_.Decode(run, &decoded);
      if (!status.ok()) fail(ErrorCode::Internal, "SentencePiece decode failed: " + status.ToString());
      text += decoded;
      run.clear();
    };
    for (int32_t id : ids) {
      if (!vocab_->contains(id)) continue;
      if (!vocab_->is_special(id)) {
        run.push_back(vocab_->token(id));
      } else if (!skip_special) {
        flush_run();
        text += vocab_->token(id) + " ";
      }
    }
    flush_run();
    constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581
    std::string spaced;
    for (size_t pos = 0;;) {
      const size_t at = text.find(kSpaceSymbol, pos);
      spaced.append(text, pos, at == std::string::npos ? std::string::npos : at - pos);
      if (at == std::string::npos) break;
      spaced += ' ';
      pos = at + kSpaceSymbol.size();
    }
    return strip_white_space(spaced);
  }

  // Python's str.strip(): white space off both ends.
  static std::string strip_white_space(const std::string& text) {
    size_t begin = std::string::npos, end = 0;
    for (size_t pos = 0; pos < text.size();) {
      const utf8::Step step = utf8::decode(text, pos);
      if (!step.valid || !utf8::is_white_space(step.code_point)) {
        if (begin == std::string::npos) begin = pos;
        end = pos + step.length;
      }
      pos += step.length;
    }
    return begin == std::string::npos ? std::string() : text.substr(begin, end - begin);
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::vector<int32_t> control_pieces_;  // ids of the non-empty control pieces, longest first
  std::optional<detail::TokenList> vocab_;
  bool split_language_code_ = false;
};

}  // namespace

namespace detail {
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const qbin::Metadata& metadata,
                                                        const std::string& prefix) {
  return std::make_unique<SentencePieceTokenizer>(metadata, prefix);
}
}  // namespace detail

void sentencepiece_metadata(const std::string& model_bytes, qbin::Metadata& out, std::string_view prefix) {
  const std::string p(prefix);
  sentencepiece::SentencePieceProcessor processor;
  load_model(processor, model_bytes, "tokenizer model");
  const auto ids = SentencePieceTokenizer::model_special_ids(processor);
  out.set(p + ".kind", std::string("sentencepiece"));
  out.set(p + ".sentencepiece.model", qbin::Bytes(model_bytes.begin(), model_bytes.end()));
  out.set(p + ".bos_id", ids.bos_id);
  out.set(p + ".eos_ids", ids.eos_ids);
  out.set(p + ".add_bos", ids.add_bos);
}

}  // namespace octet
