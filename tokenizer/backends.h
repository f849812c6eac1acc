// The two tokenizer implementations behind Tokenizer::from_metadata (private to tokenizer/).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace octet::detail {

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const qbin::Metadata& metadata,
                                                        const std::string& prefix);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const qbin::Metadata& metadata, const std::string& prefix);

// The keys every kind shares: tokenizer.bos_id, .eos_ids, .add_bos. A missing key takes the
// given default; ids are checked against the vocabulary (throws Format).
struct SpecialIds {
  int32_t bos_id = -1;
  bool add_bos = false;
  std::vector<int32_t> eos_ids;
};
SpecialIds read_special_ids(const qbin::Metadata& metadata, const std::string& prefix,
                            SpecialIds defaults, int32_t vocab_size);

}  // namespace octet::detail
