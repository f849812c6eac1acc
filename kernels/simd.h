// Internal to kernels/: the float kernels (attention, sum of exponentials, silu) written once over
// a small vector interface V, which each SIMD backend file implements with its own registers and
// includes this header to instantiate, so the code is compiled with that file's instruction-set
// flags only. V provides:
//   T (the vector type), kWidth (floats per vector), zero(), set1(f), load(p), store(p, v),
//   load(const uint16_t* p) (kWidth halves widened to floats),
//   load(const int8_t* p, uint16_t scale) (kWidth int8 values times an fp16 scale: Q8_0 rows),
//   add(a, b), sub(a, b), mul(a, b), div(a, b), fma(a, b, c) = a * b + c, max(a, b),
//   if_negative(v, a, b) = (v < 0 ? a : b) per lane,
//   round(v) (to nearest), scale2(v, n) = v * 2^n for integral n, reduce_add(v), reduce_max(v).
// No std:: function templates here: their out-of-line copies would carry this file's ISA flags
// into code that any other file may end up calling.
// The work is the scalar reference's (backend_scalar.cpp); only the vector width, the polynomial
// exp and the summation order differ.
#pragma once
#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/kernels.h"

namespace octet::kernels::simd {

// e^x for x <= 0 (scores minus their maximum): Cody-Waite range reduction to |r| <= ln2/2 and
// Cephes' degree-5 polynomial, within 2 ulp of expf. Inputs are clamped at -87.3 so 2^n stays a
// normal float: exp(-inf) gives ~1e-38, a weight no float sum can notice next to the max's 1.
template <class V>
typename V::T exp_nonpositive(typename V::T x) {
  x = V::max(x, V::set1(-87.3f));
  const typename V::T n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  x = V::fma(n, V::set1(-0.693359375f), x);
  x = V::fma(n, V::set1(2.12194440e-4f), x);
  typename V::T p = V::set1(1.9875691500e-4f);
  p = V::fma(p, x, V::set1(1.3981999507e-3f));
  p = V::fma(p, x, V::set1(8.3334519073e-3f));
  p = V::fma(p, x, V::set1(4.1665795894e-2f));
  p = V::fma(p, x, V::set1(1.6666665459e-1f));
  p = V::fma(p, x, V::set1(5.0000001201e-1f));
  const typename V::T y = V::add(V::fma(p, V::mul(x, x), x), V::set1(1.0f));
  return V::scale2(y, n);
}

// The n < kWidth elements at p as one vector, the other lanes `fill`.
template <class V>
typename V::T load_partial(const float* p, int64_t n, float fill) {
  float tmp[V::kWidth];
  for (float& t : tmp) t = fill;
  std::memcpy(tmp, p, n * sizeof(float));
  return V::load(tmp);
}

template <class V>
typename V::T load_partial(const uint16_t* p, int64_t n, float fill) {
  uint16_t tmp[V::kWidth] = {};
  std::memcpy(tmp, p, n * sizeof(uint16_t));
  float wide[V::kWidth];
  V::store(wide, V::load(tmp));
  for (int64_t i = n; i < V::kWidth; ++i) wide[i] = fill;
  return V::load(wide);
}

template <class V>
void store_partial(float* p, typename V::T v, int64_t n) {
  float tmp[V::kWidth];
  V::store(tmp, v);
  std::memcpy(p, tmp, n * sizeof(float));
}

// KV rows are float, uint16_t (f16) or BlockQ8_0 (Q8_0). Q8_0 rows are whole blocks of 32, which
// kWidth divides: their vectors never straddle a block and there is no partial vector at the end.
template <typename E>
constexpr bool kBlockRow = std::is_same_v<E, BlockQ8_0>;

// The row at `row`, from element `offset` on (a multiple of 32 for Q8_0).
template <typename E>
const E* kv_row(const void* row, int64_t offset) {
  if constexpr (kBlockRow<E>) return static_cast<const E*>(row) + offset / kBlockSize;
  else return static_cast<const E*>(row) + offset;
}

// kWidth floats from element e of a row (e a multiple of kWidth).
template <class V, typename E>
typename V::T load_kv(const E* row, int64_t e) { return V::load(row + e); }
template <class V>
typename V::T load_kv(const BlockQ8_0* row, int64_t e) {
  const BlockQ8_0& block = row[e / kBlockSize];
  return V::load(block.qs + e % kBlockSize, block.d);
}

template <class V, typename E>
float dot(const float* a, const E* row, int64_t n) {
  constexpr int W = V::kWidth;
  typename V::T acc0 = V::zero(), acc1 = V::zero();
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 = V::fma(V::load(a + i), load_kv<V>(row, i), acc0);
    acc1 = V::fma(V::load(a + i + W), load_kv<V>(row, i + W), acc1);
  }
  if (i + W <= n) acc0 = V::fma(V::load(a + i), load_kv<V>(row, i), acc0), i += W;
  if constexpr (!kBlockRow<E>)
    if (i < n) acc1 = V::fma(load_partial<V>(a + i, n - i, 0.0f), load_partial<V>(row + i, n - i, 0.0f), acc1);
  return V::reduce_add(V::add(acc0, acc1));
}

