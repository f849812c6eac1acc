// Beam search as transformers 5.x generate() does it (GenerationMixin._beam_search and its
// helpers), and greedy/sampling as its _sample does it, over the rows of all sentences at once.
//
// Beam search, per sentence and step (g = tokens generated so far):
//   1. log_softmax of the logits, then the processors in HF's order, on the log-probs: repetition
//      penalty, no-repeat n-gram, bad words, min length, forced EOS, renormalization. They see the
//      decoder start token as part of the sequence, as HF's input_ids hold it.
//   2. candidate = running score of its beam + log-prob (float32); keep the top
//      K = max(2, 1 + #eos) * beam_size over beam_size x vocab.
//   3. a candidate "hits" when its token is an EOS or it reaches max_length. The next running
//      beams are the best beam_size candidates after adding -1e9 to the hits (in practice: the
//      best non-hits). Hits among the first beam_size candidates enter the finished list (best
//      beam_size kept) with score = sum of log-probs / (g + 1)^length_penalty, g + 1 being the
//      generated length with the EOS (HF's cur_len + 1 - decoder_prompt_len).
//   4. the sentence is done at max_length, or once beam_size hypotheses are finished and either
//      early_stopping is set or the best running score / L^length_penalty is no better than the
//      worst finished score, L = max_length for early_stopping_never with a positive length
//      penalty, else g + 1. (Before beam_size are finished HF compares with -1e9 instead: a
//      sentence whose every continuation is -inf ends with fewer hypotheses, maybe none.)
//      HF keeps stepping a done sentence but adds -1e9 to all it would add to the finished list,
//      so dropping its rows gives the same results.
// The first step has one row per sentence: HF starts beam_size identical beams scored 0, -1e9,
// -1e9, ...; we step the one row and let virtual beams 1.. read its log-probs at score -1e9, which
// selects as HF does even when fewer than K tokens are finite.
// Ties (equal float scores) go to the lower beam, then the lower token id, and a finished
// hypothesis already listed stays before a new one of equal score. torch.topk leaves the order of
// ties unspecified, so results that hinge on exact ties may differ from HF's.
//
// Greedy and sampling (beam_size 1) follow HF's _sample: the same processors, on the raw logits,
// then the argmax (the first of equal maxima) or a draw. Sampling reuses the LLM sampler's
// top-k -> top-p -> temperature chain and its RNG (one per sentence, seeded seed + sentence), so
// it is seeded and reproducible but draws differently from HF (which applies temperature first).
// HF has no score for these; ours is beam search's formula over the log_softmax of the processed
// logits (no temperature or top-k/top-p), as compute_transition_scores(normalize_logits=True).
//
// A forced prefix is stepped as CTranslate2 does: one row per sentence, each token forced, its
// log_softmax log-prob (no processors: the token is imposed, not chosen) counted in the score and
// the token in the length. HF has no equivalent (a prefix in decoder_input_ids would leave its
// log-probs out of the score and its tokens out of the length).
//
// Settled tokens: the final best hypothesis is the best finished one or a continuation of a
// running beam, so the tokens these all share can no longer change and are reported.
#include "engine/decoding/search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <omp.h>
#include <string>
#include <utility>

#include "engine/decoding/sampler.h"
#include "engine/error.h"
#include "engine/parallel.h"
#include "kernels/kernels.h"

