#include "engine/ops.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include <omp.h>

#include "engine/error.h"
#include "engine/parallel.h"
#include "kernels/kernels.h"

namespace octet::ops {

void matmul(const Matrix& w, const float* x, int64_t m, float* y, int64_t ldy, float* residual) {
  if (w.layout == Layout::Packed) {
    kernels::matmul_packed(kernels::packed_view(w.dtype, w.data, w.rows, w.cols), x, m, y, ldy, residual);
    return;
  }
  kernels::matmul(w.dtype, w.data, w.rows, w.cols, x, m, y, ldy);
  if (residual == nullptr) return;
  parallel_for(m, m * w.rows > 65536, [&](int64_t i) {
    for (int64_t r = 0; r < w.rows; ++r) residual[i * ldy + r] += y[i * ldy + r];
  });
}

void matmul(std::initializer_list<Product> products, const float* x, int64_t m) {
  const Matrix& first = products.begin()->w;
  bool fused = products.size() <= kernels::kMaxPackedProducts;
  for (const Product& p : products)
    fused = fused && p.w.layout == Layout::Packed && p.w.dtype == first.dtype && p.w.cols == first.cols;
  if (!fused) {
    for (const Product& p : products) matmul(p.w, x, m, p.y, p.ldy);
    return;
  }
  kernels::PackedProduct packed[kernels::kMaxPackedProducts];
  size_t n = 0;
  for (const Product& p : products) packed[n++] = {kernels::packed_view(p.w.dtype, p.w.data, p.w.rows, p.w.cols), p.y, p.ldy};
  kernels::matmul_packed({packed, n}, x, m);
}

void embedding(const Matrix& table, int32_t id, float* out) {
  if (table.layout == Layout::Packed)
    return kernels::dequantize_packed_row(kernels::packed_view(table.dtype, table.data, table.rows, table.cols), id, out);
  const auto* row = static_cast<const uint8_t*>(table.data) + id * kernels::row_bytes(table.dtype, table.cols);
  kernels::dequantize_row(table.dtype, row, out, table.cols);
}

void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t n, float eps) {
  parallel_for(rows, true, [&](int64_t r) {
    const float* in = x + r * n;
    float sum_squares = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum_squares += in[i] * in[i];
    const float inv_rms = 1.0f / std::sqrt(sum_squares / n + eps);
    for (int64_t i = 0; i < n; ++i) out[r * n + i] = in[i] * inv_rms * weight[i];
  });
}

void swiglu(float* gate, const float* up, int64_t n) {
  constexpr int64_t kChunk = 4096;  // a parallel unit: long enough to amortize, short enough to share
  parallel_for((n + kChunk - 1) / kChunk, n > 65536, [&](int64_t chunk) {
    const int64_t start = chunk * kChunk, count = std::min(kChunk, n - start);
    kernels::silu(gate + start, nullptr, count);
    for (int64_t i = start; i < start + count; ++i) gate[i] *= up[i];
  });
}

