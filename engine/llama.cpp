// The LLaMA family, top to bottom: hyper-parameters, weights (views into the mapped file),
// per-conversation state, and the forward pass. One decoder covers LLaMA 1/2/3, Mistral (sliding
// window), Qwen2 (q/k/v biases), SmolLM and llama2.c checkpoints; they differ in data only.
//
//   x = embedding[tokens]
//   for each layer:
//     h = rmsnorm(x) ; q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv) ; rope(q, k) ; cache k, v
//     x += attention(q, K, V) Wo                    (the add done by the matmul)
//     h = rmsnorm(x) ; x += (silu(h Wgate) * h Wup) Wdown
//   logits = rmsnorm(x) Woutput        (Woutput = embedding when tied)
//
// A forward call runs all its tokens as one batch: every projection is one GEMM with M = tokens.
#include "engine/llama.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/loading.h"
#include "engine/parallel.h"
#include "kernels/kernels.h"

namespace octet {
namespace {

using ops::Matrix;

// Longer inputs are run in chunks of this many tokens, which bounds the activation scratch.
constexpr int64_t kMaxBatch = 512;

// ---- Hyper-parameters ("llama.*" metadata, docs/qbin.md) ----------------------------------

struct LlamaConfig {
  int64_t vocab_size = 0;
  int64_t dim = 0;  // hidden size
  int64_t n_layers = 0;
  int64_t n_heads = 0;     // query heads
  int64_t n_kv_heads = 0;  // key/value heads, each shared by n_heads / n_kv_heads query heads
  int64_t head_dim = 0;
  int64_t ffn_dim = 0;
  int64_t context_length = 0;
  float rms_eps = 0.0f;
  float rope_theta = 0.0f;
  ops::RopeScaling rope_scaling;
  int64_t sliding_window = 0;  // 0: full attention
  bool tied_output = false;

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
};

[[noreturn]] void bad_file(const std::string& message) { fail(ErrorCode::Format, "llama: " + message); }

int64_t dimension(const qbin::Metadata& metadata, const std::string& key, int64_t max) {
  return metadata_dimension(metadata, key, max, "llama");
}

float positive(const qbin::Metadata& metadata, const std::string& key) {
  const float value = metadata.f32(key);
  if (!std::isfinite(value) || value <= 0.0f) bad_file(key + " = " + std::to_string(value) + " must be positive");
  return value;
}

LlamaConfig read_config(const qbin::Metadata& metadata) {
  LlamaConfig c;
  // Bounds far above any real model, low enough that every size product fits in 64 bits.
  c.vocab_size = dimension(metadata, "llama.vocab_size", 1 << 24);
  c.dim = dimension(metadata, "llama.dim", 1 << 16);
  c.n_layers = dimension(metadata, "llama.n_layers", 1024);
  c.n_heads = dimension(metadata, "llama.n_heads", 1024);
  c.n_kv_heads = dimension(metadata, "llama.n_kv_heads", c.n_heads);
  c.head_dim = dimension(metadata, "llama.head_dim", 1024);
  c.ffn_dim = dimension(metadata, "llama.ffn_dim", 1 << 20);
  c.context_length = dimension(metadata, "llama.context_length", 1 << 24);
  if (c.n_heads % c.n_kv_heads != 0) {
    bad_file("n_heads (" + std::to_string(c.n_heads) + ") is not a multiple of n_kv_heads (" +
             std::to_string(c.n_kv_heads) + ")");
  }
  if (c.head_dim % 2 != 0) bad_file("head_dim " + std::to_string(c.head_dim) + " is odd: RoPE rotates pairs");
  c.rms_eps = positive(metadata, "llama.rms_eps");
  c.rope_theta = positive(metadata, "llama.rope_theta");
  c.sliding_window = metadata.u32_or("llama.sliding_window", 0);
  c.tied_output = metadata.boolean_or("llama.tied_output", false);

  const std::string scaling = metadata.str_or("llama.rope_scaling", "none");
  ops::RopeScaling& rope = c.rope_scaling;
  if (scaling == "none") {
    rope.kind = ops::RopeScaling::Kind::None;
  } else if (scaling == "linear") {
    rope.kind = ops::RopeScaling::Kind::Linear;
    rope.factor = positive(metadata, "llama.rope_factor");
  } else if (scaling == "llama3") {
    rope.kind = ops::RopeScaling::Kind::Llama3;
    rope.factor = positive(metadata, "llama.rope_factor");
    rope.low_freq_factor = positive(metadata, "llama.rope_low_freq_factor");
    rope.high_freq_factor = positive(metadata, "llama.rope_high_freq_factor");
    rope.original_context = dimension(metadata, "llama.rope_original_context", 1 << 24);
    if (rope.high_freq_factor <= rope.low_freq_factor) bad_file("llama3 rope: high_freq_factor <= low_freq_factor");
  } else {
    fail(ErrorCode::Unsupported, "llama: unsupported rope scaling '" + scaling + "' (none, linear, llama3)");
  }
  return c;
}

// ---- Weights: views into the mapped file, each checked for its exact shape and type ----------

Matrix matrix(const qbin::File& file, const std::string& name, int64_t rows, int64_t cols) {
  return weight_matrix(file, name, rows, cols, "llama");
}

const float* f32_vector(const qbin::File& file, const std::string& name, int64_t n) {
  return weight_f32_vector(file, name, n, "llama");
}

const float* optional_f32_vector(const qbin::File& file, const std::string& name, int64_t n) {
  return file.find(name) ? f32_vector(file, name, n) : nullptr;
}

struct LlamaLayer {
  const float* attn_norm;
  Matrix attn_q, attn_k, attn_v;
  const float* q_bias;  // the biases: Qwen2 only, null elsewhere
  const float* k_bias;
  const float* v_bias;
  Matrix attn_out;
  const float* ffn_norm;
  Matrix ffn_gate, ffn_up, ffn_down;
};

// Read-only after loading; shared by every state (each state holds a reference to it).
class LlamaModel final : public LanguageModel, public std::enable_shared_from_this<LlamaModel> {
 public:
  LlamaModel(std::shared_ptr<const qbin::File> file, std::unique_ptr<Tokenizer> tokenizer)
      : config(read_config(file->metadata())) {
    const LlamaConfig& c = config;
    const qbin::File& f = *file;
    token_embedding = matrix(f, "token_embedding.weight", c.vocab_size, c.dim);
    output = c.tied_output ? token_embedding : matrix(f, "output.weight", c.vocab_size, c.dim);
    final_norm = f32_vector(f, "norm.weight", c.dim);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      layers.push_back(LlamaLayer{
          .attn_norm = f32_vector(f, p + "attn_norm.weight", c.dim),
          .attn_q = matrix(f, p + "attn_q.weight", c.q_dim(), c.dim),
          .attn_k = matrix(f, p + "attn_k.weight", c.kv_dim(), c.dim),
          .attn_v = matrix(f, p + "attn_v.weight", c.kv_dim(), c.dim),
          .q_bias = optional_f32_vector(f, p + "attn_q.bias", c.q_dim()),
          .k_bias = optional_f32_vector(f, p + "attn_k.bias", c.kv_dim()),
          .v_bias = optional_f32_vector(f, p + "attn_v.bias", c.kv_dim()),
          .attn_out = matrix(f, p + "attn_out.weight", c.dim, c.q_dim()),
          .ffn_norm = f32_vector(f, p + "ffn_norm.weight", c.dim),
          .ffn_gate = matrix(f, p + "ffn_gate.weight", c.ffn_dim, c.dim),
          .ffn_up = matrix(f, p + "ffn_up.weight", c.ffn_dim, c.dim),
          .ffn_down = matrix(f, p + "ffn_down.weight", c.dim, c.ffn_dim),
      });
    }
    rope_inv_freq = ops::rope_inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling);
    file_ = std::move(file);
    tokenizer_ = std::move(tokenizer);
  }