namespace octet {

namespace {

constexpr float kExcluded = -1.0e9f;  // HF's offset for what must not be picked
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// HF's per-length divisor: a Python int ** float (double), applied to a float32 tensor as float.
float length_divisor(int32_t length, float length_penalty) {
  return static_cast<float>(std::pow(static_cast<double>(length), static_cast<double>(length_penalty)));
}

using Floats = float __attribute__((vector_size(16)));
using Ints = int32_t __attribute__((vector_size(16)));
constexpr int32_t kLanes = 4;

template <class F>
[[gnu::always_inline]] inline F load(const float* x) {
  F v;
  __builtin_memcpy(&v, x, sizeof v);
  return v;
}

inline Floats broadcast(float value) { return Floats{value, value, value, value}; }

// Logits per span of a row whose largest value row_max can record: top_candidates skips the spans
// whose largest value cannot rank (most of a row: the beams' best few are a handful of spans).
constexpr int32_t kSpan = 256;
constexpr int32_t spans_of(int32_t n) { return (n + kSpan - 1) / kSpan; }

// The largest of x[begin, end), NaN ignored, whether there was a NaN in `nan`; with a bias,
// x += bias first, in the same pass.
float range_max(float* x, const float* bias, int32_t begin, int32_t end, bool& nan) {
  Floats m0 = broadcast(kNegInf), m1 = m0;
  Ints nans{};
  int32_t i = begin;
  for (; i + 2 * kLanes <= end; i += 2 * kLanes) {
    Floats v0 = load<Floats>(x + i), v1 = load<Floats>(x + i + kLanes);
    if (bias) {
      v0 += load<Floats>(bias + i);
      v1 += load<Floats>(bias + i + kLanes);
      __builtin_memcpy(x + i, &v0, sizeof v0);
      __builtin_memcpy(x + i + kLanes, &v1, sizeof v1);
    }
    m0 = v0 > m0 ? v0 : m0;
    m1 = v1 > m1 ? v1 : m1;
    nans |= (v0 != v0) | (v1 != v1);
  }
  m0 = m1 > m0 ? m1 : m0;
  float m = kNegInf;
  bool any = false;
  for (int32_t k = 0; k < kLanes; ++k) {
    m = m0[k] > m ? m0[k] : m;
    any = any || nans[k] != 0;
  }
  for (; i < end; ++i) {
    if (bias) x[i] += bias[i];
    m = x[i] > m ? x[i] : m;
    any = any || x[i] != x[i];
  }
  nan = any;
  return m;
}

// The largest of x[0, n), NaN ignored, and of each span of kSpan in span_max (when not null);
// `nan` tells whether there was a NaN. With a bias, x += bias first, in the same pass.
float row_max(float* x, const float* bias, int32_t n, bool& nan, float* span_max = nullptr) {
  float m = kNegInf;
  nan = false;
  for (int32_t begin = 0; begin < n; begin += kSpan) {
    bool span_nan;
    const float span = range_max(x, bias, begin, std::min(n, begin + kSpan), span_nan);
    if (span_max) span_max[begin / kSpan] = span;
    m = span > m ? span : m;
    nan = nan || span_nan;
  }
  return m;
}

// A log_softmax not yet written out: the log-probs are (x - max) - log_sum, as torch computes
// them. {0, 0} leaves x as it is, bit for bit.
struct Shift {
  float max = 0;
  float log_sum = 0;
};

// The log_softmax of x, NaN turned into -inf in place; `bias`, when not null, is first added to x
// in place, and span_max gets row_max's. A row all -inf stays as it is.
Shift log_softmax_shift(float* x, int32_t n, const float* bias = nullptr, float* span_max = nullptr) {
  bool nan;
  const float max = row_max(x, bias, n, nan, span_max);
  if (nan)
    for (int32_t i = 0; i < n; ++i)
      if (std::isnan(x[i])) x[i] = kNegInf;
  if (max == kNegInf) return {};  // nothing possible: leave every token at -inf
  return {max, static_cast<float>(std::log(kernels::sum_exp(x, n, max)))};
}

void apply_shift(float* x, int32_t n, Shift shift) {
  if (shift.max == 0 && shift.log_sum == 0) return;
  const float max = shift.max, log_sum = shift.log_sum;
#pragma omp simd
  for (int32_t i = 0; i < n; ++i) x[i] = (x[i] - max) - log_sum;
}

// In place, as torch computes it: x - max - log(sum exp(x - max)). NaN counts as -inf.
void log_softmax(float* x, int32_t n, const float* bias = nullptr) { apply_shift(x, n, log_softmax_shift(x, n, bias)); }

// HF's logits processors that search supports, applied in the order generate() builds them.
// `sequence` is the decoder start token followed by the generated tokens of the row.
class LogitsProcessors {
 public:
  LogitsProcessors(const SearchOptions& options, std::span<const int32_t> eos_ids, int32_t vocab_size)
      : options_(options),
        vocab_size_(vocab_size),
        eos_ids_(eos_ids.begin(), eos_ids.end()) {
    // One "already penalized" table per OpenMP thread: rows are processed in parallel.
    if (options.repetition_penalty != 1.0f)
      seen_.assign(static_cast<size_t>(std::max(1, omp_get_max_threads())), std::vector<uint8_t>(vocab_size, 0));
    for (const auto& word : options.bad_words) {
      // Like HF, a bad word that is a lone EOS is ignored (it would forbid ending).
      if (word.size() == 1 && std::find(eos_ids.begin(), eos_ids.end(), word[0]) != eos_ids.end()) continue;
      if (word.size() == 1)
        bad_tokens_.push_back(word[0]);
      else
        bad_sequences_.push_back(word);
    }
  }

