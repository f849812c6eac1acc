// The encoder-decoder Transformer, top to bottom: hyper-parameters, weights (views into the
// mapped file), then the forward passes. Marian and CTranslate2 Transformers differ only in the
// data read here.
//
//   encoder (once per source batch, every token of every sentence as one GEMM batch):
//     x = embedding[source] * embedding_scale + position[0..n)  (+ embedding_norm)
//     for each layer: x = block(x, self_attention over the sentence's own tokens) ; x = block(x, ffn)
//     memory = encoder_norm(x) ; per decoder layer: K, V = memory Wk + bk, memory Wv + bv
//   decoder (one position per step for every row = sentence x beam):
//     x = embedding[token] * embedding_scale + position[step]  (+ embedding_norm)
//     for each layer: x = block(x, self_attention over the row's cache)
//                     x = block(x, cross_attention over its sentence's K, V)
//                     x = block(x, ffn)
//     logits = decoder_norm(x) Woutput + output_bias
//   block(x, f) = x + f(norm(x))  (pre-norm)  or  norm(x + f(x))  (post-norm, Marian)
//   ffn(h) = activation(h Wup + bup) Wdown + bdown
//   attention(h) = softmax(q k^T / sqrt(head_dim)) v Wout + bout, q, k, v = h Wq + bq, ...
#include "engine/encdec.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "engine/error.h"
#include "engine/loading.h"
#include "engine/parallel.h"
#include "kernels/kernels.h"

