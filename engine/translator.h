// Translation of lists of sentences: tokenize with the source tokenizer, sort by length, batch,
// encode, search (engine/decoding/search.h) with every beam of every sentence of a batch stepped
// together, detokenize, and return in input order. The model is seen as an EncDecModel and its
// state as the DecoderStep the search drives; decoding never sees the network's insides.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/encdec.h"

namespace octet {

struct TranslationOptions {
  int32_t beam_size = 4;         // 1: greedy
  int32_t n_best = 1;            // hypotheses returned per sentence, <= beam_size
  float length_penalty = 1.0f;   // score = sum of log-probs / length^length_penalty
  int32_t max_length = 256;      // generated tokens (EOS included), capped at the model's positions
  float max_length_ratio = 0.0f;  // > 0: also at most ceil(ratio x source tokens) generated tokens
  int32_t batch_size = 32;       // sentences per batch
  int32_t max_batch_tokens = 16384;  // source tokens per batch (a longer sentence goes alone); 0: no limit
  int32_t no_repeat_ngram_size = 0;
  float repetition_penalty = 1.0f;
  std::string prefix;            // target text every translation starts with (kept in the output)
};

struct TranslationHypothesis {
  std::string text;
  float score = 0.0f;            // length-normalised log probability; 0 for a source without ids
  std::vector<int32_t> tokens;   // target ids, the prefix included, EOS excluded
};
using Translation = std::vector<TranslationHypothesis>;  // n_best hypotheses, best first

// Receives the newly settled text of sentence `sentence` (an index into the input), never
// splitting a UTF-8 character; returns false to cancel (translate then throws Cancelled).
using TranslationStream = std::function<bool(size_t sentence, std::string_view text)>;

class Translator {
 public:
  // kv_type: the decoder caches', F32 or F16 (EncDecState).
  Translator(std::shared_ptr<const EncDecModel> model, DType kv_type);

  // The model's own defaults (its generation.* keys), for options the caller leaves alone.
  TranslationOptions default_options() const;

  // One Translation per input sentence, in input order. An empty input is translated from the ids
  // the tokenizer gives it (Marian: EOS alone, as transformers does); one with no ids at all gives
  // empty translations. A sentence longer than the model's positions is split at sentence ends
  // (. ! ? 。！？), its parts translated and joined with the spacing of the source; one that cannot
  // be split short enough is an error (InvalidArgument, naming it), never silently truncated.
  // Invalid UTF-8 is an error naming the sentence. With `stream`, sentences are translated one at
  // a time in input order and their text is handed over as it settles.
  std::vector<Translation> translate(std::span<const std::string> sentences, const TranslationOptions& options,
                                     const TranslationStream& stream = {});

  const EncDecModel& model() const { return *model_; }

 private:
  struct Segment;
  std::vector<Segment> segment(std::span<const std::string> sentences) const;
  std::vector<int32_t> source_ids(std::string_view text) const;
  void translate_batch(EncDecState& state, std::span<Segment*> batch, const TranslationOptions& options,
                       std::span<const int32_t> prefix, const TranslationStream& stream);

  std::shared_ptr<const EncDecModel> model_;
  DType kv_type_;
  // One per batch in flight: [0] always, more made when batches run side by side.
  std::vector<std::unique_ptr<EncDecState>> states_;
};

}  // namespace octet
