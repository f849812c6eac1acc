// SentencePiece models through the SentencePiece library.
#include <sentencepiece_processor.h>

#include <algorithm>

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

    const auto ids = detail::read_special_ids(metadata, prefix, model_special_ids(processor_), vocab_size());
    bos_id_ = ids.bos_id, add_bos_ = ids.add_bos, eos_ids_ = ids.eos_ids;

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
      const int32_t control = control_piece_at(text, pos);
      if (control < 0) {
        ++pos;
        continue;
      }
      append_encoded(text.substr(text_start, pos - text_start), ids);
      ids.push_back(control);
      pos += processor_.IdToPiece(control).size();
      text_start = pos;
    }
    append_encoded(text.substr(text_start), ids);
    return ids;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
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

  int32_t vocab_size() const override { return processor_.GetPieceSize(); }
  bool is_special(int32_t id) const override {
    return id >= 0 && id < vocab_size() && processor_.IsControl(id);
  }

 private:
  int32_t control_piece_at(std::string_view text, size_t pos) const {
    for (int32_t id : control_pieces_) {
      if (text.substr(pos).starts_with(processor_.IdToPiece(id))) return id;
    }
    return -1;
  }

  void append_encoded(std::string_view text, std::vector<int32_t>& ids) const {
    if (text.empty()) return;
    std::vector<int> encoded;
    const auto status = processor_.Encode({text.data(), text.size()}, &encoded);
    if (!status.ok()) fail(ErrorCode::Internal, "SentencePiece encode failed: " + status.ToString());
    ids.insert(ids.end(), encoded.begin(), encoded.end());
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::vector<int32_t> control_pieces_;  // ids of the non-empty control pieces, longest first
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