  // Whether apply() on this sequence does no more than set scores to -inf.
  bool only_forbid(std::span<const int32_t> sequence) const {
    const int32_t generated = static_cast<int32_t>(sequence.size()) - 1;
    return options_.repetition_penalty == 1.0f && !options_.renormalize_logits &&
           !(options_.forced_eos_id >= 0 && generated + 1 == options_.max_length);
  }

  // Returns the pending renormalization when `defer` is set (the scores are then left before it),
  // else {} (nothing pending).
  Shift apply(float* scores, std::span<const int32_t> sequence, bool defer = false) {
    if (options_.repetition_penalty != 1.0f) repetition_penalty(scores, sequence);
    if (options_.no_repeat_ngram_size > 0) no_repeat_ngram(scores, sequence);
    for (int32_t id : bad_tokens_) scores[id] = kNegInf;
    for (const auto& word : bad_sequences_) {
      const size_t prefix = word.size() - 1;
      if (prefix <= sequence.size() &&
          std::equal(word.begin(), word.end() - 1, sequence.end() - static_cast<ptrdiff_t>(prefix)))
        scores[word.back()] = kNegInf;
    }
    const int32_t generated = static_cast<int32_t>(sequence.size()) - 1;
    if (generated < options_.min_length)
      for (int32_t id : eos_ids_) scores[id] = kNegInf;
    if (options_.forced_eos_id >= 0 && generated + 1 == options_.max_length) {
      std::fill_n(scores, vocab_size_, kNegInf);
      scores[options_.forced_eos_id] = 0;
    }
    if (!options_.renormalize_logits) return {};
    const Shift shift = log_softmax_shift(scores, vocab_size_);
    if (defer) return shift;
    apply_shift(scores, vocab_size_, shift);
    return {};
  }

 private:
  // CTRL's penalty on every distinct token of the sequence: negative scores (all log-probs) are
  // multiplied by the penalty, positive ones divided.
  void repetition_penalty(float* scores, std::span<const int32_t> sequence) {
    const float penalty = options_.repetition_penalty;
    std::vector<uint8_t>& seen = seen_[std::min<size_t>(omp_get_thread_num(), seen_.size() - 1)];
    for (int32_t id : sequence) {
      if (seen[id]) continue;
      seen[id] = 1;
      scores[id] = scores[id] < 0 ? scores[id] * penalty : scores[id] / penalty;
    }
    for (int32_t id : sequence) seen[id] = 0;
  }

  // Bans each token that would complete an n-gram already in the sequence: a window whose first
  // n - 1 tokens equal the last n - 1 of the sequence bans its last token.
  void no_repeat_ngram(float* scores, std::span<const int32_t> sequence) {
    const size_t n = options_.no_repeat_ngram_size;
    if (sequence.size() < n) return;
    const auto suffix = sequence.last(n - 1);
    for (size_t start = 0; start + n <= sequence.size(); ++start)
      if (std::equal(suffix.begin(), suffix.end(), sequence.begin() + start))
        scores[sequence[start + n - 1]] = kNegInf;
  }