  const std::string& architecture() const override { return name; }
  int32_t vocab_size() const override { return static_cast<int32_t>(config.vocab_size); }
  int32_t context_length() const override { return static_cast<int32_t>(config.context_length); }
  using LanguageModel::new_state;
  std::unique_ptr<DecoderState> new_state(int32_t context_length, DType kv_type) const override;

  const std::string name = "llama";
  const LlamaConfig config;
  Matrix token_embedding, output;
  const float* final_norm = nullptr;
  std::vector<LlamaLayer> layers;
  std::vector<float> rope_inv_freq;  // head_dim/2, scaling applied
};

// ---- Per-conversation state: KV cache and activations, allocated once ---------------------

template <typename T = float>
std::unique_ptr<T[]> allocate(int64_t n) {
  try {
    return std::make_unique_for_overwrite<T[]>(n);
  } catch (const std::bad_alloc&) {
    fail(ErrorCode::OutOfMemory, "llama: cannot allocate " + std::to_string(n * sizeof(T)) + " bytes of state");
  }
}

class LlamaState final : public DecoderState {
 public:
  LlamaState(std::shared_ptr<const LlamaModel> model, int32_t capacity, DType kv_type)
      : model_(std::move(model)),
        capacity_(capacity),
        max_batch_(std::min<int64_t>(kMaxBatch, capacity)),
        kv_type_(kv_type),
        kv_row_bytes_(kernels::row_bytes(kv_type, model_->config.head_dim)) {
    const LlamaConfig& c = model_->config;
    x_ = allocate(max_batch_ * c.dim);
    xb_ = allocate(max_batch_ * c.dim);
    q_ = allocate(max_batch_ * c.q_dim());
    k_ = allocate(max_batch_ * c.kv_dim());
    v_ = allocate(max_batch_ * c.kv_dim());
    attn_out_ = allocate(max_batch_ * c.q_dim());
    rope_ = allocate(max_batch_ * c.head_dim);
    gate_ = allocate(max_batch_ * c.ffn_dim);
    up_ = allocate(max_batch_ * c.ffn_dim);
    logits_ = allocate(c.vocab_size);
    key_cache_ = allocate<uint8_t>(c.n_layers * c.n_kv_heads * capacity_ * kv_row_bytes_);
    value_cache_ = allocate<uint8_t>(c.n_layers * c.n_kv_heads * capacity_ * kv_row_bytes_);
    key_rows_ = ops::kv_rows(kv_type, key_cache_.get(), capacity_, c.head_dim);
    value_rows_ = ops::kv_rows(kv_type, value_cache_.get(), capacity_, c.head_dim);
  }

