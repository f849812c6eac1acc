#include "engine/ops.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/kernels.h"

namespace octet::ops {

void matmul(const Matrix& w, const float* x, int64_t m, float* y, int64_t ldy) {
  kernels::matmul(w.dtype, w.data, w.rows, w.cols, x, m, y, ldy);
}

void embedding(const Matrix& table, int32_t id, float* out) {
  const auto* row = static_cast<const uint8_t*>(table.data) + id * kernels::row_bytes(table.dtype, table.cols);
  kernels::dequantize_row(table.dtype, row, out, table.cols);
}

void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t n, float eps) {
#pragma omp parallel for if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    float sum_squares = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum_squares += in[i] * in[i];
    const float inv_rms = 1.0f / std::sqrt(sum_squares / n + eps);
    for (int64_t i = 0; i < n; ++i) out[r * n + i] = in[i] * inv_rms * weight[i];
  }
}

void softmax(float* x, int64_t n) {
  const float max = *std::max_element(x, x + n);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] /= sum;
}

void swiglu(float* gate, const float* up, int64_t n) {
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) gate[i] = silu(gate[i]) * up[i];
}

void add(float* x, const float* y, int64_t n) {
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void add_bias(float* x, const float* bias, int64_t rows, int64_t n) {
  // One region for all rows: a parallel region per row costs more than small rows' additions.
#pragma omp parallel for if (rows * n > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) x[r * n + i] += bias[i];
  }
}

std::vector<float> rope_inverse_frequencies(int64_t head_dim, float theta, const RopeScaling& scaling) {
  std::vector<float> inv_freq(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
  }
  switch (scaling.kind) {
    case RopeScaling::Kind::None:
      break;
    case RopeScaling::Kind::Linear:  // positions divided by factor = frequencies divided by it
      for (float& f : inv_freq) f /= scaling.factor;
      break;
    case RopeScaling::Kind::Llama3: {
      // Long wavelengths (low frequencies) are slowed down by `factor`, short ones kept, and the
      // band between the two wavelength thresholds is blended smoothly.
      const float old_context = static_cast<float>(scaling.original_context);
      const float low_freq_wavelen = old_context / scaling.low_freq_factor;
      const float high_freq_wavelen = old_context / scaling.high_freq_factor;
      for (float& f : inv_freq) {
        const float wavelen = 2.0f * std::numbers::pi_v<float> / f;
        if (wavelen > low_freq_wavelen) {
          f /= scaling.factor;
        } else if (wavelen >= high_freq_wavelen) {
          const float smooth = (old_context / wavelen - scaling.low_freq_factor) /
                               (scaling.high_freq_factor - scaling.low_freq_factor);
          f = (1.0f - smooth) * f / scaling.factor + smooth * f;
        }
      }
      break;
    }
  }
  return inv_freq;
}

void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t pos, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    // The angle in float32, as transformers and llama2.c compute it.
    const float angle = static_cast<float>(pos) * inv_freq[i];
    const float cos = std::cos(angle), sin = std::sin(angle);
    for (int64_t h = 0; h < n_heads; ++h) {
      float* head = x + h * head_dim;
      const float a = head[i], b = head[i + half];
      head[i] = a * cos - b * sin;
      head[i + half] = b * cos + a * sin;
    }
  }
}

void attention(const float* q, const float* key_cache, const float* value_cache,
               int64_t cache_capacity, int64_t n, int64_t first_pos, const AttentionShape& shape,
               float* scores, float* out) {
  const int64_t head_dim = shape.head_dim;
  const int64_t q_dim = shape.n_heads * head_dim;
  const int64_t heads_per_kv = shape.n_heads / shape.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  // Below some thousands of multiply-adds a parallel region costs more than it saves.
  const int64_t work = shape.n_heads * n * (first_pos + n) * head_dim;
#pragma omp parallel for schedule(dynamic, 1) if (work > (1 << 15))
  for (int64_t h = 0; h < shape.n_heads; ++h) {
    const float* keys = key_cache + (h / heads_per_kv) * cache_capacity * head_dim;
    const float* values = value_cache + (h / heads_per_kv) * cache_capacity * head_dim;
    float* head_scores = scores + h * cache_capacity;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = first_pos + i;
      const int64_t first_key = shape.sliding_window > 0 ? std::max<int64_t>(0, pos - shape.sliding_window + 1) : 0;
      const int64_t n_keys = pos - first_key + 1;
      const float* query = q + i * q_dim + h * head_dim;
      for (int64_t j = 0; j < n_keys; ++j) {
        const float* key = keys + (first_key + j) * head_dim;
        float dot = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) dot += query[d] * key[d];
        head_scores[j] = dot * scale;
      }
      softmax(head_scores, n_keys);
      float* head_out = out + i * q_dim + h * head_dim;
      std::fill(head_out, head_out + head_dim, 0.0f);
      for (int64_t j = 0; j < n_keys; ++j) {
        const float* value = values + (first_key + j) * head_dim;
        const float weight = head_scores[j];
        for (int64_t d = 0; d < head_dim; ++d) head_out[d] += weight * value[d];
      }
    }
  }
}

void layernorm(const float* x, const float* weight, const float* bias, float* out, int64_t rows, int64_t n,
               float eps) {
#pragma omp parallel for if (rows * n > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += in[i];
    const float mean = sum / n;
    float sum_squares = 0.0f;  // of deviations: two passes, no cancellation
    for (int64_t i = 0; i < n; ++i) sum_squares += (in[i] - mean) * (in[i] - mean);
    const float inv_std = 1.0f / std::sqrt(sum_squares / n + eps);
    for (int64_t i = 0; i < n; ++i) out[r * n + i] = (in[i] - mean) * inv_std * weight[i] + bias[i];
  }
}

void activate(Activation activation, float* x, int64_t n) {
  switch (activation) {
    case Activation::Relu:
#pragma omp parallel for if (n > 65536)
      for (int64_t i = 0; i < n; ++i) x[i] = std::max(x[i], 0.0f);
      break;
    case Activation::Gelu:
#pragma omp parallel for if (n > 65536)
      for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * (1.0f / std::numbers::sqrt2_v<float>)));
      break;
    case Activation::GeluTanh: {
      const float sqrt_2_over_pi = std::sqrt(2.0f / std::numbers::pi_v<float>);
#pragma omp parallel for if (n > 65536)
      for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + std::tanh(sqrt_2_over_pi * (v + 0.044715f * v * v * v)));
      }
      break;
    }
    case Activation::Swish:
#pragma omp parallel for if (n > 65536)
      for (int64_t i = 0; i < n; ++i) x[i] = silu(x[i]);
      break;
  }
}

void attend(const float* q, const float* const* keys, const float* const* values, int64_t n_keys, int64_t n_heads,
            int64_t head_dim, float* scores, float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t h = 0; h < n_heads; ++h) {
    const float* query = q + h * head_dim;
    for (int64_t j = 0; j < n_keys; ++j) {
      const float* key = keys[j] + h * head_dim;
      float dot = 0.0f;
      for (int64_t d = 0; d < head_dim; ++d) dot += query[d] * key[d];
      scores[j] = dot * scale;
    }
    softmax(scores, n_keys);
    float* head_out = out + h * head_dim;
    std::fill(head_out, head_out + head_dim, 0.0f);
    for (int64_t j = 0; j < n_keys; ++j) {
      const float* value = values[j] + h * head_dim;
      const float weight = scores[j];
      for (int64_t d = 0; d < head_dim; ++d) head_out[d] += weight * value[d];
    }
  }
}

}  // namespace octet::ops
