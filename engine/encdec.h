// The encoder-decoder Transformer of translation models (MarianMT, CTranslate2 Transformers):
// general.architecture "encdec", keys "encdec.*" (docs/qbin.md). One configurable network; the
// families differ in data (pre/post-norm, activation, embedding scale, position tables, shared
// embeddings, final norms, output bias), not in code paths.
//
// EncDecModel is read-only after loading and may be shared by threads. EncDecState holds one
// source batch at a time: the encoder's output, every decoder layer's cross-attention keys and
// values, the self-attention caches, and the scratch of a step; it is the DecoderStep that
// search() drives. One thread at a time.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engine/decoding/search.h"
#include "engine/ops.h"
#include "engine/qbin.h"
#include "tokenizer/tokenizer.h"

namespace octet {

struct EncDecConfig {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t head_dim = 0;  // d_model / n_heads
  int64_t ffn_dim = 0;
  int64_t encoder_layers = 0;
  int64_t decoder_layers = 0;
  int64_t source_vocab_size = 0;
  int64_t target_vocab_size = 0;
  int64_t max_positions = 0;  // rows of each position table
  bool pre_norm = false;      // true: x + f(norm(x)); false (Marian): norm(x + f(x))
  ops::Activation activation = ops::Activation::Relu;
  float embedding_scale = 1.0f;
  float norm_eps = 1e-5f;
  int32_t decoder_start_id = 0;
  int32_t eos_id = 0;
  int32_t pad_id = 0;
  int32_t unk_id = 0;
};

// Defaults from the model's generation.* keys (generation_config.json); absent keys keep these.
struct GenerationDefaults {
  int32_t num_beams = 4;
  int32_t max_length = 256;  // generated tokens, the decoder start token not counted
  float length_penalty = 1.0f;
  int32_t no_repeat_ngram_size = 0;
  std::vector<std::vector<int32_t>> bad_words;  // always includes {pad}: the pad token is never generated
  int32_t forced_eos_id = -1;  // >= 0: the last token allowed is this one (HF forced_eos_token_id, Marian)
  bool renormalize_logits = false;  // log-softmax again after the processors (HF, set by opus-mt)
};

class EncDecModel {
 public:
  // Opens a .qbin of architecture "encdec" and validates its metadata and every tensor; throws
  // octet::Error (Format for a broken file, Unsupported for another architecture).
  static std::shared_ptr<const EncDecModel> load(const std::string& path, bool verify_checksums = true);
  explicit EncDecModel(std::shared_ptr<const qbin::File> file);

  const EncDecConfig& config() const { return config_; }
  const GenerationDefaults& generation_defaults() const { return generation_; }
  const Tokenizer& source_tokenizer() const { return *source_tokenizer_; }
  const Tokenizer& target_tokenizer() const { return *target_tokenizer_; }
  const qbin::File& file() const { return *file_; }

  struct Attention {
    ops::Matrix q, k, v, out;
    const float *q_bias, *k_bias, *v_bias, *out_bias;  // null when the model has none
    const float *norm_weight, *norm_bias;
  };
  struct FeedForward {
    ops::Matrix up, down;
    const float *up_bias, *down_bias;
    const float *norm_weight, *norm_bias;
  };
  struct EncoderLayer {
    Attention self_attention;
    FeedForward ffn;
  };
  struct DecoderLayer {
    Attention self_attention, cross_attention;
    FeedForward ffn;
  };
  struct Norm {  // an optional LayerNorm: weight null when absent
    const float* weight = nullptr;
    const float* bias = nullptr;
  };
  // Weights: views into the mapped file.
  ops::Matrix encoder_embedding, decoder_embedding;  // the same matrix when shared
  ops::Matrix encoder_positions, decoder_positions;  // [max_positions][d_model]
  Norm encoder_embedding_norm, decoder_embedding_norm, encoder_norm, decoder_norm;
  std::vector<EncoderLayer> encoder_layers;
  std::vector<DecoderLayer> decoder_layers;
  ops::Matrix output;                 // [target_vocab][d_model]; the decoder embedding when tied
  const float* output_bias = nullptr;  // Marian's final_logits_bias

 private:
  std::shared_ptr<const qbin::File> file_;
  EncDecConfig config_;
  GenerationDefaults generation_;
  std::unique_ptr<Tokenizer> source_tokenizer_, target_tokenizer_;
};

class EncDecState final : public DecoderStep {
 public:
  // kv_type: the decoder's caches (self- and cross-attention keys and values), F32, F16 or Q8_0.
  // F16 halves what each step reads from memory; F32 keeps an f32 model's logits to float
  // rounding; Q8_0 (head_dim a multiple of 32) takes 53% of F16's memory, at 8 bits per value.
  EncDecState(std::shared_ptr<const EncDecModel> model, DType kv_type);