  const SearchOptions& options_;
  const int32_t vocab_size_;
  std::vector<int32_t> eos_ids_;
  std::vector<int32_t> bad_tokens_;
  std::vector<std::vector<int32_t>> bad_sequences_;
  std::vector<std::vector<uint8_t>> seen_;  // per thread, per id: already penalized for this row
};

void validate(int32_t vocab_size, int32_t batch, int32_t start_token, std::span<const int32_t> eos_ids,
              const SearchOptions& o) {
  auto invalid = [](const std::string& what) { fail(ErrorCode::InvalidArgument, "search: " + what); };
  auto in_vocab = [&](int32_t id) { return id >= 0 && id < vocab_size; };
  if (vocab_size <= 0) invalid("the model's vocabulary size must be positive");
  if (batch < 0) invalid("negative batch size");
  if (o.beam_size < 1) invalid("beam_size must be at least 1");
  if (o.n_best < 1 || o.n_best > o.beam_size) invalid("n_best must be between 1 and beam_size");
  if (o.max_length < 1) invalid("max_length must be at least 1");
  // Beam search keeps max(2, 1 + #eos) candidates per beam (HF's torch.topk would fail).
  if (o.beam_size > 1 && vocab_size < std::max<int32_t>(2, 1 + static_cast<int32_t>(eos_ids.size())))
    invalid("the vocabulary is too small for beam search with these EOS ids");
  if (o.min_length < 0 || o.no_repeat_ngram_size < 0) invalid("negative min_length or no_repeat_ngram_size");
  if (!(o.repetition_penalty > 0)) invalid("repetition_penalty must be positive");
  if (!std::isfinite(o.length_penalty)) invalid("length_penalty must be finite");
  if (std::isnan(o.temperature) || std::isnan(o.top_p)) invalid("temperature and top_p must be numbers");
  if (o.temperature > 0 && o.beam_size > 1) invalid("sampling (temperature > 0) needs beam_size 1");
  if (!in_vocab(start_token)) invalid("start token outside the vocabulary");
  if (o.forced_eos_id >= 0 && !in_vocab(o.forced_eos_id)) invalid("forced EOS id outside the vocabulary");
  for (int32_t id : eos_ids)
    if (!in_vocab(id)) invalid("EOS id outside the vocabulary");
  for (const auto& word : o.bad_words) {
    if (word.empty()) invalid("empty bad word");
    if (!std::all_of(word.begin(), word.end(), in_vocab)) invalid("bad word id outside the vocabulary");
  }
  if (o.prefix.size() >= static_cast<size_t>(o.max_length))
    invalid("the prefix must be shorter than max_length");
  for (int32_t id : o.prefix) {
    if (!in_vocab(id)) invalid("prefix id outside the vocabulary");
    if (std::find(eos_ids.begin(), eos_ids.end(), id) != eos_ids.end())
      invalid("the prefix contains an EOS id");
  }
}

class Search {
 public:
  Search(DecoderStep& model, int32_t batch, int32_t start_token, std::span<const int32_t> eos_ids,
         const SearchOptions& options, const SettledCallback& on_settled)
      : model_(model),
        options_(options),
        on_settled_(on_settled),
        vocab_(model.vocab_size()),
        logits_bias_(model.deferred_logits_bias()),
        beam_(options.beam_size),
        keep_(std::max<int32_t>(2, 1 + static_cast<int32_t>(eos_ids.size())) * options.beam_size),
        stride_(options.max_length + 1),
        is_eos_(vocab_, 0),
        processors_(options, eos_ids, vocab_),
        sentences_(batch) {
    for (int32_t id : eos_ids) is_eos_[id] = 1;
    const size_t max_rows = static_cast<size_t>(batch) * beam_;
    for (Rows* rows : {&rows_, &next_})
      *rows = {std::vector<int32_t>(max_rows), std::vector<int32_t>(max_rows), std::vector<float>(max_rows),
               std::vector<int32_t>(max_rows * stride_)};
    logits_.resize(max_rows * vocab_);
    row_candidates_.resize(max_rows * keep_);
    row_counts_.resize(max_rows);
    row_shifts_.resize(max_rows);
    span_max_.resize(max_rows * spans_of(vocab_));
    row_tokens_.resize(max_rows);
    row_logprobs_.resize(max_rows);
    virtual_candidates_.resize(keep_);
    candidates_.resize(keep_);
    order_.resize(keep_);
    for (Sentence& s : sentences_) {
      s.finished.resize(beam_);
      for (Finished& f : s.finished) f.tokens.reserve(options.max_length);
    }
    if (options.temperature > 0) {
      decoding::SamplingParams params;
      params.temperature = options.temperature;
      params.top_k = options.top_k;
      params.top_p = options.top_p;
      params.min_p = 0;
      params.repeat_penalty = 1;  // HF's penalty is among the processors
      sampler_.emplace(vocab_, params);
      // One generator per sentence, so a sentence's draws do not depend on the rest of the batch.
      for (int32_t i = 0; i < batch; ++i) rngs_.emplace_back(options.seed + static_cast<uint64_t>(i));
    }
    for (int32_t i = 0; i < batch; ++i) {
      rows_.parents[i] = i;
      rows_.tokens[i] = start_token;
      rows_.scores[i] = 0;
      rows_.history[static_cast<size_t>(i) * stride_] = start_token;
      live_.push_back(i);
    }
    next_live_.reserve(batch);
  }