  const float* forward(std::span<const int32_t> tokens, float* all_logits) override {
    const int64_t vocab_size = model_->config.vocab_size;
    if (tokens.empty()) fail(ErrorCode::InvalidArgument, "forward: no tokens");
    if (static_cast<int64_t>(tokens.size()) > capacity_ - used_) {
      fail(ErrorCode::InvalidArgument, "forward: " + std::to_string(tokens.size()) + " tokens do not fit (" +
                                           std::to_string(used_) + " of " + std::to_string(capacity_) + " positions used)");
    }
    for (int32_t id : tokens) {
      if (id < 0 || id >= vocab_size) {
        fail(ErrorCode::InvalidArgument, "forward: token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                             std::to_string(vocab_size) + ")");
      }
    }
    for (size_t start = 0; start < tokens.size(); start += max_batch_) {
      const int64_t n = std::min<int64_t>(max_batch_, tokens.size() - start);
      forward_batch(tokens.data() + start, n, all_logits ? all_logits + start * vocab_size : nullptr);
    }
    return logits_.get();
  }

  int32_t used() const override { return used_; }
  int32_t capacity() const override { return capacity_; }
  void reset() override { used_ = 0; }

 private:
  // Runs n <= max_batch_ tokens at positions used_ .. used_+n-1 and appends them to the cache.
  void forward_batch(const int32_t* tokens, int64_t n, float* all_logits) {
    const LlamaModel& m = *model_;
    const LlamaConfig& c = m.config;
    const int64_t dim = c.dim, q_dim = c.q_dim(), kv_dim = c.kv_dim(), head_dim = c.head_dim;
    const int64_t first_pos = used_;
    const ops::AttentionShape shape{c.n_heads, c.n_kv_heads, head_dim, c.sliding_window};
    float* x = x_.get();    // the residual stream, [n][dim]
    float* xb = xb_.get();  // its normalized copy, then each sublayer's output, [n][dim]
    float *q = q_.get(), *k = k_.get(), *v = v_.get();
    float* attn_out = attn_out_.get();
    float *gate = gate_.get(), *up = up_.get();

    float* rope = rope_.get();  // each position's rotation, [n][head_dim]
    parallel_for(n, true, [&](int64_t i) {
      ops::embedding(m.token_embedding, tokens[i], x + i * dim);
      ops::rope_rotation(first_pos + i, m.rope_inv_freq.data(), head_dim / 2, rope + i * head_dim);
    });

    for (int64_t l = 0; l < c.n_layers; ++l) {
      const LlamaLayer& layer = m.layers[l];
      // This layer's cache: [n_kv_heads][capacity][head_dim] for keys, and the same for values.
      const size_t layer_bytes = c.n_kv_heads * capacity_ * kv_row_bytes_;
      uint8_t* key_cache = key_cache_.get() + l * layer_bytes;
      uint8_t* value_cache = value_cache_.get() + l * layer_bytes;

      // Attention: project, rotate q and k to their positions, cache k and v, attend.
      ops::rmsnorm(x, layer.attn_norm, xb, n, dim, c.rms_eps);
      ops::matmul({{layer.attn_q, q, q_dim}, {layer.attn_k, k, kv_dim}, {layer.attn_v, v, kv_dim}}, xb, n);
      if (layer.q_bias) ops::add_bias(q, layer.q_bias, n, q_dim);
      if (layer.k_bias) ops::add_bias(k, layer.k_bias, n, kv_dim);
      if (layer.v_bias) ops::add_bias(v, layer.v_bias, n, kv_dim);
      parallel_for(n, true, [&](int64_t i) {
        const int64_t pos = first_pos + i;
        ops::rope(q + i * q_dim, c.n_heads, head_dim, rope + i * head_dim);
        ops::rope(k + i * kv_dim, c.n_kv_heads, head_dim, rope + i * head_dim);
        for (int64_t h = 0; h < c.n_kv_heads; ++h) {
          const int64_t from = i * kv_dim + h * head_dim, to = (h * capacity_ + pos) * kv_row_bytes_;
          kernels::quantize_row(kv_type_, k + from, key_cache + to, head_dim);
          kernels::quantize_row(kv_type_, v + from, value_cache + to, head_dim);
        }
      });
      ops::attention(q, {kv_type_, key_rows_.data(), value_rows_.data(), capacity_, l * c.n_kv_heads}, n, first_pos,
                     shape, attn_out);
      ops::matmul(layer.attn_out, attn_out, n, xb, dim, x);

      // Feed-forward (SwiGLU): down(silu(gate(h)) * up(h)).
      ops::rmsnorm(x, layer.ffn_norm, xb, n, dim, c.rms_eps);
      ops::matmul({{layer.ffn_gate, gate, c.ffn_dim}, {layer.ffn_up, up, c.ffn_dim}}, xb, n);
      ops::swiglu(gate, up, n * c.ffn_dim);
      ops::matmul(layer.ffn_down, gate, n, xb, dim, x);
    }

    // Logits: of every position when asked (one GEMM), otherwise of the last one only.
    ops::rmsnorm(x, m.final_norm, xb, n, dim, c.rms_eps);
    if (all_logits) {
      ops::matmul(m.output, xb, n, all_logits, c.vocab_size);
      std::copy_n(all_logits + (n - 1) * c.vocab_size, c.vocab_size, logits_.get());
    } else {
      ops::matmul(m.output, xb + (n - 1) * dim, 1, logits_.get(), c.vocab_size);
    }
    used_ += static_cast<int32_t>(n);
  }