// out[0 .. NV*kWidth) = inv_sum * sum_j weights[j] * values[j][offset + first ..): the
// accumulators stay in registers across all keys.
template <class V, typename E, int NV>
void weighted_sum(const float* weights, const void* const* values, int64_t offset, int64_t first, int64_t n_keys,
                  float inv_sum, float* out) {
  constexpr int W = V::kWidth;
  typename V::T acc[NV];
  for (int u = 0; u < NV; ++u) acc[u] = V::zero();
  for (int64_t j = 0; j < n_keys; ++j) {
    const typename V::T p = V::set1(weights[j]);
    const E* v = kv_row<E>(values[j], offset);
    for (int u = 0; u < NV; ++u) acc[u] = V::fma(p, load_kv<V>(v, first + u * W), acc[u]);
  }
  for (int u = 0; u < NV; ++u) V::store(out + u * W, V::mul(acc[u], V::set1(inv_sum)));
}

// The same for fewer than kWidth floats at the end of a head (float and f16 rows only).
template <class V, typename E>
void weighted_sum_tail(const float* weights, const void* const* values, int64_t offset, int64_t n_keys,
                       float inv_sum, int64_t n, float* out) {
  typename V::T acc = V::zero();
  for (int64_t j = 0; j < n_keys; ++j)
    acc = V::fma(V::set1(weights[j]), load_partial<V>(static_cast<const E*>(values[j]) + offset, n, 0.0f), acc);
  store_partial<V>(out, V::mul(acc, V::set1(inv_sum)), n);
}

