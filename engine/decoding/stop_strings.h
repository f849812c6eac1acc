// Cuts generated text at the first stop string. Text that might still become a stop string is
// held back until the next piece settles it, so a stop string is never emitted, not even in part;
// everything else is released as soon as it cannot be part of one. Pure text logic, no model.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace octet::decoding {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stop_strings);  // empty strings are ignored

  // Adds the next piece of generated text and returns the text now safe to emit (valid until
  // the next call). Once a stop string is complete, returns the text before it and stopped()
  // turns true; later pushes return nothing.
  std::string_view push(std::string_view piece);
  // End of generation: releases what was held back (no stop string can complete any more).
  std::string_view finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_strings_;
  std::string pending_;  // received, not yet emitted
  std::string emitted_;  // what the last call returned
  bool stopped_ = false;
};

// The longest prefix of `text` not longer than `length` that does not end inside a UTF-8
// character (so a cut never splits one).
size_t utf8_boundary_at_or_before(std::string_view text, size_t length);

}  // namespace octet::decoding