  std::vector<std::vector<Hypothesis>> run() {
    const int32_t forced = static_cast<int32_t>(options_.prefix.size());
    for (generated_ = 0; !live_.empty(); ++generated_) {
      // Every live sentence has the same number of rows: one until the first free step, then beam_size.
      const int32_t width = beam_ > 1 && generated_ > forced ? beam_ : 1;
      const size_t rows = live_.size() * width;
      model_.step({rows_.parents.data(), rows}, {rows_.tokens.data(), rows}, logits_.data());
      if (generated_ >= forced) prepare(static_cast<int32_t>(rows));
      next_rows_ = 0;
      next_live_.clear();
      for (size_t j = 0; j < live_.size(); ++j) {
        const int32_t first_row = static_cast<int32_t>(j * width);
        bool done;
        if (generated_ < forced)
          done = force(live_[j], first_row);
        else if (beam_ > 1)
          done = beam_step(live_[j], first_row, width);
        else
          done = greedy_step(live_[j], first_row);
        if (!done) next_live_.push_back(live_[j]);
      }
      std::swap(rows_, next_);
      std::swap(live_, next_live_);
    }
    std::vector<std::vector<Hypothesis>> results(sentences_.size());
    for (size_t i = 0; i < sentences_.size(); ++i) {
      const Sentence& s = sentences_[i];
      for (int32_t k = 0; k < std::min(s.count, options_.n_best); ++k)
        results[i].push_back({s.finished[k].tokens, s.finished[k].score});
    }
    return results;
  }

 private:
  struct Rows {
    std::vector<int32_t> parents;
    std::vector<int32_t> tokens;
    std::vector<float> scores;      // running sums of log-probs
    std::vector<int32_t> history;   // per row, stride_ ids: start token, then generated tokens
  };
  struct Finished {
    float score = 0;
    std::vector<int32_t> tokens;  // capacity max_length, reused
  };
  struct Sentence {
    std::vector<Finished> finished;  // best first; the first `count` are valid
    int32_t count = 0;
    int32_t reported = 0;  // tokens passed to on_settled
  };
  struct Candidate {
    float score;  // running score + log-prob
    int32_t row;  // the row it continues (index into rows_)
    int32_t token;
  };

  // The start token and generated tokens of a row of this step.
  std::span<const int32_t> history(int32_t row) const {
    return {rows_.history.data() + static_cast<size_t>(row) * stride_, static_cast<size_t>(generated_) + 1};
  }
  float* logits(int32_t row) { return logits_.data() + static_cast<size_t>(row) * vocab_; }
  float* row_span_max(int32_t row) { return span_max_.data() + static_cast<size_t>(row) * spans_of(vocab_); }

  // Appends to next_ a row continuing `row` with `token`.
  void push_row(int32_t row, int32_t token, float score) {
    const int32_t r = next_rows_++;
    next_.parents[r] = row;
    next_.tokens[r] = token;
    next_.scores[r] = score;
    int32_t* dst = next_.history.data() + static_cast<size_t>(r) * stride_;
    std::copy_n(history(row).data(), generated_ + 1, dst);
    dst[generated_ + 1] = token;
  }

  // Keeps `tokens` (the parent's generated tokens plus `last`, unless EOS) if it ranks among the
  // best beam_size finished; equal scores keep the older first.
  void add_finished(Sentence& s, float score, int32_t parent, int32_t last) {
    if (s.count == beam_ && !(score > s.finished[beam_ - 1].score)) return;
    if (s.count < beam_) ++s.count;
    Finished& slot = s.finished[s.count - 1];  // the free or the evicted entry, its buffer reused
    const auto generated = history(parent).subspan(1);
    slot.tokens.assign(generated.begin(), generated.end());
    if (!is_eos_[last]) slot.tokens.push_back(last);
    slot.score = score;
    int32_t k = s.count - 1;
    for (; k > 0 && s.finished[k - 1].score < score; --k) std::swap(s.finished[k], s.finished[k - 1]);
  }

  void settle(int32_t index, std::span<const int32_t> tokens) {
    Sentence& s = sentences_[index];
    s.reported += static_cast<int32_t>(tokens.size());
    if (!tokens.empty() && on_settled_ && !on_settled_(index, tokens))
      fail(ErrorCode::Cancelled, "search: cancelled by the callback");
  }