template <class V, typename E>
void attend_as(const AttendArgs& a) {
  constexpr int W = V::kWidth;
  const int64_t n_keys = a.n_keys, head_dim = a.head_dim;
  // Scores: each key is loaded once for all queries of the group.
  for (int64_t j = 0; j < n_keys; ++j) {
    const E* key = kv_row<E>(a.keys[j], a.offset);
    for (int64_t i = 0; i < a.n_q; ++i) a.scratch[i * n_keys + j] = dot<V>(a.q + i * a.q_stride, key, head_dim) * a.scale;
  }
  for (int64_t i = 0; i < a.n_q; ++i) {
    float* s = a.scratch + i * n_keys;
    const int64_t full = n_keys / W * W;
    typename V::T vmax = V::set1(-INFINITY);
    for (int64_t j = 0; j < full; j += W) vmax = V::max(vmax, V::load(s + j));
    float max = V::reduce_max(vmax);
    for (int64_t j = full; j < n_keys; ++j) max = s[j] > max ? s[j] : max;
    // Softmax numerators in place; the division by their sum is folded into the output.
    const typename V::T vm = V::set1(max);
    typename V::T vsum = V::zero();
    for (int64_t j = 0; j < full; j += W) {
      const typename V::T e = exp_nonpositive<V>(V::sub(V::load(s + j), vm));
      V::store(s + j, e);
      vsum = V::add(vsum, e);
    }
    if (full < n_keys) {
      const int64_t n = n_keys - full;
      const typename V::T e =
          exp_nonpositive<V>(V::sub(load_partial<V>(s + full, n, -INFINITY), vm));
      store_partial<V>(s + full, e, n);
    }
    float sum = V::reduce_add(vsum);
    for (int64_t j = full; j < n_keys; ++j) sum += s[j];
    const float inv_sum = 1.0f / sum;
    float* out = a.out + i * a.out_stride;
    int64_t d = 0;
    for (; d + 4 * W <= head_dim; d += 4 * W) weighted_sum<V, E, 4>(s, a.values, a.offset, d, n_keys, inv_sum, out + d);
    switch ((head_dim - d) / W) {
      case 3: weighted_sum<V, E, 3>(s, a.values, a.offset, d, n_keys, inv_sum, out + d); break;
      case 2: weighted_sum<V, E, 2>(s, a.values, a.offset, d, n_keys, inv_sum, out + d); break;
      case 1: weighted_sum<V, E, 1>(s, a.values, a.offset, d, n_keys, inv_sum, out + d); break;
      default: break;
    }
    d += (head_dim - d) / W * W;
    if constexpr (!kBlockRow<E>)
      if (d < head_dim) weighted_sum_tail<V, E>(s, a.values, a.offset + d, n_keys, inv_sum, head_dim - d, out + d);
  }
}

template <class V>
void attend(const AttendArgs& a) {
  switch (a.kv_type) {
    case DType::F16: attend_as<V, uint16_t>(a); break;
    case DType::Q8_0: attend_as<V, BlockQ8_0>(a); break;
    default: attend_as<V, float>(a); break;
  }
}

// sum_i exp(x[i] - max): 4 vector accumulators, each block of 512 elements added in double.
template <class V>
double sum_exp(const float* x, int64_t n, float max) {
  constexpr int W = V::kWidth;
  constexpr int64_t kBlock = 512;
  const typename V::T vm = V::set1(max);
  double sum = 0;
  int64_t i = 0;
  while (i + 4 * W <= n) {
    const int64_t end = i + kBlock < n ? i + kBlock : n;
    typename V::T acc[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
    for (; i + 4 * W <= end; i += 4 * W)
      for (int u = 0; u < 4; ++u) acc[u] = V::add(acc[u], exp_nonpositive<V>(V::sub(V::load(x + i + u * W), vm)));
    sum += V::reduce_add(V::add(V::add(acc[0], acc[1]), V::add(acc[2], acc[3])));
  }
  if (i < n) {
    // The tail, padded with -inf: each padding lane adds ~1e-38 to a sum of at least 1 (the max's).
    typename V::T acc = V::zero();
    for (; i < n; i += W)
      acc = V::add(acc, exp_nonpositive<V>(V::sub(load_partial<V>(x + i, n - i < W ? n - i : W, -INFINITY), vm)));
    sum += V::reduce_add(acc);
  }
  return sum;
}

// v / (1 + e^-v), with exp only ever of -|v|: e = exp(-|v|), silu = v * (v < 0 ? e : 1) / (1 + e).
template <class V>
typename V::T silu(typename V::T v) {
  const typename V::T one = V::set1(1.0f);
  const typename V::T e = exp_nonpositive<V>(V::if_negative(v, v, V::sub(V::zero(), v)));
  return V::div(V::mul(v, V::if_negative(v, e, one)), V::add(one, e));
}

template <class V>
void silu(float* x, const float* bias, int64_t n) {
  constexpr int W = V::kWidth;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const typename V::T v = bias ? V::add(V::load(x + i), V::load(bias + i)) : V::load(x + i);
    V::store(x + i, silu<V>(v));
  }
  if (i < n) {
    typename V::T v = load_partial<V>(x + i, n - i, 0.0f);
    if (bias) v = V::add(v, load_partial<V>(bias + i, n - i, 0.0f));
    store_partial<V>(x + i, silu<V>(v), n - i);
  }
}

}  // namespace octet::kernels::simd
