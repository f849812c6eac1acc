#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine/error.h"
#include "tokenizer/utf8.h"

namespace octet::detail {
namespace {

std::string pcre2_message(int error) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(error, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

// RAII match data sized for the pattern.
struct MatchData {
  explicit MatchData(const pcre2_code* code) : data(pcre2_match_data_create_from_pattern(code, nullptr)) {
    if (!data) fail(ErrorCode::OutOfMemory, "cannot allocate regex match data");
  }
  ~MatchData() { pcre2_match_data_free(data); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  pcre2_match_data* data;
};

}  // namespace

void Regex::CodeDeleter::operator()(pcre2_code* code) const { pcre2_code_free(code); }

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (!code) {
    fail(ErrorCode::Unsupported, "regex '" + pattern + "' does not compile at offset " +
                                     std::to_string(error_offset) + ": " + pcre2_message(error));
  }
  code_.reset(code);
  // Without JIT (an unsupported platform) matching still works, only slower.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
}

void Regex::split_isolated(std::string_view text, std::vector<std::string_view>& pieces) const {
  MatchData match(code_.get());
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t piece_start = 0, search_from = 0;
  while (search_from <= text.size()) {
    // The text was checked to be valid UTF-8 on entry to encode.
    const int rc = pcre2_match(code_.get(), subject, text.size(), search_from, PCRE2_NO_UTF_CHECK,
                               match.data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail(ErrorCode::Internal, "regex '" + pattern_ + "' failed: " + pcre2_message(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.data);
    const size_t start = ovector[0], end = ovector[1];
    if (start > piece_start) pieces.push_back(text.substr(piece_start, start - piece_start));
    if (end > start) pieces.push_back(text.substr(start, end - start));
    piece_start = end;
    // After an empty match, search again one character further on (as Oniguruma's iterator does).
    if (end > start) {
      search_from = end;
    } else if (end < text.size()) {
      search_from = end + utf8::decode(text, end).length;
    } else {
      break;
    }
  }
  if (piece_start < text.size()) pieces.push_back(text.substr(piece_start));
}

bool Regex::matches_at(std::string_view text, size_t pos) const {
  MatchData match(code_.get());
  const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos,
                             PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, match.data, nullptr);
  if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
    fail(ErrorCode::Internal, "regex '" + pattern_ + "' failed: " + pcre2_message(rc));
  }
  return rc >= 0;
}

}  // namespace octet::detail