  // Encodes a batch of sources given as their token ids one after another (`lengths[s]` ids for
  // sentence s, each at least 1 and at most max_positions), computes every decoder layer's
  // cross-attention keys and values, and readies the decoder for a new search: its first step's
  // parents index these sentences. `max_rows` bounds the rows of any step (sentences x beams).
  // Throws (InvalidArgument) for an id outside the source vocabulary or a bad length.
  void encode(std::span<const int32_t> tokens, std::span<const int32_t> lengths, int32_t max_rows);
  // The last encode's output (after the encoder's final norm, if any), [sum of lengths][d_model].
  const float* encoder_output() const { return encoder_out_.data(); }

  int32_t vocab_size() const override { return static_cast<int32_t>(model_->config().target_vocab_size); }
  // Runs one decoder position for every row. Throws (InvalidArgument) past max_positions, for
  // more rows than encode's max_rows, or for a parent or token out of range.
  void step(std::span<const int32_t> parents, std::span<const int32_t> tokens, float* logits) override;
  // With true, step() leaves the output bias (Marian's final_logits_bias) out of the logits and
  // deferred_logits_bias() names it, for search() to add (the Translator does this).
  void defer_logits_bias(bool defer) { defer_logits_bias_ = defer; }
  const float* deferred_logits_bias() const override { return defer_logits_bias_ ? model_->output_bias : nullptr; }

 private:
  void embed(const ops::Matrix& table, const ops::Matrix& positions, const EncDecModel::Norm& norm,
             const int32_t* ids, const int32_t* positions_of, int64_t n, float* x);
  void feed_forward(const EncDecModel::FeedForward& w, const float* in, int64_t n, float* out);
  void attend_rows(const float* q, int64_t n_q, DType type, const uint8_t* keys, const uint8_t* values, int64_t tokens,
                   int64_t first, int64_t count, float* out);
  void to_head_major(const float* rows, const float* bias, int64_t n, DType type, uint8_t* out) const;
  void attend_cache(int64_t layer, int64_t row, const float* q, float* out);
  size_t self_cache_offset(int64_t position, int64_t layer, int64_t slot) const;
  void prefetch_cache(int64_t layer, int64_t row) const;
  void prefetch_source(const uint8_t* keys, const uint8_t* values, int32_t s) const;
  void grow_self_attention_cache(int64_t positions);

  std::shared_ptr<const EncDecModel> model_;
  bool defer_logits_bias_ = false;
  DType kv_type_;
  size_t vector_bytes_;  // bytes of one cached d_model vector (whole q8_0 blocks per head)

  // The source batch.
  std::vector<int32_t> source_start_, source_length_;  // per sentence, in encoder rows
  int64_t longest_source_ = 0;
  std::vector<float> encoder_out_;                     // [source tokens][d_model]
  // Cross-attention keys and values as kv_type, [decoder layer][head][source tokens][head_dim].
  std::vector<uint8_t> cross_keys_, cross_values_;

  // The decoder. A row's self-attention keys/values of position p live in the slot (the row
  // index at step p) of the row's ancestor at that step: origin_[row][p] names it. Reordering
  // beams moves these indices, never the cached vectors.
  int32_t max_rows_ = 0;
  int64_t rows_ = 0;             // rows of the last step
  int64_t steps_ = 0;            // positions decoded so far in this batch
  int64_t cache_positions_ = 0;  // capacity of the caches, in positions
  std::vector<uint8_t> self_keys_, self_values_;  // kv_type, [position][decoder layer][max_rows][d_model]
  std::vector<int32_t> origin_, next_origin_;   // [max_rows][cache_positions]
  std::vector<int32_t> sentence_, next_sentence_;  // the sentence of each row
  std::vector<int32_t> step_positions_;            // the position of every row: the step
  std::vector<std::pair<int64_t, int64_t>> row_blocks_;  // first row, rows: one sentence's, this step

  // Activations, [rows][feature]: sized for the larger of a step's rows and the source tokens.
  // x: the residual stream; h: its normalized copy; o: a sublayer's output.
  std::vector<float> x_, h_, o_, q_, k_, v_, attended_, ffn_;
  // The encoder layer's keys and values, f32, [head][source tokens][head_dim].
  std::vector<uint8_t> head_major_keys_, head_major_values_;
};

}  // namespace octet
