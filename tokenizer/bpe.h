// What the byte-level BPE metadata writer and reader share (private to tokenizer/).
// The keys are specified in docs/qbin.md ("tokenizer.bpe.*").
#pragma once
#include <cstdint>

namespace octet::detail::bpe {

// Bits of tokenizer.bpe.added_flags: the Hugging Face AddedToken options.
enum AddedTokenFlag : int32_t {
  kSpecial = 1,     // skipped by decode(skip_special), not parsed in text without parse_special
  kNormalized = 2,  // matched in the normalized text rather than the raw text
  kLstrip = 4,      // swallows the whitespace before it
  kRstrip = 8,      // swallows the whitespace after it
  kSingleWord = 16  // only matches when not inside a word
};

}  // namespace octet::detail::bpe
