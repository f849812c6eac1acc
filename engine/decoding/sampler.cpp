#include "engine/decoding/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/error.h"

namespace octet::decoding {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// A strict total order (higher logit first, then lower id), so the survivors of every filter
// and their order do not depend on the standard library's sort or nth_element.
bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
}

}  // namespace

Rng::Rng(uint64_t seed) {
  for (uint64_t& s : state_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = rotl(state_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(int32_t vocab_size, const SamplingParams& params)
    : params_(params), rng_(params.seed), vocab_size_(vocab_size) {
  if (vocab_size <= 0) fail(ErrorCode::InvalidArgument, "sampler: vocabulary size must be positive");
  if (std::isnan(params.temperature) || std::isnan(params.top_p) || std::isnan(params.min_p) ||
      !(params.repeat_penalty > 0) || params.repeat_last_n < -1)
    fail(ErrorCode::InvalidArgument,
         "sampler: invalid parameters (temperature, top_p, min_p must be numbers, "
         "repeat_penalty > 0, repeat_last_n >= -1)");
  candidates_.resize(vocab_size);
  penalized_.assign(vocab_size, 0);
}

// Copies the logits into candidates_ (indexed by id) and applies the CTRL / llama.cpp repetition
// penalty: each distinct token of the window has a positive logit divided by the penalty and a
// negative one multiplied by it, once however often it occurs.
void Sampler::load_penalized_logits(std::span<const float> logits, std::span<const int32_t> history) {
  if (logits.size() != static_cast<size_t>(vocab_size_))
    fail(ErrorCode::InvalidArgument, "sampler: expected " + std::to_string(vocab_size_) +
                                         " logits, got " + std::to_string(logits.size()));
  for (int32_t id = 0; id < vocab_size_; ++id) {
    const float logit = logits[id];
    // NaN would break the ordering; a token with a NaN logit can never be chosen.
    candidates_[id] = {id, std::isnan(logit) ? -std::numeric_limits<float>::infinity() : logit, 0.0f};
  }
  const float penalty = params_.repeat_penalty;
  if (penalty == 1.0f || params_.repeat_last_n == 0) return;
  const size_t window = params_.repeat_last_n < 0
                            ? history.size()
                            : std::min(history.size(), static_cast<size_t>(params_.repeat_last_n));
  const auto recent = history.last(window);
  for (int32_t id : recent) {
    if (id < 0 || id >= vocab_size_ || penalized_[id]) continue;
    penalized_[id] = 1;
    float& logit = candidates_[id].logit;
    logit = logit > 0 ? logit / penalty : logit * penalty;
  }
  for (int32_t id : recent)
    if (id >= 0 && id < vocab_size_) penalized_[id] = 0;
}

// Leaves the survivors of top-k, top-p and min-p sorted at the front of candidates_ and returns
// their number. Only the candidates that can survive are sorted: min-p's threshold depends on the
// logits alone (p_i >= min_p * p_max  <=>  logit_i >= max_logit + log(min_p)), and top-p and
// min-p both keep a prefix of the sorted order, so applying them in llama.cpp's order (top-p
// first, its cumulative sum over all top-k survivors) keeps the shorter of the two prefixes.
// Top-p sorts the front in growing chunks, as far as its cumulative sum needs.
size_t Sampler::filter_top_k_top_p_min_p() {
  auto first = candidates_.begin();
  size_t n = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    // Heap selection: about one comparison per candidate for a small k; leaves the k sorted.
    std::partial_sort(first, first + params_.top_k, first + n, ranks_before);
    n = params_.top_k;
  }
  const float max_logit =
      std::max_element(first, first + n, [](const Candidate& a, const Candidate& b) {
        return a.logit < b.logit;
      })->logit;
  if (!std::isfinite(max_logit))
    fail(ErrorCode::Internal, "sampler: the logits hold no finite value");

  size_t kept = n;
  if (params_.min_p > 0) {
    // min_p above 1 would keep nothing; at 1 it keeps the tokens tied with the best.
    const float threshold = max_logit + std::log(std::min(params_.min_p, 1.0f));
    kept = std::partition(first, first + n, [&](const Candidate& c) { return c.logit >= threshold; }) -
           first;
  }
  if (params_.top_p >= 1) {
    std::sort(first, first + kept, ranks_before);
    return kept;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += std::exp(candidates_[i].logit - max_logit);
  double cumulative = 0;
  size_t sorted = 0;
  for (size_t i = 0; i < kept; ++i) {
    if (i == sorted) {
      const size_t chunk_end = std::min(kept, std::max<size_t>(2 * sorted, 64));
      if (chunk_end < kept) std::nth_element(first + sorted, first + chunk_end, first + kept, ranks_before);
      std::sort(first + sorted, first + chunk_end, ranks_before);
      sorted = chunk_end;
    }
    cumulative += std::exp(candidates_[i].logit - max_logit) / total;
    if (cumulative >= params_.top_p) return i + 1;
  }
  return kept;
}

void Sampler::apply_temperature(size_t n) {
  const float max_logit = candidates_[0].logit;  // sorted: the first is the best
  double total = 0;
  for (size_t i = 0; i < n; ++i) {
    candidates_[i].p = std::exp((candidates_[i].logit - max_logit) / params_.temperature);
    total += candidates_[i].p;
  }
  for (size_t i = 0; i < n; ++i) candidates_[i].p = static_cast<float>(candidates_[i].p / total);
}

std::span<const Candidate> Sampler::distribution(std::span<const float> logits,
                                                 std::span<const int32_t> history) {
  load_penalized_logits(logits, history);
  if (!(params_.temperature > 0)) {
    // max_element returns the first of equal maxima: the lowest id.
    candidates_[0] = *std::max_element(candidates_.begin(), candidates_.end(),
                                       [](const Candidate& a, const Candidate& b) {
                                         return a.logit < b.logit;
                                       });
    if (candidates_[0].logit == -std::numeric_limits<float>::infinity())
      fail(ErrorCode::Internal, "sampler: the logits hold no finite value");
    candidates_[0].p = 1.0f;
    return {candidates_.data(), 1};
  }
  const size_t survivors = filter_top_k_top_p_min_p();
  apply_temperature(survivors);
  return {candidates_.data(), survivors};
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const auto candidates = distribution(logits, history);
  if (candidates.size() == 1) return candidates[0].id;  // greedy, or one survivor: no draw
  const double u = rng_.uniform();
  double cumulative = 0;
  for (const Candidate& c : candidates) {
    cumulative += c.p;
    if (u < cumulative) return c.id;
  }
  return candidates.back().id;  // u fell past the rounded total
}

}  // namespace octet::decoding