  // Reports the rest of the best hypothesis of a done sentence (none when every continuation
  // became impossible before any finished).
  void settle_done(int32_t index) {
    const Sentence& s = sentences_[index];
    if (s.count == 0) return;
    settle(index, std::span<const int32_t>(s.finished[0].tokens).subspan(s.reported));
  }

  // Reports the tokens that every continuation the search can still return shares: the new rows
  // [first, first + width) of next_ and the best finished hypothesis. Both descend from what was
  // shared before, so the shared part only grows.
  void settle_shared(int32_t index, int32_t first, int32_t width) {
    const Sentence& s = sentences_[index];
    const int32_t* lead = next_.history.data() + static_cast<size_t>(first) * stride_ + 1;
    int32_t shared = s.reported;
    for (; shared <= generated_; ++shared) {
      bool same = true;
      for (int32_t r = first + 1; r < first + width && same; ++r)
        same = next_.history[static_cast<size_t>(r) * stride_ + 1 + shared] == lead[shared];
      if (s.count > 0)
        same = same && shared < static_cast<int32_t>(s.finished[0].tokens.size()) &&
               s.finished[0].tokens[shared] == lead[shared];
      if (!same) break;
    }
    settle(index, {lead + s.reported, static_cast<size_t>(shared - s.reported)});
  }

  // The model's deferred bias, when it has one: the row's first pass, which brings it into cache
  // for the rest.
  void add_logits_bias(float* x) const {
    if (!logits_bias_) return;
    const float* bias = logits_bias_;
#pragma omp simd
    for (int32_t i = 0; i < vocab_; ++i) x[i] += bias[i];
  }

  bool force(int32_t index, int32_t row) {
    float* x = logits(row);
    log_softmax(x, vocab_, logits_bias_);
    const int32_t token = options_.prefix[generated_];
    push_row(row, token, rows_.scores[row] + x[token]);
    settle(index, {&token, 1});
    return false;
  }

  // The work of a step on each row on its own, parallel over the rows: log-probs and processors,
  // then for beam search the row's best keep_ candidates, for greedy search the argmax and its
  // log-prob (sampling draws later, in sentence order).
  void prepare(int32_t rows) {
    const auto prepare_row = [&](int64_t row) {
      const int32_t r = static_cast<int32_t>(row);
      float* x = logits(r);
      if (beam_ > 1) {
        // The last log_softmax is not written out: top_candidates applies it. When the processors
        // only forbid tokens (-inf before the log_softmax is -inf after it), that is the model's
        // log_softmax itself, which saves a pass over the row; else the renormalization's.
        const Shift shift = log_softmax_shift(x, vocab_, logits_bias_, row_span_max(r));
        if (processors_.only_forbid(history(r))) {
          processors_.apply(x, history(r));
          row_shifts_[r] = shift;
        } else {
          apply_shift(x, vocab_, shift);
          row_shifts_[r] = processors_.apply(x, history(r), /*defer=*/true);
        }
        row_counts_[r] =
            top_candidates(r, rows_.scores[r], row_shifts_[r], row_candidates_.data() + static_cast<size_t>(r) * keep_);
        return;
      }
      add_logits_bias(x);
      processors_.apply(x, history(r));
      if (sampler_) return;
      // The first of equal maxima (std::max_element), then its log_softmax.
      bool nan;
      float* span_max = row_span_max(r);
      const float max = row_max(x, nullptr, vocab_, nan, span_max);
      if (nan) {
        const int32_t token = static_cast<int32_t>(std::max_element(x, x + vocab_) - x);
        log_softmax(x, vocab_);
        row_tokens_[r] = token;
        row_logprobs_[r] = x[token];
        return;
      }
      // The first maximum is in the first span whose maximum it is.
      int32_t span = 0;
      while (span < spans_of(vocab_) - 1 && !(span_max[span] == max)) ++span;
      int32_t token = span * kSpan;
      while (token < vocab_ - 1 && !(x[token] == max)) ++token;
      row_tokens_[r] = token;
      row_logprobs_[r] = max == kNegInf ? kNegInf
                                        : (x[token] - max) - static_cast<float>(std::log(kernels::sum_exp(x, vocab_, max)));
    };
    parallel_for(rows, true, prepare_row, Schedule::Dynamic);
  }