  std::shared_ptr<const LlamaModel> model_;
  int32_t capacity_;
  int32_t used_ = 0;
  int64_t max_batch_;  // tokens per forward_batch
  // Activations of up to max_batch_ tokens, row-major [token][feature].
  std::unique_ptr<float[]> x_, xb_, q_, k_, v_, attn_out_, gate_, up_, rope_;
  std::unique_ptr<float[]> logits_;  // [vocab_size], of the last token
  DType kv_type_;
  size_t kv_row_bytes_;  // one head's key or value
  std::unique_ptr<uint8_t[]> key_cache_, value_cache_;  // [n_layers][n_kv_heads][capacity] rows of head_dim
  std::vector<const void*> key_rows_, value_rows_;       // their ops::kv_rows
};

std::unique_ptr<DecoderState> LlamaModel::new_state(int32_t context_length, DType kv_type) const {
  ops::check_kv_type(kv_type, config.head_dim, "new_state");
  if (context_length < 1 || context_length > config.context_length) {
    fail(ErrorCode::InvalidArgument, "new_state: context length " + std::to_string(context_length) +
                                         " is outside [1, " + std::to_string(config.context_length) + "]");
  }
  return std::make_unique<LlamaState>(shared_from_this(), context_length, kv_type);
}

}  // namespace

std::shared_ptr<const LanguageModel> load_llama(std::shared_ptr<const qbin::File> file,
                                                std::unique_ptr<Tokenizer> tokenizer) {
  return std::make_shared<LlamaModel>(std::move(file), std::move(tokenizer));
}

}  // namespace octet
