// Picks the next token from a vector of logits. Decoding sees logits, never a model's insides.
//
// Order of operations, as llama.cpp's default sampler chain applies them:
//   repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
// top-p and min-p therefore look at the distribution at temperature 1, and temperature only
// reshapes the survivors. Temperature <= 0 is greedy: the argmax of the penalized logits (ties go
// to the lowest id), with no randomness.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace octet::decoding {

struct SamplingParams {
  float temperature = 0.8f;     // <= 0: greedy
  int32_t top_k = 40;           // <= 0: off
  float top_p = 0.95f;          // >= 1: off
  float min_p = 0.05f;          // <= 0: off
  float repeat_penalty = 1.1f;  // 1: off
  int32_t repeat_last_n = 64;   // tokens of history the penalty looks at; 0: off, -1: all
  uint64_t seed = 0;
};

// xoshiro256** seeded through splitmix64: a generator of our own definition, so the same seed
// gives the same numbers with every compiler and standard library (std::distributions do not).
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // in [0, 1), 53 random bits

 private:
  uint64_t state_[4];
};

struct Candidate {
  int32_t id;
  float logit;
  float p;  // probability, set for the distribution sample() draws from
};

class Sampler {
 public:
  Sampler(int32_t vocab_size, const SamplingParams& params);

  // The next token for `logits` (vocab_size floats). `history` holds the tokens so far (prompt
  // and generated); the repetition penalty looks at its last repeat_last_n.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

  // The distribution sample() draws from: the surviving candidates in decreasing probability
  // (ties: lower id first), with probabilities summing to 1. Greedy: the argmax alone. Valid until
  // the next call.
  std::span<const Candidate> distribution(std::span<const float> logits,
                                          std::span<const int32_t> history);

 private:
  void load_penalized_logits(std::span<const float> logits, std::span<const int32_t> history);
  size_t filter_top_k_top_p_min_p();
  void apply_temperature(size_t n);

  SamplingParams params_;
  Rng rng_;
  int32_t vocab_size_;
  std::vector<Candidate> candidates_;  // vocab_size entries, reused for every token
  std::vector<uint8_t> penalized_;     // per id: already penalized this step
};

}  // namespace octet::decoding
