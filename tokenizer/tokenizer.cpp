#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <climits>

#include "engine/error.h"
#include "tokenizer/backends.h"
#include "tokenizer/utf8.h"

namespace octet {

bool Tokenizer::is_eos(int32_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end();
}

std::unique_ptr<Tokenizer> Tokenizer::from_metadata(const qbin::Metadata& metadata, std::string_view prefix) {
  const std::string p(prefix);
  const std::string& kind = metadata.str(p + ".kind");
  if (kind == "sentencepiece") return detail::make_sentencepiece_tokenizer(metadata, p);
  if (kind == "bpe") return detail::make_bpe_tokenizer(metadata, p);
  if (kind == "whitespace") return detail::make_whitespace_tokenizer(metadata, p);
  fail(ErrorCode::Unsupported, p + ".kind: unknown tokenizer kind '" + kind + "'");
}

namespace detail {

SpecialIds read_special_ids(const qbin::Metadata& metadata, const std::string& prefix,
                            SpecialIds defaults, int32_t vocab_size) {
  SpecialIds ids;
  ids.bos_id = metadata.i32_or(prefix + ".bos_id", defaults.bos_id);
  ids.add_bos = metadata.boolean_or(prefix + ".add_bos", defaults.add_bos);
  const std::string eos_key = prefix + ".eos_ids";
  ids.eos_ids = metadata.has(eos_key) ? metadata.i32_array(eos_key) : defaults.eos_ids;

  if (ids.bos_id < -1 || ids.bos_id >= vocab_size) {
    fail(ErrorCode::Format, prefix + ".bos_id " + std::to_string(ids.bos_id) + " is outside the vocabulary");
  }
  for (int32_t id : ids.eos_ids) {
    if (id < 0 || id >= vocab_size) {
      fail(ErrorCode::Format, eos_key + ": " + std::to_string(id) + " is outside the vocabulary");
    }
  }
  return ids;
}

TokenList::TokenList(const qbin::Metadata& metadata, const std::string& prefix) {
  tokens_ = metadata.str_array(prefix + ".vocab");
  if (tokens_.empty() || tokens_.size() > static_cast<size_t>(INT32_MAX))
    fail(ErrorCode::Format, prefix + ".vocab: " + std::to_string(tokens_.size()) + " tokens is not a valid vocabulary size");
  ids_.reserve(tokens_.size());
  for (size_t id = 0; id < tokens_.size(); ++id) ids_.emplace(tokens_[id], static_cast<int32_t>(id));

  unk_id_ = metadata.i32(prefix + ".unk_id");
  if (!contains(unk_id_))
    fail(ErrorCode::Format, prefix + ".unk_id " + std::to_string(unk_id_) + " is outside the vocabulary");
  if (metadata.has(prefix + ".special_ids")) special_ids_ = metadata.i32_array(prefix + ".special_ids");
  for (int32_t special : special_ids_)
    if (!contains(special))
      fail(ErrorCode::Format, prefix + ".special_ids: " + std::to_string(special) + " is outside the vocabulary");
  // Longest first, so that the first special token found at a position is the longest one there.
  std::stable_sort(special_ids_.begin(), special_ids_.end(),
                   [&](int32_t a, int32_t b) { return token(a).size() > token(b).size(); });
  add_eos_ = metadata.boolean_or(prefix + ".add_eos", false);
}

int32_t TokenList::id(std::string_view token) const {
  const auto found = ids_.find(token);
  return found == ids_.end() ? unk_id_ : found->second;
}

bool TokenList::is_special(int32_t id) const {
  return std::find(special_ids_.begin(), special_ids_.end(), id) != special_ids_.end();
}

int32_t TokenList::special_at(std::string_view text, size_t pos) const {
  for (int32_t id : special_ids_)
    if (!token(id).empty() && text.substr(pos).starts_with(token(id))) return id;
  return -1;
}

}  // namespace detail

// Each push decodes the ids so far and returns what is new, except a trailing run of U+FFFD:
// that may be the start of a character whose remaining bytes are still to come (a byte-level
// token or a SentencePiece byte piece), so it waits for the next id or finish().
//
// To keep each push cheap over long streams, once everything is settled only the last few ids
// are kept, as context for what follows (SentencePiece's leading-space rule, characters spelled
// over several tokens), when decoding them alone gives exactly the end of the text so far.
std::string DetokenizeStream::push(int32_t id) {
  constexpr size_t kContextIds = 8, kTrimAfterIds = 64;
  ids_.push_back(id);
  const std::string text = tokenizer_.decode(ids_);
  size_t settled = text.size();
  while (std::string_view(text.data(), settled).ends_with(utf8::kReplacement)) {
    settled -= utf8::kReplacement.size();
  }
  std::string piece = settled > emitted_ ? text.substr(emitted_, settled - emitted_) : std::string();
  emitted_ = std::max(emitted_, settled);

  if (settled == text.size() && ids_.size() >= kTrimAfterIds) {
    std::vector<int32_t> context(ids_.end() - kContextIds, ids_.end());
    const std::string context_text = tokenizer_.decode(context);
    if (text.ends_with(context_text) && !context_text.starts_with(utf8::kReplacement)) {
      ids_ = std::move(context);
      emitted_ = context_text.size();
    }
  }
  return piece;
}

std::string DetokenizeStream::finish() {
  const std::string text = tokenizer_.decode(ids_);
  std::string rest = emitted_ < text.size() ? text.substr(emitted_) : std::string();
  emitted_ = text.size();
  return rest;
}

}  // namespace octet