void add_bias(float* x, const float* bias, int64_t rows, int64_t n) {
  // One region for all rows: a parallel region per row costs more than small rows' additions.
  parallel_for(rows, rows * n > 65536, [&](int64_t r) {
    for (int64_t i = 0; i < n; ++i) x[r * n + i] += bias[i];
  });
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

void rope_rotation(int64_t pos, const float* inv_freq, int64_t half, float* cos_sin) {
  for (int64_t i = 0; i < half; ++i) {
    // The angle in float32, as transformers and llama2.c compute it.
    const float angle = static_cast<float>(pos) * inv_freq[i];
    cos_sin[i] = std::cos(angle);
    cos_sin[half + i] = std::sin(angle);
  }
}

void rope(float* x, int64_t n_heads, int64_t head_dim, const float* cos_sin) {
  const int64_t half = head_dim / 2;
  const float *cos = cos_sin, *sin = cos_sin + half;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* head = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = head[i], b = head[i + half];
      head[i] = a * cos[i] - b * sin[i];
      head[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

std::vector<const void*> kv_rows(DType type, const void* data, int64_t capacity, int64_t head_dim) {
  std::vector<const void*> rows(capacity);
  const size_t row_bytes = kernels::row_bytes(type, head_dim);
  for (int64_t j = 0; j < capacity; ++j) rows[j] = static_cast<const char*>(data) + j * row_bytes;
  return rows;
}

void attention(const float* q, const KvCache& cache, int64_t n, int64_t first_pos, const AttentionShape& shape,
               float* out) {
  const int64_t head_dim = shape.head_dim, q_dim = shape.n_heads * head_dim;
  const int64_t group = shape.n_heads / shape.n_kv_heads, n_keys_max = first_pos + n;
  const int64_t head_elements = cache.capacity * head_dim;  // the kernel's offset from one head to the next
  // A work item is a GQA group at up to kQueriesPerItem / group consecutive positions, whose
  // query heads share each key load (one call, each query limited to its causal prefix); or a
  // single head at one position when items are too few to keep every thread busy (a decode step).
  // Positions whose sliding window has begun to drop keys are attended one by one.
  constexpr int64_t kQueriesPerItem = 16;
  const int64_t threads = omp_get_max_threads();
  const bool grouped = n * shape.n_kv_heads >= 4 * threads;
  const int64_t heads_per_item = grouped ? group : 1;
  int64_t positions_per_item = grouped ? std::max<int64_t>(1, kQueriesPerItem / group) : 1;
  while (positions_per_item > 1 && (n + positions_per_item - 1) / positions_per_item * shape.n_kv_heads < 4 * threads)
    positions_per_item /= 2;
  const int64_t blocks = (n + positions_per_item - 1) / positions_per_item;
  const int64_t items_per_block = shape.n_heads / heads_per_item;
  const int64_t max_queries = positions_per_item * heads_per_item;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  // Below some thousands of multiply-adds a parallel region costs more than it saves.
  const int64_t work = shape.n_heads * n * n_keys_max * head_dim;
#pragma omp parallel if (work > (1 << 15))
  {
    // The item's queries gathered into consecutive rows, their outputs, and the kernel's scratch.
    thread_local std::vector<float> queries, outputs, scratch;
    thread_local std::vector<int64_t> key_counts;
    queries.resize(max_queries * head_dim);
    outputs.resize(max_queries * head_dim);
    scratch.resize(kernels::attend_scratch_floats(max_queries, n_keys_max, head_dim));
    key_counts.resize(max_queries);
    const auto attend_item = [&](int64_t item) {
      const int64_t i0 = item / items_per_block * positions_per_item, h0 = item % items_per_block * heads_per_item;
      const int64_t kv = h0 / group, positions = std::min(positions_per_item, n - i0);
      const auto first_key_at = [&](int64_t pos) {
        return shape.sliding_window > 0 ? std::max<int64_t>(0, pos - shape.sliding_window + 1) : 0;
      };
      const auto attend = [&](const float* q_rows, float* out_rows, int64_t n_q, int64_t first_key, int64_t n_keys,
                              const int64_t* counts) {
        kernels::attend({.q = q_rows,
                         .q_stride = head_dim,
                         .n_q = n_q,
                         .kv_type = cache.type,
                         .keys = cache.key_rows + first_key,
                         .values = cache.value_rows + first_key,
                         .offset = (cache.first_head + kv) * head_elements,
                         .n_keys = n_keys,
                         .key_counts = counts,
                         .head_dim = head_dim,
                         .scale = scale,
                         .scratch = scratch.data(),
                         .out = out_rows,
                         .out_stride = head_dim});
      };
      const int64_t last_pos = first_pos + i0 + positions - 1;
      if (positions == 1 || first_key_at(last_pos) > 0) {
        for (int64_t i = i0; i < i0 + positions; ++i) {
          const int64_t first_key = first_key_at(first_pos + i);
          attend(q + i * q_dim + h0 * head_dim, out + i * q_dim + h0 * head_dim, heads_per_item, first_key,
                 first_pos + i + 1 - first_key, nullptr);
        }
        return;
      }
      for (int64_t p = 0; p < positions; ++p) {
        const float* from = q + (i0 + p) * q_dim + h0 * head_dim;
        std::copy(from, from + heads_per_item * head_dim, queries.data() + p * heads_per_item * head_dim);
        std::fill_n(key_counts.data() + p * heads_per_item, heads_per_item, first_pos + i0 + p + 1);
      }
      attend(queries.data(), outputs.data(), positions * heads_per_item, 0, last_pos + 1, key_counts.data());
      for (int64_t p = 0; p < positions; ++p) {
        const float* from = outputs.data() + p * heads_per_item * head_dim;
        std::copy(from, from + heads_per_item * head_dim, out + (i0 + p) * q_dim + h0 * head_dim);
      }
    };
    const int64_t items = blocks * items_per_block;
    if (n == 1) {
      // A decode step's items are alike: a static share spares the dynamic loop's shared counter,
      // a cross-core round trip per item.
#pragma omp for schedule(static)
      for (int64_t item = 0; item < items; ++item) attend_item(item);
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) attend_item(item);
    }
  }
}

namespace {

using Floats4 = float __attribute__((vector_size(16)));

// sum of f(x[i]) over n floats in 16 float partial sums (4 vectors of 4), then the tail: the
// compiler may not reorder a float sum, so the lanes are written out.
template <class F>
[[gnu::always_inline]] inline float sum_lanes(const float* x, int64_t n, F&& f) {
  Floats4 s[4] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int k = 0; k < 4; ++k) {
      Floats4 v;
      __builtin_memcpy(&v, x + i + 4 * k, sizeof v);
      s[k] += f(v);
    }
  }
  const Floats4 t = (s[0] + s[1]) + (s[2] + s[3]);
  float sum = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; ++i) sum += f(x[i]);
  return sum;
}

}  // namespace

