// A compiled PCRE2 pattern in UTF + Unicode-properties mode, JIT-compiled where the platform
// allows (private to tokenizer/). Safe to share between threads: matching allocates its own data.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct pcre2_real_code_8;  // pcre2_code, kept out of this header

namespace octet::detail {

class Regex {
 public:
  // Throws octet::Error (Unsupported) naming the pattern when PCRE2 cannot compile it.
  explicit Regex(const std::string& pattern);

  // Hugging Face's Split with behavior "Isolated": every match and every stretch of text between
  // matches becomes a piece, empty pieces dropped. `text` must be valid UTF-8.
  void split_isolated(std::string_view text, std::vector<std::string_view>& pieces) const;
  // Whether the pattern matches starting exactly at byte `pos`.
  bool matches_at(std::string_view text, size_t pos) const;

 private:
  struct CodeDeleter {
    void operator()(pcre2_real_code_8* code) const;
  };
  std::unique_ptr<pcre2_real_code_8, CodeDeleter> code_;
  std::string pattern_;
};

}  // namespace octet::detail