  bool greedy_step(int32_t index, int32_t row) {
    int32_t token;
    float logprob;
    if (sampler_) {
      float* x = logits(row);
      token = draw(sampler_->distribution({x, static_cast<size_t>(vocab_)}, {}), rngs_[index]);
      log_softmax(x, vocab_);
      logprob = x[token];
    } else {
      token = row_tokens_[row];
      logprob = row_logprobs_[row];
    }
    const float score = rows_.scores[row] + logprob;
    const int32_t length = generated_ + 1;
    if (is_eos_[token] || length >= options_.max_length) {
      add_finished(sentences_[index], score / length_divisor(length, options_.length_penalty), row, token);
      settle_done(index);
      return true;
    }
    push_row(row, token, score);
    settle(index, {&token, 1});
    return false;
  }

  // A draw from the sampler's distribution; rounding leftovers go to the last possible candidate.
  static int32_t draw(std::span<const decoding::Candidate> candidates, decoding::Rng& rng) {
    if (candidates.size() == 1) return candidates[0].id;
    const double u = rng.uniform();
    double cumulative = 0;
    int32_t last = candidates[0].id;
    for (const auto& c : candidates) {
      if (c.p <= 0) continue;
      cumulative += c.p;
      last = c.id;
      if (u < cumulative) break;
    }
    return last;
  }

  // Inserts into list[0, count) (sorted, best first), dropping the last when count is keep_;
  // called only for a candidate that ranks among the first keep_. Equal scores keep the earlier
  // (lower beam, lower id) first.
  void offer(Candidate* list, int32_t& count, const Candidate& c) const {
    int32_t k = count < keep_ ? count++ : keep_ - 1;
    for (; k > 0 && list[k - 1].score < c.score; --k) list[k] = list[k - 1];
    list[k] = c;
  }

  // The best keep_ of beam_score + log-prob over the row's tokens into `list`, best first, equal
  // scores by id; returns how many (keep_: the vocabulary is at least that large). The log-probs
  // are the row's values after `shift` (the same float operations as writing it out first).
  // A span whose recorded maximum cannot beat the current keep_-th score is skipped: the score is
  // monotone in the logit, so none of its tokens could. The maxima bound the row only when the
  // processors just forbid tokens (which lowers logits); others move them, and every span is read.
  // Blocks of tokens are first tested at once against that score.
  int32_t top_candidates(int32_t row, float beam_score, Shift shift, Candidate* list) {
    const float* x = logits(row);
    const float* span_max = processors_.only_forbid(history(row)) ? row_span_max(row) : nullptr;
    const float max = shift.max, log_sum = shift.log_sum;
    int32_t count = 0, id = 0;
    for (; id < vocab_ && count < keep_; ++id) offer(list, count, {beam_score + ((x[id] - max) - log_sum), row, id});
    constexpr int32_t kBlock = 64;
    for (int32_t span_end; id < vocab_; id = span_end) {
      span_end = std::min(vocab_, (id / kSpan + 1) * kSpan);
      if (span_max && !(beam_score + ((span_max[id / kSpan] - max) - log_sum) > list[keep_ - 1].score)) continue;
      for (int32_t block = id; block < span_end; block += kBlock) {
        const int32_t end = std::min(span_end, block + kBlock);
        const float threshold = list[keep_ - 1].score;
        int32_t above = 0;
#pragma omp simd reduction(+ : above)
        for (int32_t i = block; i < end; ++i) above += beam_score + ((x[i] - max) - log_sum) > threshold;
        if (above == 0) continue;
        for (int32_t i = block; i < end; ++i) {
          const float score = beam_score + ((x[i] - max) - log_sum);
          if (score > list[keep_ - 1].score) offer(list, count, {score, row, i});
        }
      }
    }
    return count;
  }

