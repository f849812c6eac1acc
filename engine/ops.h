// The few operations the transformers are made of (decoder-only and encoder-decoder). Activations are rows of floats,
// row-major; weights are views into the mapped file, in their stored type. The heavy math
// (matmul, dequantization) is delegated to kernels/.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels/blocks.h"

namespace octet::ops {

// A weight matrix [rows][cols] of its stored type and layout, viewed in place: rows are output
// features, cols input features. Layout::Packed is the kernels' interleaved form
// (kernels::PackedWeights), in which the converter stores Q8_0 and Q4_0 matrices.
struct Matrix {
  DType dtype = DType::F32;
  Layout layout = Layout::Rows;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// y[i][r] = sum_c x[i][c] * w[r][c] for the m rows of x: one GEMM whatever m is. ldy is y's row
// stride in floats (>= w.rows). With a residual ([m][ldy] too), residual += y as well: a packed
// matrix's threads add their own outputs as they make them (decode: one pass fewer per sublayer).
void matmul(const Matrix& w, const float* x, int64_t m, float* y, int64_t ldy, float* residual = nullptr);
// Several matrices applied to the same m rows of x, y_j = x W_j^T (a layer's q, k and v, or its
// gate and up): one pass when they are packed alike (x quantized once, one parallel region), one
// matmul each otherwise. Every output has the bits of its own matmul either way.
struct Product {
  const Matrix& w;
  float* y;
  int64_t ldy;
};
void matmul(std::initializer_list<Product> products, const float* x, int64_t m);
// out[c] = table[id][c], dequantized.
void embedding(const Matrix& table, int32_t id, float* out);

// For each of `rows` rows of n: out = x / sqrt(mean(x^2) + eps) * weight (out may be x).
void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t n, float eps);
// gate = silu(gate) * up, elementwise: the gating half of SwiGLU.
void swiglu(float* gate, const float* up, int64_t n);
// Each of `rows` rows of n gets bias added.
void add_bias(float* x, const float* bias, int64_t rows, int64_t n);

// RoPE frequency scaling, as transformers' rope_scaling / rope_parameters.
struct RopeScaling {
  enum class Kind { None, Linear, Llama3 };
  Kind kind = Kind::None;
  float factor = 1.0f;            // linear, llama3
  float low_freq_factor = 1.0f;   // llama3
  float high_freq_factor = 4.0f;  // llama3
  int64_t original_context = 8192;  // llama3: original_max_position_embeddings
};

// head_dim/2 inverse frequencies theta^(-2i/head_dim), scaled as `scaling` says (transformers'
// _compute_default/linear/llama3_rope_parameters, in float32 like it).
std::vector<float> rope_inverse_frequencies(int64_t head_dim, float theta, const RopeScaling& scaling);
// The rotation of position pos: cos_sin[i] = cos(pos * inv_freq[i]) and cos_sin[half + i] = its
// sin, for i < half = head_dim/2. Made once per position, it serves every layer and head (the
// trigonometry cost more than the rotations themselves: 3 us of a 90 us SmolLM2 layer).
void rope_rotation(int64_t pos, const float* inv_freq, int64_t half, float* cos_sin);
// Rotates each of the n_heads heads of x (n_heads x head_dim) by a rope_rotation, "rotate half"
// form: element i pairs with i + head_dim/2.
void rope(float* x, int64_t n_heads, int64_t head_dim, const float* cos_sin);

struct AttentionShape {
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // query head h reads kv head h / (n_heads / n_kv_heads)
  int64_t head_dim = 0;
  int64_t sliding_window = 0;  // > 0: a query at p sees keys at p-window+1 .. p only
};

// A layer's view of a KV cache whose heads each hold `capacity` rows of head_dim elements of type
// F32, F16 or Q8_0 (head_dim a multiple of 32), keys and values in arrays of their own: head h's
// key at position j is at key_rows[j] + h * capacity * head_dim elements (values alike). The layer
// reads heads first_head .. first_head + n_kv_heads - 1. The position tables (kv_rows) are made
// once per cache: rebuilt per call they cost 2% of a SmolLM2-shape decode step.
struct KvCache {
  DType type = DType::F32;
  const void* const* key_rows = nullptr;    // [capacity]
  const void* const* value_rows = nullptr;  // [capacity]
  int64_t capacity = 0;
  int64_t first_head = 0;
};
// The position table of the rows at `data`: entry j points at row j (head_dim elements of type).
std::vector<const void*> kv_rows(DType type, const void* data, int64_t capacity, int64_t head_dim);

// Causal multi-head attention of n queries at positions first_pos .. first_pos+n-1 over a KV
// cache that already holds positions 0 .. first_pos+n-1:
//   out[i][h] = softmax(q[i][h] . K[kv(h)]^T / sqrt(head_dim)) V[kv(h)].
// q, out: [n][n_heads*head_dim]. Parallel over positions and heads; scratch is per thread,
// kept between calls.
void attention(const float* q, const KvCache& cache, int64_t n, int64_t first_pos, const AttentionShape& shape,
               float* out);

// ---- Encoder-decoder (translation) additions ------------------------------------------------

// For each of `rows` rows of n: out = (x - mean) / sqrt(variance + eps) * weight + bias, the
// variance biased (divided by n) as torch.nn.LayerNorm computes it. out may be x. Parallel over
// rows; layernorm_row is one row on the calling thread (for callers already in a parallel loop).
void layernorm(const float* x, const float* weight, const float* bias, float* out, int64_t rows, int64_t n,
               float eps);
void layernorm_row(const float* x, const float* weight, const float* bias, float* out, int64_t n, float eps);

// The feed-forward activations of the encoder-decoder families, as transformers' ACT2FN names them:
// relu, gelu (exact, with erf), gelu_tanh (the tanh approximation), swish (= silu).
enum class Activation { Relu, Gelu, GeluTanh, Swish };
// x = activation(x), elementwise.
void activate(Activation activation, float* x, int64_t n);

// Bidirectional attention of n_q queries that share n_keys keys and values found through
// pointers, so they may lie anywhere: a sentence's tokens in a packed batch (which is what a key
// padding mask selects), a beam's cache positions written by its ancestors, a sentence's encoder
// output shared by its beams. Head h of key j is the head_dim elements of kv_type (F32, F16, or
// Q8_0 with head_dim and head_stride whole blocks) at keys[j] + h * head_stride elements:
// head_stride is head_dim for rows with their heads side by side, and larger where each head's
// vectors lie together (the head-major layout, where one head's keys are contiguous).
//   out[i][h] = softmax_j(q[i][h] . keys[j][h] / sqrt(head_dim)) values[j][h]
// q, out: [n_q][n_heads*head_dim]. scratch: kernels::attend_scratch_floats(n_q, n_keys, head_dim)
// floats. A query's result has the same bits whatever queries share the call. Serial: callers run
// many at once.
void attend(const float* q, int64_t n_q, DType kv_type, const void* const* keys, const void* const* values,
            int64_t n_keys, int64_t n_heads, int64_t head_dim, int64_t head_stride, float* scratch, float* out);

// Refuses (InvalidArgument, messages starting "who: ") a KV cache type other than F32, F16 or
// Q8_0, and Q8_0 for heads that are not whole blocks: attention reads each head's slice alone.
void check_kv_type(DType kv_type, int64_t head_dim, const std::string& who);

}  // namespace octet::ops
