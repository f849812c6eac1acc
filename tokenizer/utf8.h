// UTF-8 helpers shared by the tokenizers (private to tokenizer/).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace octet::utf8 {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// One step of decoding at `pos`: a well-formed character, or the maximal ill-formed subpart
// (the longest prefix of a well-formed sequence, at least one byte), as Unicode §3.9 defines it.
struct Step {
  char32_t code_point;  // meaningful when valid
  size_t length;        // bytes consumed, >= 1
  bool valid;
};
Step decode(std::string_view text, size_t pos);

// Throws octet::Error (InvalidArgument) naming the byte offset of the first invalid sequence.
void require_valid(std::string_view text);

// Bytes to text with each maximal ill-formed subpart replaced by U+FFFD, as Rust's
// String::from_utf8_lossy (and so the Hugging Face decoders) does.
std::string lossy(std::string_view bytes);

void append(std::string& out, char32_t code_point);

// The Unicode White_Space property (what Rust's char::is_whitespace and regex \s test).
bool is_white_space(char32_t code_point);

}  // namespace octet::utf8
