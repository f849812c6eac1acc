#include "engine/decoding/stop_strings.h"

#include <algorithm>

namespace octet::decoding {

namespace {

bool is_continuation_byte(unsigned char c) { return (c & 0xC0) == 0x80; }

size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;  // a stray byte: it stands alone
}

// Length of the longest suffix of `text` that is a proper prefix of `stop`.
size_t partial_match_at_end(std::string_view text, std::string_view stop) {
  for (size_t length = std::min(text.size(), stop.size() - 1); length > 0; --length)
    if (text.substr(text.size() - length) == stop.substr(0, length)) return length;
  return 0;
}

}  // namespace

size_t utf8_boundary_at_or_before(std::string_view text, size_t length) {
  // Find where the character containing byte length-1 starts; cut before it if it is incomplete.
  size_t start = length;
  while (start > 0 && length - start < 4 && is_continuation_byte(text[start - 1])) --start;
  if (start == 0 || length - start >= 4) return length;  // no lead byte nearby: not UTF-8, keep
  const size_t lead = start - 1;
  return lead + sequence_length(text[lead]) > length ? lead : length;
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (auto& stop : stop_strings)
    if (!stop.empty()) stop_strings_.push_back(std::move(stop));
}

std::string_view StopStringMatcher::push(std::string_view piece) {
  emitted_.clear();
  if (stopped_) return {};
  pending_.append(piece);

  // pending_ starts right after emitted text, and everything before it was checked to hold no
  // stop string or start of one, so a stop string found here is the first in the whole text.
  size_t first_stop = std::string::npos;
  for (const auto& stop : stop_strings_) first_stop = std::min(first_stop, pending_.find(stop));
  if (first_stop != std::string::npos) {
    emitted_.assign(pending_, 0, first_stop);
    pending_.clear();
    stopped_ = true;
    return emitted_;
  }

  size_t held = 0;
  for (const auto& stop : stop_strings_) held = std::max(held, partial_match_at_end(pending_, stop));
  const size_t releasable = utf8_boundary_at_or_before(pending_, pending_.size() - held);
  emitted_.assign(pending_, 0, releasable);
  pending_.erase(0, releasable);
  return emitted_;
}

std::string_view StopStringMatcher::finish() {
  emitted_.clear();
  if (!stopped_) emitted_.swap(pending_);
  pending_.clear();
  return emitted_;
}

}  // namespace octet::decoding