void layernorm_row(const float* x, const float* weight, const float* bias, float* out, int64_t n, float eps) {
  const float mean = sum_lanes(x, n, [](auto v) { return v; }) / n;
  // Of deviations: two passes, no cancellation.
  const float sum_squares = sum_lanes(x, n, [mean](auto v) { return (v - mean) * (v - mean); });
  const float inv_std = 1.0f / std::sqrt(sum_squares / n + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - mean) * inv_std * weight[i] + bias[i];
}

void layernorm(const float* x, const float* weight, const float* bias, float* out, int64_t rows, int64_t n,
               float eps) {
  // A region pays for itself from a few thousand elements: the other threads would otherwise
  // wait through the rows.
  parallel_for(rows, rows * n >= (1 << 13), [&](int64_t r) { layernorm_row(x + r * n, weight, bias, out + r * n, n, eps); });
}

void activate(Activation activation, float* x, int64_t n) {
  switch (activation) {
    case Activation::Relu:
      parallel_for(n, n > 65536, [&](int64_t i) { x[i] = std::max(x[i], 0.0f); });
      break;
    case Activation::Gelu:
      parallel_for(n, n > 65536, [&](int64_t i) {
        x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * (1.0f / std::numbers::sqrt2_v<float>)));
      });
      break;
    case Activation::GeluTanh: {
      const float sqrt_2_over_pi = std::sqrt(2.0f / std::numbers::pi_v<float>);
      parallel_for(n, n > 65536, [&](int64_t i) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + std::tanh(sqrt_2_over_pi * (v + 0.044715f * v * v * v)));
      });
      break;
    }
    case Activation::Swish:
      kernels::silu(x, nullptr, n);
      break;
  }
}

void attend(const float* q, int64_t n_q, DType kv_type, const void* const* keys, const void* const* values,
            int64_t n_keys, int64_t n_heads, int64_t head_dim, int64_t head_stride, float* scratch, float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t row = n_heads * head_dim;
  // Head-major, a head's keys and values are short runs far from the last head's, which the
  // hardware prefetchers cannot lock onto in time: while a head is attended, the next head's are
  // fetched. Translation cross-attention: greedy -15%, beam 4 -10%. (Side by side, the next head
  // is the neighbouring lines, which the hardware fetches already: there it cost 3-4%.)
  const bool head_major = head_stride != head_dim;
  const size_t slice_bytes = kernels::row_bytes(kv_type, head_dim), stride_bytes = kernels::row_bytes(kv_type, head_stride);
  for (int64_t h = 0; h < n_heads; ++h) {
    if (head_major && h + 1 < n_heads)
      for (int64_t j = 0; j < n_keys; ++j)
        for (size_t line = 0; line < slice_bytes; line += 64) {
          __builtin_prefetch(static_cast<const char*>(keys[j]) + (h + 1) * stride_bytes + line);
          __builtin_prefetch(static_cast<const char*>(values[j]) + (h + 1) * stride_bytes + line);
        }
    kernels::attend({.q = q + h * head_dim,
                     .q_stride = row,
                     .n_q = n_q,
                     .kv_type = kv_type,
                     .keys = keys,
                     .values = values,
                     .offset = h * head_stride,
                     .n_keys = n_keys,
                     .head_dim = head_dim,
                     .scale = scale,
                     .scratch = scratch,
                     .out = out + h * head_dim,
                     .out_stride = row});
  }
}

void check_kv_type(DType kv_type, int64_t head_dim, const std::string& who) {
  const std::string type = kernels::dtype_name(kv_type);
  if (kv_type != DType::F32 && kv_type != DType::F16 && kv_type != DType::Q8_0)
    fail(ErrorCode::InvalidArgument, who + ": a KV cache of " + type + " is not supported (f32, f16, q8_0)");
  if (kernels::row_bytes(kv_type, head_dim) == 0) {
    fail(ErrorCode::InvalidArgument, who + ": a " + type + " KV cache needs head_dim to be a multiple of 32; this model's is " +
                                         std::to_string(head_dim) + " (use f16)");
  }
}

}  // namespace octet::ops
