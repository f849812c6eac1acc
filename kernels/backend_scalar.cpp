// The scalar backend: the reference every SIMD backend is tested against, and the fallback on
// CPUs without one. Integer block sums are exact; block results are added in double so that the
// reference itself contributes (almost) no rounding to the comparison.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/backend.h"

namespace octet::kernels {

namespace {

void quantize_act(const float* x, BlockQ8A* out, int64_t k, int32_t* sums) {
  for (int64_t b = 0; b < k / kBlockSize; ++b, x += kBlockSize) {
    float amax = 0;
    for (int j = 0; j < kBlockSize; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    int sum = 0;
    for (int j = 0; j < kBlockSize; ++j) {
      // |x / d| <= 127 by construction; the clamp only gives NaN input a defined result.
      const float r = d == 0 ? 0.0f : std::nearbyint(x[j] / d);
      const int q = r >= -127.0f ? (r <= 127.0f ? (int)r : 127) : -127;
      out[b].qs[j] = (int8_t)q;
      sum += q;
    }
    out[b].d = d;
    out[b].s = d * (float)sum;
    if (sums) sums[b] = sum;
  }
}

// One weight row of nb blocks against one activation row.
float dot_q8_0(const BlockQ8_0* w, const BlockQ8A* x, int64_t nb) {
  double acc = 0;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t sumi = 0;
    for (int j = 0; j < kBlockSize; ++j) sumi += w[b].qs[j] * x[b].qs[j];
    acc += (float)sumi * (fp16_to_fp32(w[b].d) * x[b].d);
  }
  return (float)acc;
}

float dot_q4_0(const BlockQ4_0* w, const BlockQ8A* x, int64_t nb) {
  double acc = 0;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t sumi = 0;
    for (int j = 0; j < kBlockSize; ++j) sumi += (q4_nibble(w[b].qs, j) - 8) * x[b].qs[j];
    acc += (float)sumi * (fp16_to_fp32(w[b].d) * x[b].d);
  }
  return (float)acc;
}

// sum_j (d q_j + m) x_j = d dx sum_j q_j xq_j + m s, with s = dx sum_j xq_j from the activation.
float dot_q4_1(const BlockQ4_1* w, const BlockQ8A* x, int64_t nb) {
  double acc = 0;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t sumi = 0;
    for (int j = 0; j < kBlockSize; ++j) sumi += q4_nibble(w[b].qs, j) * x[b].qs[j];
    acc += (float)sumi * (fp16_to_fp32(w[b].d) * x[b].d) + fp16_to_fp32(w[b].m) * x[b].s;
  }
  return (float)acc;
}

float dot_f16(const uint16_t* w, const float* x, int64_t k) {
  double acc = 0;
  for (int64_t i = 0; i < k; ++i) acc += (double)(fp16_to_fp32(w[i]) * x[i]);
  return (float)acc;
}

float dot_f32(const float* w, const float* x, int64_t k) {
  double acc = 0;
  for (int64_t i = 0; i < k; ++i) acc += (double)(w[i] * x[i]);
  return (float)acc;
}

// The definition of kernels.h's attend, one query at a time: scores, softmax with std::exp, and
// the probability-weighted sum of the values.
template <typename E>
void reference_attend_as(const AttendArgs& a) {
  const auto element = [&](const void* row, int64_t d) {
    const int64_t e = a.offset + d;
    if constexpr (std::is_same_v<E, BlockQ8_0>) {
      const BlockQ8_0& block = static_cast<const BlockQ8_0*>(row)[e / kBlockSize];
      return fp16_to_fp32(block.d) * block.qs[e % kBlockSize];
    } else if constexpr (std::is_same_v<E, uint16_t>) {
      return fp16_to_fp32(static_cast<const E*>(row)[e]);
    } else {
      return static_cast<const E*>(row)[e];
    }
  };
  for (int64_t i = 0; i < a.n_q; ++i) {
    const float* q = a.q + i * a.q_stride;
    float* scores = a.scratch + i * a.n_keys;
    const int64_t n_keys = a.key_counts ? a.key_counts[i] : a.n_keys;
    float max = -INFINITY;
    for (int64_t j = 0; j < n_keys; ++j) {
      float dot = 0.0f;
      for (int64_t d = 0; d < a.head_dim; ++d) dot += q[d] * element(a.keys[j], d);
      scores[j] = dot * a.scale;
      max = std::fmax(max, scores[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n_keys; ++j) sum += scores[j] = std::exp(scores[j] - max);
    float* out = a.out + i * a.out_stride;
    std::fill(out, out + a.head_dim, 0.0f);
    for (int64_t j = 0; j < n_keys; ++j) {
      const float weight = scores[j] / sum;
      for (int64_t d = 0; d < a.head_dim; ++d) out[d] += weight * element(a.values[j], d);
    }
  }
}

void reference_attend(const AttendArgs& a) {
  switch (a.kv_type) {
    case DType::F16: reference_attend_as<uint16_t>(a); break;
    case DType::Q8_0: reference_attend_as<BlockQ8_0>(a); break;
    default: reference_attend_as<float>(a); break;
  }
}

double reference_sum_exp(const float* x, int64_t n, float max) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  return sum;
}

void reference_silu(float* x, const float* bias, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] + (bias ? bias[i] : 0.0f);
    x[i] = v / (1.0f + std::exp(-v));
  }
}

// Adapts a one-row dot to the tile signature. Block dots take a block count, float dots k.
template <typename W, typename X, float (*Dot)(const W*, const X*, int64_t), bool kBlocks>
void tile(const void* w, const void* x, size_t x_stride, int rows, int64_t k, float* y, int64_t ldy) {
  const int64_t n = kBlocks ? k / kBlockSize : k;
  for (int r = 0; r < rows; ++r) {
    const X* xr = reinterpret_cast<const X*>(static_cast<const char*>(x) + r * x_stride);
    y[r * ldy] = Dot(static_cast<const W*>(w), xr, n);
  }
}

}  // namespace

const Backend& scalar_backend() {
  static const Backend backend = {
      "scalar",
      quantize_act,
      {
          tile<float, float, dot_f32, false>,
          tile<uint16_t, float, dot_f16, false>,
          tile<BlockQ8_0, BlockQ8A, dot_q8_0, true>,
          tile<BlockQ4_0, BlockQ8A, dot_q4_0, true>,
          tile<BlockQ4_1, BlockQ8A, dot_q4_1, true>,
      },
      {},
      reference_attend,
      reference_sum_exp,
      reference_silu,
      nullptr,
      {},
  };
  return backend;
}

}  // namespace octet::kernels
