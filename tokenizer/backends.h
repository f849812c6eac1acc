// The tokenizer implementations behind Tokenizer::from_metadata (private to tokenizer/).
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace octet::detail {

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const qbin::Metadata& metadata,
                                                        const std::string& prefix);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const qbin::Metadata& metadata, const std::string& prefix);
std::unique_ptr<Tokenizer> make_whitespace_tokenizer(const qbin::Metadata& metadata, const std::string& prefix);

// The keys every kind shares: tokenizer.bos_id, .eos_ids, .add_bos. A missing key takes the
// given default; ids are checked against the vocabulary (throws Format).
struct SpecialIds {
  int32_t bos_id = -1;
  bool add_bos = false;
  std::vector<int32_t> eos_ids;
};
SpecialIds read_special_ids(const qbin::Metadata& metadata, const std::string& prefix,
                            SpecialIds defaults, int32_t vocab_size);

// A vocabulary stored as its tokens by id ("<prefix>.vocab"), as translation models number them
// (Marian's vocab.json, CTranslate2's vocabulary files), with the keys that go with it: unk_id,
// special_ids and add_eos (docs/qbin.md, encdec). Throws (Format) when they do not fit together.
class TokenList {
 public:
  TokenList(const qbin::Metadata& metadata, const std::string& prefix);
  TokenList(const TokenList&) = delete;  // ids_ views the strings of tokens_
  TokenList& operator=(const TokenList&) = delete;
  int32_t size() const { return static_cast<int32_t>(tokens_.size()); }
  const std::string& token(int32_t id) const { return tokens_[static_cast<size_t>(id)]; }
  int32_t id(std::string_view token) const;  // unk_id when the token is not in the list
  bool contains(int32_t id) const { return id >= 0 && id < size(); }
  bool is_special(int32_t id) const;
  // The longest special token spelled at text[pos], or -1.
  int32_t special_at(std::string_view text, size_t pos) const;
  bool add_eos() const { return add_eos_; }

 private:
  std::vector<std::string> tokens_;
  std::unordered_map<std::string_view, int32_t> ids_;  // views into tokens_; the first id wins
  int32_t unk_id_ = -1;
  std::vector<int32_t> special_ids_;  // longest token first
  bool add_eos_ = false;
};

}  // namespace octet::detail
