// Sequence search for encoder-decoder models (translation): beam search with Hugging Face
// semantics, and greedy/sampling, over a model seen only through DecoderStep.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace octet {

// The model side of one decoding step for every live row (rows = live sentences x beams).
// `parents[r]` is the row of the previous step that row r continues (the model reorders or drops
// its self-attention caches accordingly; on the first step it indexes the sentences of the batch),
// `tokens[r]` the token row r just appended. Writes rows x vocab_size() logits (before any
// log-softmax; model-level biases such as final_logits_bias already added).
class DecoderStep {
 public:
  virtual ~DecoderStep() = default;
  virtual int32_t vocab_size() const = 0;
  virtual void step(std::span<const int32_t> parents, std::span<const int32_t> tokens, float* logits) = 0;
  // A vocab_size() bias that step() leaves out of the logits for search() to add, row by row
  // while it reads them anyway (one pass less over rows x vocab floats); null: none.
  virtual const float* deferred_logits_bias() const { return nullptr; }
};

struct SearchOptions {
  int32_t beam_size = 4;          // 1: greedy (or sampling when temperature > 0)
  int32_t n_best = 1;             // hypotheses returned per sentence (<= beam_size)
  float length_penalty = 1.0f;    // score = sum logprob / length^length_penalty (HF semantics)
  bool early_stopping = false;    // HF: true stops a sentence once beam_size hypotheses finished
  bool early_stopping_never = false;  // HF early_stopping="never" (overrides early_stopping)
  int32_t max_length = 256;       // generated tokens, the decoder start token not counted
  int32_t min_length = 0;         // generated tokens before EOS may come (HF min_new_tokens;
                                  // HF's min_length counts the decoder start token: this + 1)
  int32_t no_repeat_ngram_size = 0;
  float repetition_penalty = 1.0f;
  std::vector<std::vector<int32_t>> bad_words;  // sequences never generated (e.g. {{pad}})
  int32_t forced_eos_id = -1;     // >= 0: the one token allowed as the max_length-th generated
                                  // (HF forced_eos_token_id)
  bool renormalize_logits = false;  // HF: log_softmax again after the processors (Marian sets it)
  std::vector<int32_t> prefix;    // forced first tokens (target prefix), same for every sentence;
                                  // in the output and the score, shorter than max_length, no EOS
  float temperature = 0.0f;       // > 0 with beam_size 1: sampling
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
};

struct Hypothesis {
  std::vector<int32_t> tokens;  // generated ids, without the decoder start token, EOS excluded
  float score = 0.0f;           // length-normalised log probability (HF's sequences_scores)
};

// Called whenever the output of a sentence grows by tokens every live beam agrees on (they can
// no longer change); returns false to cancel: search() then throws Error(Cancelled).
using SettledCallback = std::function<bool(int32_t sentence, std::span<const int32_t> new_tokens)>;

// Searches `batch` sentences at once, all rows of all sentences through one step call.
// Returns n_best hypotheses per sentence, best first (fewer, even none, only for a sentence whose
// every continuation became impossible, e.g. all tokens banned, before enough finished).
std::vector<std::vector<Hypothesis>> search(DecoderStep& model, int32_t batch, int32_t start_token,
                                            std::span<const int32_t> eos_ids, const SearchOptions& options,
                                            const SettledCallback& on_settled = {});

}  // namespace octet