namespace octet {
namespace {

using ops::Matrix;

// Below some thousands of multiply-adds a parallel region costs more than it saves.
constexpr int64_t kParallelWork = 1 << 15;
// Elementwise work over rows (bias, activation, residual, norm) pays for a region from fewer
// elements: the other threads would otherwise wait through it.
constexpr int64_t kParallelElements = 1 << 13;
// Queries of one attention call, which share every key and value load: a sentence's tokens in
// the encoder, a sentence's beams in cross-attention.
constexpr int64_t kQueriesPerCall = 8;

// The calling thread's attention scratch for n_keys keys: scores and key/value row pointers. Its
// own whatever team it is in: a translator runs batches side by side, their ops each on one
// thread, where omp_get_thread_num numbers the outer team.
struct AttentionScratch {
  float* scores;
  const void** key_rows;
  const void** value_rows;
};
AttentionScratch attention_scratch(int64_t n_keys, int64_t head_dim) {
  thread_local std::vector<float> scores;
  thread_local std::vector<const void*> key_rows, value_rows;
  const size_t floats = kernels::attend_scratch_floats(kQueriesPerCall, n_keys, head_dim);
  if (scores.size() < floats) scores.resize(floats);
  if (key_rows.size() < static_cast<size_t>(n_keys)) key_rows.resize(n_keys), value_rows.resize(n_keys);
  return {scores.data(), key_rows.data(), value_rows.data()};
}

[[noreturn]] void bad_file(const std::string& message) { fail(ErrorCode::Format, "encdec: " + message); }

int64_t dimension(const qbin::Metadata& metadata, const std::string& key, int64_t max) {
  return metadata_dimension(metadata, key, max, "encdec");
}

int32_t token_id(const qbin::Metadata& metadata, const std::string& key, int64_t vocab_size) {
  const int32_t id = metadata.i32(key);
  if (id < 0 || id >= vocab_size) bad_file(key + " = " + std::to_string(id) + " is outside the target vocabulary");
  return id;
}

ops::Activation activation_named(const std::string& name) {
  if (name == "relu") return ops::Activation::Relu;
  if (name == "gelu") return ops::Activation::Gelu;
  if (name == "gelu_tanh") return ops::Activation::GeluTanh;
  if (name == "swish" || name == "silu") return ops::Activation::Swish;
  fail(ErrorCode::Unsupported, "encdec: unsupported activation '" + name + "' (relu, gelu, gelu_tanh, swish)");
}

EncDecConfig read_config(const qbin::Metadata& metadata) {
  EncDecConfig c;
  // Bounds far above any real model, low enough that every size product fits in 64 bits.
  c.d_model = dimension(metadata, "encdec.d_model", 1 << 16);
  c.n_heads = dimension(metadata, "encdec.n_heads", 1024);
  c.ffn_dim = dimension(metadata, "encdec.ffn_dim", 1 << 20);
  c.encoder_layers = dimension(metadata, "encdec.encoder_layers", 1024);
  c.decoder_layers = dimension(metadata, "encdec.decoder_layers", 1024);
  c.source_vocab_size = dimension(metadata, "encdec.source_vocab_size", 1 << 24);
  c.target_vocab_size = dimension(metadata, "encdec.target_vocab_size", 1 << 24);
  c.max_positions = dimension(metadata, "encdec.max_positions", 1 << 20);
  if (c.d_model % c.n_heads != 0) {
    bad_file("d_model " + std::to_string(c.d_model) + " is not a multiple of n_heads " + std::to_string(c.n_heads));
  }
  c.head_dim = c.d_model / c.n_heads;
  c.pre_norm = metadata.boolean("encdec.pre_norm");
  c.activation = activation_named(metadata.str("encdec.activation"));
  c.embedding_scale = metadata.f32("encdec.embedding_scale");
  c.norm_eps = metadata.f32("encdec.norm_eps");
  if (!std::isfinite(c.embedding_scale)) bad_file("encdec.embedding_scale is not finite");
  if (!std::isfinite(c.norm_eps) || c.norm_eps < 0) bad_file("encdec.norm_eps must be >= 0");
  c.decoder_start_id = token_id(metadata, "encdec.decoder_start_id", c.target_vocab_size);
  c.eos_id = token_id(metadata, "encdec.eos_id", c.target_vocab_size);
  c.pad_id = token_id(metadata, "encdec.pad_id", c.target_vocab_size);
  c.unk_id = token_id(metadata, "encdec.unk_id", c.target_vocab_size);
  return c;
}

GenerationDefaults read_generation_defaults(const qbin::Metadata& metadata, const EncDecConfig& c) {
  GenerationDefaults g;
  g.num_beams = static_cast<int32_t>(std::clamp<uint32_t>(metadata.u32_or("generation.num_beams", g.num_beams), 1, 1024));
  // generation_config's max_length counts the decoder start token; ours does not.
  const uint32_t max_length = metadata.u32_or("generation.max_length", g.max_length + 1);
  g.max_length = static_cast<int32_t>(std::clamp<int64_t>(int64_t{max_length} - 1, 1, c.max_positions));
  g.length_penalty = metadata.f32_or("generation.length_penalty", g.length_penalty);
  if (!std::isfinite(g.length_penalty)) bad_file("generation.length_penalty is not finite");
  g.no_repeat_ngram_size = static_cast<int32_t>(metadata.u32_or("generation.no_repeat_ngram_size", 0));
  if (metadata.has("generation.bad_words_ids")) {
    std::vector<int32_t> sequence;
    for (int32_t id : metadata.i32_array("generation.bad_words_ids")) {
      if (id == -1) {
        if (!sequence.empty()) g.bad_words.push_back(std::move(sequence));
        sequence.clear();
      } else if (id < 0 || id >= c.target_vocab_size) {
        bad_file("generation.bad_words_ids holds " + std::to_string(id) + ", outside the target vocabulary");
      } else {
        sequence.push_back(id);
      }
    }
    if (!sequence.empty()) g.bad_words.push_back(std::move(sequence));
  }
  g.forced_eos_id = metadata.i32_or("generation.forced_eos_token_id", -1);
  g.renormalize_logits = metadata.boolean_or("generation.renormalize_logits", false);
  if (g.forced_eos_id < -1 || g.forced_eos_id >= c.target_vocab_size) {
    bad_file("generation.forced_eos_token_id " + std::to_string(g.forced_eos_id) + " is outside the target vocabulary");
  }
  // Never generate padding: Marian's generation_config says so with bad_words_ids [[pad]];
  // CTranslate2 models carry no such key but never want it either.
  const std::vector<int32_t> pad{c.pad_id};
  if (std::find(g.bad_words.begin(), g.bad_words.end(), pad) == g.bad_words.end()) g.bad_words.push_back(pad);
  return g;
}

// ---- Weights: views into the mapped file, each checked for its exact shape and type ----------

Matrix matrix(const qbin::File& file, const std::string& name, int64_t rows, int64_t cols) {
  return weight_matrix(file, name, rows, cols, "encdec");
}

const float* optional_f32_vector(const qbin::File& file, const std::string& name, int64_t n) {
  return file.find(name) ? weight_f32_vector(file, name, n, "encdec") : nullptr;
}

const float* f32_vector(const qbin::File& file, const std::string& name, int64_t n) {
  const float* v = optional_f32_vector(file, name, n);
  if (!v) bad_file("missing tensor " + name);
  return v;
}

EncDecModel::Norm optional_norm(const qbin::File& file, const std::string& name, int64_t d) {
  if (!file.find(name + ".weight")) return {};
  return {f32_vector(file, name + ".weight", d), f32_vector(file, name + ".bias", d)};
}

// A linear layer's weight, and its bias when the file has one.
Matrix linear(const qbin::File& file, const std::string& name, int64_t out, int64_t in, const float** bias) {
  *bias = optional_f32_vector(file, name + ".bias", out);
  return matrix(file, name + ".weight", out, in);
}

EncDecModel::Attention attention_weights(const qbin::File& f, const std::string& p, int64_t d) {
  EncDecModel::Attention a;
  a.q = linear(f, p + "_q", d, d, &a.q_bias);
  a.k = linear(f, p + "_k", d, d, &a.k_bias);
  a.v = linear(f, p + "_v", d, d, &a.v_bias);
  a.out = linear(f, p + "_out", d, d, &a.out_bias);
  a.norm_weight = f32_vector(f, p + "_norm.weight", d);
  a.norm_bias = f32_vector(f, p + "_norm.bias", d);
  return a;
}

EncDecModel::FeedForward ffn_weights(const qbin::File& f, const std::string& p, int64_t d, int64_t ffn_dim) {
  EncDecModel::FeedForward w;
  w.up = linear(f, p + "ffn_up", ffn_dim, d, &w.up_bias);
  w.down = linear(f, p + "ffn_down", d, ffn_dim, &w.down_bias);
  w.norm_weight = f32_vector(f, p + "ffn_norm.weight", d);
  w.norm_bias = f32_vector(f, p + "ffn_norm.bias", d);
  return w;
}

}  // namespace

std::shared_ptr<const EncDecModel> EncDecModel::load(const std::string& path, bool verify_checksums) {
  std::shared_ptr<const qbin::File> file = qbin::File::open(path, verify_checksums);
  const std::string& architecture = file->metadata().str("general.architecture");
  if (architecture != "encdec") {
    fail(ErrorCode::Unsupported, path + ": architecture '" + architecture +
                                     "' is not a translation model (Octet translates with: encdec)");
  }
  return std::make_shared<EncDecModel>(std::move(file));
}

EncDecModel::EncDecModel(std::shared_ptr<const qbin::File> file)
    : file_(std::move(file)), config_(read_config(file_->metadata())),
      generation_(read_generation_defaults(file_->metadata(), config_)) {
  const EncDecConfig& c = config_;
  const qbin::File& f = *file_;
  const int64_t d = c.d_model;
  const bool shared_tables = !f.find("decoder.embedding.weight");
  encoder_embedding = matrix(f, "encoder.embedding.weight", c.source_vocab_size, d);
  if (!shared_tables) {
    decoder_embedding = matrix(f, "decoder.embedding.weight", c.target_vocab_size, d);
  } else if (c.source_vocab_size == c.target_vocab_size) {
    decoder_embedding = encoder_embedding;
  } else {
    bad_file("decoder.embedding.weight is missing and the vocabularies differ, so it cannot be the encoder's");
  }
  encoder_positions = matrix(f, "encoder.position.weight", c.max_positions, d);
  decoder_positions = matrix(f, "decoder.position.weight", c.max_positions, d);
  encoder_embedding_norm = optional_norm(f, "encoder.embedding_norm", d);
  decoder_embedding_norm = optional_norm(f, "decoder.embedding_norm", d);
  encoder_norm = optional_norm(f, "encoder.norm", d);
  decoder_norm = optional_norm(f, "decoder.norm", d);
  for (int64_t l = 0; l < c.encoder_layers; ++l) {
    const std::string p = "encoder.layers." + std::to_string(l) + ".";
    encoder_layers.push_back({attention_weights(f, p + "attn", d), ffn_weights(f, p, d, c.ffn_dim)});
  }
  for (int64_t l = 0; l < c.decoder_layers; ++l) {
    const std::string p = "decoder.layers." + std::to_string(l) + ".";
    decoder_layers.push_back({attention_weights(f, p + "self_attn", d), attention_weights(f, p + "cross_attn", d),
                              ffn_weights(f, p, d, c.ffn_dim)});
  }
  output = f.find("output.weight") ? matrix(f, "output.weight", c.target_vocab_size, d) : decoder_embedding;
  output_bias = optional_f32_vector(f, "output.bias", c.target_vocab_size);

  source_tokenizer_ = Tokenizer::from_metadata(f.metadata(), "source_tokenizer");
  target_tokenizer_ = Tokenizer::from_metadata(f.metadata(), "target_tokenizer");
}

// ---- The forward passes ----------------------------------------------------------------------

namespace {

// x = x + f(norm(x)) (pre-norm) or x = norm(x + f(x)) (post-norm) for n rows of d; f(in, out)
// reads n rows of `in` and writes n rows of `out` without its last projection's bias, which is
// added here (out_bias, null for none) with the residual and the norm in one pass over each row.
// h, out: scratch of n x d.
template <class Sublayer>
void residual_block(bool pre_norm, const float* norm_weight, const float* norm_bias, float eps, const float* out_bias,
                    float* x, float* h, float* out, int64_t n, int64_t d, Sublayer&& sublayer) {
  if (pre_norm) ops::layernorm(x, norm_weight, norm_bias, h, n, d, eps);
  sublayer(pre_norm ? h : x, out);
  parallel_for(n, n * d >= kParallelElements, [&](int64_t r) {
    float* row = x + r * d;
    const float* o = out + r * d;
    // x + (f + bias), the bias added first as a biased projection would have.
    if (out_bias) {
      for (int64_t j = 0; j < d; ++j) row[j] += o[j] + out_bias[j];
    } else {
      for (int64_t j = 0; j < d; ++j) row[j] += o[j];
    }
    if (!pre_norm) ops::layernorm_row(row, norm_weight, norm_bias, row, d, eps);
  });
}

// x = activation(x + bias) for n rows of f, in one parallel region.
void bias_activate(ops::Activation activation, const float* bias, float* x, int64_t n, int64_t f) {
  parallel_for(n, n * f >= kParallelElements, [&](int64_t r) {
    float* row = x + r * f;
    if (activation == ops::Activation::Swish) {
      kernels::silu(row, bias, f);
      return;
    }
    if (activation == ops::Activation::Relu) {
      // As ops::activate: std::max(v, 0).
      if (bias) {
        for (int64_t j = 0; j < f; ++j) {
          const float v = row[j] + bias[j];
          row[j] = v < 0.0f ? 0.0f : v;
        }
      } else {
        for (int64_t j = 0; j < f; ++j) row[j] = row[j] < 0.0f ? 0.0f : row[j];
      }
      return;
    }
    if (bias)
      for (int64_t j = 0; j < f; ++j) row[j] += bias[j];
    ops::activate(activation, row, f);
  });
}

// row += bias (d floats), when there is a bias.
inline void add_bias_row(float* row, const float* bias, int64_t d) {
  if (bias)
    for (int64_t j = 0; j < d; ++j) row[j] += bias[j];
}

// Asks for `bytes` at p to be on their way into L2. A decoder step reads every sentence's cached
// keys and values once, after the output projection's weights (larger than L3) have passed
// through: they come from memory, too slowly for a head's worth of lookahead to hide.
inline void prefetch_to_l2(const uint8_t* p, size_t bytes) {
  for (size_t line = 0; line < bytes; line += 64) __builtin_prefetch(p + line, 0, 2);
}

}  // namespace

EncDecState::EncDecState(std::shared_ptr<const EncDecModel> model, DType kv_type)
    : model_(std::move(model)), kv_type_(kv_type) {
  const EncDecConfig& c = model_->config();
  ops::check_kv_type(kv_type, c.head_dim, "translation caches");
  vector_bytes_ = kernels::row_bytes(kv_type, c.d_model);
}

// x[i] = table[ids[i]] * embedding_scale + positions[positions_of[i]], then the embedding norm.
void EncDecState::embed(const Matrix& table, const Matrix& positions, const EncDecModel::Norm& norm,
                        const int32_t* ids, const int32_t* positions_of, int64_t n, float* x) {
  const EncDecConfig& c = model_->config();
  const int64_t d = c.d_model;
  float* position_row = h_.data();  // free scratch while embedding
  parallel_for(n, n * d > kParallelWork, [&](int64_t i) {
    float* row = x + i * d;
    float* position = position_row + i * d;
    ops::embedding(table, ids[i], row);
    ops::embedding(positions, positions_of[i], position);
    for (int64_t j = 0; j < d; ++j) row[j] = row[j] * c.embedding_scale + position[j];
  });
  if (norm.weight) ops::layernorm(x, norm.weight, norm.bias, x, n, d, c.norm_eps);
}

// The feed-forward sublayer without the down projection's bias (residual_block adds it).
void EncDecState::feed_forward(const EncDecModel::FeedForward& w, const float* in, int64_t n, float* out) {
  ops::matmul(w.up, in, n, ffn_.data(), w.up.rows);
  bias_activate(model_->config().activation, w.up_bias, ffn_.data(), n, w.up.rows);
  ops::matmul(w.down, ffn_.data(), n, out, w.down.rows);
}

void EncDecState::encode(std::span<const int32_t> tokens, std::span<const int32_t> lengths, int32_t max_rows) {
  const EncDecModel& m = *model_;
  const EncDecConfig& c = m.config();
  const int64_t d = c.d_model, n = static_cast<int64_t>(tokens.size());
  if (lengths.empty() || max_rows < static_cast<int64_t>(lengths.size())) {
    fail(ErrorCode::InvalidArgument, "encode: needs at least one sentence and max_rows >= sentences");
  }
  max_rows_ = 0;  // no decoding until this batch is fully encoded
  source_start_.clear();
  source_length_.clear();
  std::vector<int32_t> positions;  // each token's position in its sentence
  std::vector<int32_t> sentence_of_token;
  std::vector<std::pair<int64_t, int64_t>> query_blocks;  // first token, tokens: one sentence's
  positions.reserve(n);
  sentence_of_token.reserve(n);
  int64_t total = 0, longest = 0;
  for (int32_t length : lengths) {
    if (length < 1 || length > c.max_positions) {
      fail(ErrorCode::InvalidArgument, "encode: a source of " + std::to_string(length) +
                                           " tokens is outside [1, " + std::to_string(c.max_positions) + "]");
    }
    for (int32_t p = 0; p < length; ++p) {
      positions.push_back(p);
      sentence_of_token.push_back(static_cast<int32_t>(source_start_.size()));
    }
    for (int64_t first = 0; first < length; first += kQueriesPerCall)
      query_blocks.emplace_back(total + first, std::min(kQueriesPerCall, length - first));
    source_start_.push_back(static_cast<int32_t>(total));
    source_length_.push_back(length);
    total += length;
    longest = std::max<int64_t>(longest, length);
  }
  if (total != n) fail(ErrorCode::InvalidArgument, "encode: the lengths do not add up to the tokens given");
  for (int32_t id : tokens) {
    if (id < 0 || id >= c.source_vocab_size) {
      fail(ErrorCode::InvalidArgument, "encode: token id " + std::to_string(id) + " is outside the source vocabulary");
    }
  }

  // Activations for the larger of the source tokens and a step's rows.
  const int64_t rows = std::max<int64_t>(n, max_rows);
  for (auto* buffer : {&x_, &h_, &o_, &q_, &k_, &v_, &attended_}) buffer->resize(rows * d);
  head_major_keys_.resize(n * d * sizeof(float));
  head_major_values_.resize(n * d * sizeof(float));
  ffn_.resize(rows * c.ffn_dim);

  float* x = x_.data();
  embed(m.encoder_embedding, m.encoder_positions, m.encoder_embedding_norm, tokens.data(), positions.data(), n, x);
  for (const auto& layer : m.encoder_layers) {
    const auto& a = layer.self_attention;
    residual_block(c.pre_norm, a.norm_weight, a.norm_bias, c.norm_eps, a.out_bias, x, h_.data(), o_.data(), n, d,
                   [&](const float* in, float* out) {
                     ops::matmul({{a.q, q_.data(), d}, {a.k, k_.data(), d}, {a.v, v_.data(), d}}, in, n);
                     if (a.q_bias) ops::add_bias(q_.data(), a.q_bias, n, d);
                     to_head_major(k_.data(), a.k_bias, n, DType::F32, head_major_keys_.data());
                     to_head_major(v_.data(), a.v_bias, n, DType::F32, head_major_values_.data());
                     // Each token sees its own sentence's tokens only: the key padding mask. A
                     // work item is up to kQueriesPerCall tokens of one sentence, which share
                     // each key and value load.
                     parallel_for(
                         static_cast<int64_t>(query_blocks.size()), n * longest * d > kParallelWork,
                         [&](int64_t item) {
                           const auto [first, count] = query_blocks[item];
                           const int64_t s = sentence_of_token[first];
                           attend_rows(q_.data() + first * d, count, DType::F32, head_major_keys_.data(),
                                       head_major_values_.data(), n, source_start_[s], source_length_[s],
                                       attended_.data() + first * d);
                         },
                         Schedule::Dynamic);
                     ops::matmul(a.out, attended_.data(), n, out, a.out.rows);
                   });
    const auto& w = layer.ffn;
    residual_block(c.pre_norm, w.norm_weight, w.norm_bias, c.norm_eps, w.down_bias, x, h_.data(), o_.data(), n, d,
                   [&](const float* in, float* out) { feed_forward(w, in, n, out); });
  }
  if (m.encoder_norm.weight) ops::layernorm(x, m.encoder_norm.weight, m.encoder_norm.bias, x, n, d, c.norm_eps);
  encoder_out_.assign(x, x + n * d);

  // Cross-attention keys and values: once per source batch, shared by every beam of a sentence.
  cross_keys_.resize(c.decoder_layers * n * vector_bytes_);
  cross_values_.resize(c.decoder_layers * n * vector_bytes_);
  for (int64_t l = 0; l < c.decoder_layers; ++l) {
    const auto& a = m.decoder_layers[l].cross_attention;
    ops::matmul({{a.k, k_.data(), d}, {a.v, v_.data(), d}}, encoder_out_.data(), n);
    to_head_major(k_.data(), a.k_bias, n, kv_type_, cross_keys_.data() + l * n * vector_bytes_);
    to_head_major(v_.data(), a.v_bias, n, kv_type_, cross_values_.data() + l * n * vector_bytes_);
  }

  // A fresh decoder: no positions, caches emptied (their memory kept for the next batch).
  max_rows_ = max_rows;
  longest_source_ = longest;
  rows_ = 0;
  steps_ = 0;
  cache_positions_ = 0;
  self_keys_.clear();
  self_values_.clear();
  origin_.resize(static_cast<size_t>(max_rows) * c.max_positions);
  next_origin_.resize(origin_.size());
  sentence_.resize(max_rows);
  next_sentence_.resize(max_rows);
  step_positions_.resize(max_rows);
}

// Attention of n_q (at most kQueriesPerCall) consecutive query rows over `count` consecutive
// tokens from token `first` of head-major keys/values of `type` ([head][tokens][head_dim]), on
// this thread's scratch.
void EncDecState::attend_rows(const float* q, int64_t n_q, DType type, const uint8_t* keys, const uint8_t* values,
                              int64_t tokens, int64_t first, int64_t count, float* out) {
  const EncDecConfig& c = model_->config();
  const AttentionScratch scratch = attention_scratch(count, c.head_dim);
  const void** key_rows = scratch.key_rows;
  const void** value_rows = scratch.value_rows;
  const size_t vector_bytes = kernels::row_bytes(type, c.head_dim);
  for (int64_t j = 0; j < count; ++j) {
    key_rows[j] = keys + (first + j) * vector_bytes;
    value_rows[j] = values + (first + j) * vector_bytes;
  }
  ops::attend(q, n_q, type, key_rows, value_rows, count, c.n_heads, c.head_dim, tokens * c.head_dim,
              scratch.scores, out);
}

// rows ([n][d_model], heads side by side) plus bias (if any) into out as [head][n][head_dim] of
// `type`: each head's keys or values contiguous, which the attention of a sentence's tokens reads
// in sequence.
void EncDecState::to_head_major(const float* rows, const float* bias, int64_t n, DType type, uint8_t* out) const {
  const EncDecConfig& c = model_->config();
  const int64_t hd = c.head_dim;
  const size_t vector_bytes = kernels::row_bytes(type, hd);
  // Row by row: each source row is read once, in order.
#pragma omp parallel if (n * c.d_model > kParallelWork)
  {
    std::vector<float> row(bias ? c.d_model : 0);
#pragma omp for
    for (int64_t i = 0; i < n; ++i) {
      const float* from = rows + i * c.d_model;
      if (bias) {
        for (int64_t e = 0; e < c.d_model; ++e) row[e] = from[e] + bias[e];
        from = row.data();
      }
      for (int64_t h = 0; h < c.n_heads; ++h)
        kernels::quantize_row(type, from + h * hd, out + (h * n + i) * vector_bytes, hd);
    }
  }
}

void EncDecState::step(std::span<const int32_t> parents, std::span<const int32_t> tokens, float* logits) {
  const EncDecModel& m = *model_;
  const EncDecConfig& c = m.config();
  const int64_t d = c.d_model, n = static_cast<int64_t>(tokens.size()), t = steps_;
  if (max_rows_ == 0) fail(ErrorCode::InvalidArgument, "step: no source batch encoded");
  if (n < 1 || n > max_rows_ || parents.size() != tokens.size()) {
    fail(ErrorCode::InvalidArgument, "step: " + std::to_string(n) + " rows with " + std::to_string(parents.size()) +
                                         " parents (at most " + std::to_string(max_rows_) + " rows)");
  }
  if (t >= c.max_positions) {
    fail(ErrorCode::InvalidArgument, "step: the target is longer than the model's " +
                                         std::to_string(c.max_positions) + " positions");
  }
  // On the first step parents are sentences, then rows of the previous step.
  const int64_t parent_count = t == 0 ? static_cast<int64_t>(source_start_.size()) : rows_;
  for (int64_t r = 0; r < n; ++r) {
    if (parents[r] < 0 || parents[r] >= parent_count) {
      fail(ErrorCode::InvalidArgument, "step: parent " + std::to_string(parents[r]) + " is outside [0, " +
                                           std::to_string(parent_count) + ")");
    }
    if (tokens[r] < 0 || tokens[r] >= c.target_vocab_size) {
      fail(ErrorCode::InvalidArgument, "step: token id " + std::to_string(tokens[r]) +
                                           " is outside the target vocabulary");
    }
  }

  // Follow the beams: each row inherits its parent's sentence and cache positions, and writes
  // this position into its own slot.
  const int64_t stride = c.max_positions;
  for (int64_t r = 0; r < n; ++r) {
    const int32_t parent = parents[r];
    next_sentence_[r] = t == 0 ? parent : sentence_[parent];
    std::copy_n(origin_.data() + parent * stride, t, next_origin_.data() + r * stride);
    next_origin_[r * stride + t] = static_cast<int32_t>(r);
  }
  std::swap(sentence_, next_sentence_);
  std::swap(origin_, next_origin_);
  rows_ = n;
  if (t >= cache_positions_) grow_self_attention_cache(t + 1);

  // Cross-attention calls: runs of consecutive rows of one sentence (its beams).
  row_blocks_.clear();
  for (int64_t r = 0; r < n; ++r) {
    if (r > 0 && sentence_[r] == sentence_[r - 1] && row_blocks_.back().second < kQueriesPerCall) ++row_blocks_.back().second;
    else row_blocks_.emplace_back(r, 1);
  }

  float* x = x_.data();
  std::fill_n(step_positions_.begin(), n, static_cast<int32_t>(t));
  embed(m.decoder_embedding, m.decoder_positions, m.decoder_embedding_norm, tokens.data(), step_positions_.data(), n,
        x);
  const int64_t source_tokens = static_cast<int64_t>(encoder_out_.size()) / d;
  for (int64_t l = 0; l < c.decoder_layers; ++l) {
    const auto& layer = m.decoder_layers[l];
    const auto& self = layer.self_attention;
    // q, k, v without their biases, k and v straight into this position's cache slots; one
    // region then adds the biases and attends, row by row (a row reads only its own slot at
    // this position, so no row waits for another).
    residual_block(c.pre_norm, self.norm_weight, self.norm_bias, c.norm_eps, self.out_bias, x, h_.data(), o_.data(), n,
                   d, [&](const float* in, float* out) {
                     ops::matmul({{self.q, q_.data(), d}, {self.k, k_.data(), d}, {self.v, v_.data(), d}}, in, n);
                     parallel_for(n, n * (t + 1) * d > kParallelElements, [&](int64_t r) {
                       add_bias_row(q_.data() + r * d, self.q_bias, d);
                       add_bias_row(k_.data() + r * d, self.k_bias, d);
                       add_bias_row(v_.data() + r * d, self.v_bias, d);
                       const size_t slot = self_cache_offset(t, l, r);
                       kernels::quantize_row(kv_type_, k_.data() + r * d, self_keys_.data() + slot, d);
                       kernels::quantize_row(kv_type_, v_.data() + r * d, self_values_.data() + slot, d);
                       if (r + 1 < n) prefetch_cache(l, r + 1);
                       attend_cache(l, r, q_.data() + r * d, attended_.data() + r * d);
                     });
                     ops::matmul(self.out, attended_.data(), n, out, d);
                   });
    const auto& cross = layer.cross_attention;
    residual_block(c.pre_norm, cross.norm_weight, cross.norm_bias, c.norm_eps, cross.out_bias, x, h_.data(),
                   o_.data(), n, d, [&](const float* in, float* out) {
                     ops::matmul(cross.q, in, n, q_.data(), d);
                     const uint8_t* keys = cross_keys_.data() + l * source_tokens * vector_bytes_;
                     const uint8_t* values = cross_values_.data() + l * source_tokens * vector_bytes_;
                     parallel_for(
                         static_cast<int64_t>(row_blocks_.size()), n * longest_source_ * d > kParallelElements,
                         [&](int64_t block) {
                           const auto [first, count] = row_blocks_[block];
                           if (block + 1 < static_cast<int64_t>(row_blocks_.size()) &&
                               sentence_[row_blocks_[block + 1].first] != sentence_[first])
                             prefetch_source(keys, values, sentence_[row_blocks_[block + 1].first]);
                           for (int64_t r = first; r < first + count; ++r) add_bias_row(q_.data() + r * d, cross.q_bias, d);
                           const int32_t s = sentence_[first];
                           attend_rows(q_.data() + first * d, count, kv_type_, keys, values, source_tokens,
                                       source_start_[s], source_length_[s], attended_.data() + first * d);
                         },
                         Schedule::Dynamic);
                     ops::matmul(cross.out, attended_.data(), n, out, d);
                   });
    const auto& w = layer.ffn;
    residual_block(c.pre_norm, w.norm_weight, w.norm_bias, c.norm_eps, w.down_bias, x, h_.data(), o_.data(), n, d,
                   [&](const float* in, float* out) { feed_forward(w, in, n, out); });
  }
  if (m.decoder_norm.weight) ops::layernorm(x, m.decoder_norm.weight, m.decoder_norm.bias, x, n, d, c.norm_eps);
  ops::matmul(m.output, x, n, logits, c.target_vocab_size);
  if (m.output_bias && !defer_logits_bias_) ops::add_bias(logits, m.output_bias, n, c.target_vocab_size);
  ++steps_;
}

// Self-attention of row r's query at the current position over the positions 0..steps_ of its
// beam, each read from the slot of the ancestor that wrote it.
void EncDecState::attend_cache(int64_t layer, int64_t r, const float* q, float* out) {
  const EncDecConfig& c = model_->config();
  const int64_t n_keys = steps_ + 1;
  const AttentionScratch scratch = attention_scratch(n_keys, c.head_dim);
  const void** key_rows = scratch.key_rows;
  const void** value_rows = scratch.value_rows;
  const int32_t* origin = origin_.data() + r * c.max_positions;
  for (int64_t p = 0; p < n_keys; ++p) {
    const size_t offset = self_cache_offset(p, layer, origin[p]);
    key_rows[p] = self_keys_.data() + offset;
    value_rows[p] = self_values_.data() + offset;
  }
  ops::attend(q, 1, kv_type_, key_rows, value_rows, n_keys, c.n_heads, c.head_dim, c.head_dim,
              scratch.scores, out);
}

// Byte offset of the self-attention cache's vector for `position`, `layer` and row slot `slot`.
size_t EncDecState::self_cache_offset(int64_t position, int64_t layer, int64_t slot) const {
  const EncDecConfig& c = model_->config();
  return static_cast<size_t>((position * c.decoder_layers + layer) * max_rows_ + slot) * vector_bytes_;
}

// Row r's cached keys and values at `layer`, all positions, on their way into L2.
void EncDecState::prefetch_cache(int64_t layer, int64_t r) const {
  const EncDecConfig& c = model_->config();
  const int32_t* origin = origin_.data() + r * c.max_positions;
  for (int64_t p = 0; p <= steps_; ++p) {
    const size_t offset = self_cache_offset(p, layer, origin[p]);
    prefetch_to_l2(self_keys_.data() + offset, vector_bytes_);
    prefetch_to_l2(self_values_.data() + offset, vector_bytes_);
  }
}

// Sentence s's cross-attention keys and values of one layer (head-major `keys`, `values`), every
// head, on their way into L2.
void EncDecState::prefetch_source(const uint8_t* keys, const uint8_t* values, int32_t s) const {
  const EncDecConfig& c = model_->config();
  const int64_t source_tokens = static_cast<int64_t>(encoder_out_.size()) / c.d_model;
  const size_t head_bytes = vector_bytes_ / c.n_heads;
  for (int64_t h = 0; h < c.n_heads; ++h)
    for (const uint8_t* cache : {keys, values})
      prefetch_to_l2(cache + (h * source_tokens + source_start_[s]) * head_bytes, source_length_[s] * head_bytes);
}

// The caches are position-major, so growing keeps every cached vector where it is; they double,
// so a batch reallocates only a few times (and, their memory kept, later batches rarely).
void EncDecState::grow_self_attention_cache(int64_t positions) {
  const EncDecConfig& c = model_->config();
  cache_positions_ = std::min<int64_t>(c.max_positions, std::max<int64_t>({positions, 2 * cache_positions_, 16}));
  const size_t size = static_cast<size_t>(cache_positions_ * c.decoder_layers * max_rows_) * vector_bytes_;
  self_keys_.resize(size);
  self_values_.resize(size);
}

}  // namespace octet