  bool beam_step(int32_t index, int32_t first_row, int32_t width) {
    Sentence& s = sentences_[index];
    // Top keep_ of beam score + log-prob over beam_size x vocab, merged from each row's best
    // keep_ (prepare()) in beam order. With one row (the first step), beams 1.. are HF's virtual
    // copies of it, at score -1e9.
    int32_t count = 0;
    int32_t virtual_count = 0;
    if (width == 1 && beam_ > 1)
      virtual_count = top_candidates(first_row, kExcluded, row_shifts_[first_row], virtual_candidates_.data());
    for (int32_t b = 0; b < beam_; ++b) {
      const bool is_virtual = width == 1 && b > 0;
      const int32_t row = is_virtual ? first_row : first_row + b;
      const Candidate* list =
          is_virtual ? virtual_candidates_.data() : row_candidates_.data() + static_cast<size_t>(row) * keep_;
      const int32_t n = is_virtual ? virtual_count : row_counts_[row];
      for (int32_t k = 0; k < n; ++k) {
        if (count == keep_ && !(list[k].score > candidates_[keep_ - 1].score)) break;
        offer(candidates_.data(), count, list[k]);
      }
    }
    const int32_t length = generated_ + 1;
    const bool at_max = length >= options_.max_length;

    // The next beams: the best beam_size after -1e9 on the hits (a stable selection).
    for (int32_t k = 0; k < keep_; ++k) {
      const float key = running_key(k);
      int32_t i = k;
      for (; i > 0 && running_key(order_[i - 1]) < key; --i) order_[i] = order_[i - 1];
      order_[i] = k;
    }
    // The finished list: hits among the first beam_size candidates.
    const float divisor = length_divisor(length, options_.length_penalty);
    for (int32_t k = 0; k < beam_; ++k)
      if (hits(k)) add_finished(s, candidates_[k].score / divisor, candidates_[k].row, candidates_[k].token);

    bool done = at_max;
    if (!done) {
      // HF compares with -1e9 until beam_size hypotheses are finished: that ends a sentence early
      // only when no continuation is possible any more (every running score -inf).
      const bool full = s.count == beam_;
      const float worst = full ? s.finished[beam_ - 1].score : kExcluded;
      const bool to_max = options_.early_stopping_never && options_.length_penalty > 0;
      const int32_t best_length = to_max ? options_.max_length : length;
      const float best_possible =
          running_key(order_[0]) / length_divisor(best_length, options_.length_penalty);
      done = (full && options_.early_stopping && !options_.early_stopping_never) || !(best_possible > worst);
    }
    if (done) {
      settle_done(index);
      return true;
    }
    const int32_t first = next_rows_;
    for (int32_t i = 0; i < beam_; ++i) {
      const Candidate& c = candidates_[order_[i]];
      push_row(c.row, c.token, running_key(order_[i]));
    }
    settle_shared(index, first, beam_);
    return false;
  }

  // Whether candidate k ends its hypothesis: EOS, or max_length reached.
  bool hits(int32_t k) const {
    return generated_ + 1 >= options_.max_length || is_eos_[candidates_[k].token];
  }

  // A candidate's score as a running beam: -1e9 added to the hits.
  float running_key(int32_t k) const { return candidates_[k].score + (hits(k) ? kExcluded : 0.0f); }

  DecoderStep& model_;
  const SearchOptions& options_;
  const SettledCallback& on_settled_;
  const int32_t vocab_;
  const float* const logits_bias_;  // the model's deferred bias, added to each row first; or null
  const int32_t beam_, keep_, stride_;
  std::vector<uint8_t> is_eos_;
  LogitsProcessors processors_;
  std::vector<Sentence> sentences_;
  Rows rows_, next_;           // this step's rows and the next step's, swapped after each step
  int32_t next_rows_ = 0;
  std::vector<int32_t> live_, next_live_;  // unfinished sentences, in row order
  std::vector<float> logits_;
  std::vector<Candidate> row_candidates_;      // keep_ per row of the step: its best
  std::vector<int32_t> row_counts_;            // how many of them
  std::vector<Shift> row_shifts_;              // the log_softmax each row's logits still need
  std::vector<float> span_max_;                // per row, spans_of(vocab_): each span's largest logit
  std::vector<int32_t> row_tokens_;            // greedy: each row's argmax
  std::vector<float> row_logprobs_;            // and its log-prob
  std::vector<Candidate> virtual_candidates_;  // the first step's virtual beams
  std::vector<Candidate> candidates_;  // keep_ per sentence step
  std::vector<int32_t> order_;         // candidates_ indices by running key
  int32_t generated_ = 0;
  std::optional<decoding::Sampler> sampler_;
  std::vector<decoding::Rng> rngs_;
};

}  // namespace

std::vector<std::vector<Hypothesis>> search(DecoderStep& model, int32_t batch, int32_t start_token,
                                            std::span<const int32_t> eos_ids, const SearchOptions& options,
                                            const SettledCallback& on_settled) {
  validate(model.vocab_size(), batch, start_token, eos_ids, options);
  if (batch == 0) return {};
  return Search(model, batch, start_token, eos_ids, options, on_settled).run();
}

}  // namespace octet
