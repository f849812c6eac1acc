// Internal to kernels/: the float kernels (attention, sum of exponentials, silu) written once over
// a small vector interface V, which each SIMD backend file implements with its own registers and
// includes this header to instantiate, so the code is compiled with that file's instruction-set
// flags only. V provides:
//   T (the vector type), kWidth (floats per vector), zero(), set1(f), load(p), store(p, v),
//   load(const uint16_t* p) (kWidth halves widened to floats),
//   load(const int8_t* p, uint16_t scale) (kWidth int8 values times an fp16 scale: Q8_0 rows),
//   add(a, b), sub(a, b), mul(a, b), div(a, b), fma(a, b, c) = a * b + c, max(a, b),
//   if_negative(v, a, b) = (v < 0 ? a : b) per lane,
//   round(v) (to nearest), scale2(v, n) = v * 2^n for integral n, reduce_add(v), reduce_max(v),
//   sum_each(v) (kWidth vectors in, lane k = the sum of v[k]'s lanes, each vector's lanes added in
//   the same order as reduce_add adds them), kRegisters (vector registers, for register
//   blocking), and, where to_f16 is instantiated, store_f16(p, v) (kWidth halves with
//   fp32_to_fp16's bytes).
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

// kWidth dot products of one query with kWidth keys, one chain each, reduced by V::sum_each to
// one vector: lane k = q . key k. key(k, e) gives key k's floats e .. e + kWidth - 1, zero past
// head_dim; e runs over whole vectors, past `full` only for a head with a partial last vector.
template <class V, class KeyVector>
typename V::T dot_keys(const float* q, int64_t head_dim, int64_t full, KeyVector key) {
  constexpr int W = V::kWidth;
  typename V::T dots[W];
  for (int k = 0; k < W; ++k) dots[k] = V::zero();
  for (int64_t e = 0; e < head_dim; e += W) {
    const typename V::T qv = e < full ? V::load(q + e) : load_partial<V>(q + e, head_dim - e, 0.0f);
#pragma GCC unroll 16
    for (int k = 0; k < W; ++k) dots[k] = V::fma(qv, key(k, e), dots[k]);
  }
  return V::sum_each(dots);
}

// Rows are found through pointers (a beam's ancestors, a sentence's encoder output), which no
// hardware prefetcher follows: the next rows' head slices are asked for ahead of use.
constexpr int64_t kRowsAhead = 8;
template <typename E>
void prefetch_rows(const void* const* rows, int64_t n, int64_t offset, int64_t elements) {
  for (int64_t k = 0; k < n; ++k) {
    const char* first = reinterpret_cast<const char*>(kv_row<E>(rows[k], offset));
    const int64_t bytes = kBlockRow<E> ? elements / kBlockSize * (int64_t)sizeof(E) : elements * (int64_t)sizeof(E);
    for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(first + line);
  }
}

// One query's score against one key: a single chain, then a horizontal sum. For the last keys of
// a call, fewer than kWidth, where a block of dot_keys would be mostly padding. reduce_add adds
// in sum_each's order, so a key's score has the same bits either way: a query sees the same
// scores whatever the call's key count.
template <class V, typename E>
float dot(const float* q, const E* row, int64_t head_dim, int64_t full) {
  typename V::T acc = V::zero();
  for (int64_t e = 0; e < full; e += V::kWidth) acc = V::fma(V::load(q + e), load_kv<V>(row, e), acc);
  if constexpr (!kBlockRow<E>)
    if (full < head_dim)
      acc = V::fma(load_partial<V>(q + full, head_dim - full, 0.0f), load_partial<V>(row + full, head_dim - full, 0.0f), acc);
  return V::reduce_add(acc);
}

// Scores of every query against keys j0 .. j0 + kWidth - 1, times the scale, into each query's
// row of scratch. With several queries the keys are widened to f32 once, into `tile`: for each
// vector e of head_dim, kWidth vectors, one per key (zero past head_dim). A single query reads
// them where they are. A score's arithmetic depends only on its query, its key and where the key
// lies among the call's keys, so a query gets the same bits in any company.
template <class V, typename E>
void scores(const AttendArgs& a, int64_t j0, float* tile) {
  constexpr int W = V::kWidth;
  const int64_t head_dim = a.head_dim, full = head_dim / W * W;
  const typename V::T scale = V::set1(a.scale);
  if (a.n_q == 1) {
    const E* rows[W];
    for (int k = 0; k < W; ++k) rows[k] = kv_row<E>(a.keys[j0 + k], a.offset);
    const auto key = [&](int k, int64_t e) {
      if constexpr (!kBlockRow<E>)
        if (e >= full) return load_partial<V>(rows[k] + e, head_dim - e, 0.0f);
      return load_kv<V>(rows[k], e);
    };
    V::store(a.scratch + j0, V::mul(dot_keys<V>(a.q, head_dim, full, key), scale));
    return;
  }
  for (int64_t k = 0; k < W; ++k) {
    float* t = tile + k * W;
    const E* row = kv_row<E>(a.keys[j0 + k], a.offset);
    for (int64_t e = 0; e < full; e += W) V::store(t + e * W, load_kv<V>(row, e));
    if constexpr (!kBlockRow<E>)
      if (full < head_dim) V::store(t + full * W, load_partial<V>(row + full, head_dim - full, 0.0f));
  }
  const auto key = [tile](int k, int64_t e) { return V::load(tile + (e + k) * W); };
  for (int64_t i = 0; i < a.n_q; ++i)
    V::store(a.scratch + i * a.n_keys + j0, V::mul(dot_keys<V>(a.q + i * a.q_stride, head_dim, full, key), scale));
}

// For Q queries at once, out_i[0 .. NV*kWidth) = inv_sum_i * sum_j weights_i[j] *
// values[j][offset + first ..): each value vector is loaded (widened) once for all Q queries, and
// the accumulators stay in registers across all keys. Query i's weights are at
// weights + i * weight_stride; its sums are the same bits as it would get alone.
template <class V, typename E, int NV, int Q>
void weighted_sums(const float* weights, int64_t weight_stride, const void* const* values, int64_t offset,
                   int64_t first, int64_t n_keys, const float* inv_sums, float* out, int64_t out_stride) {
  constexpr int W = V::kWidth;
  typename V::T acc[Q][NV];
  for (int i = 0; i < Q; ++i)
    for (int u = 0; u < NV; ++u) acc[i][u] = V::zero();
  for (int64_t j = 0; j < n_keys; ++j) {
    if (j + kRowsAhead < n_keys) prefetch_rows<E>(values + j + kRowsAhead, 1, offset + first, NV * W);
    const E* row = kv_row<E>(values[j], offset);
    typename V::T v[NV];
    for (int u = 0; u < NV; ++u) v[u] = load_kv<V>(row, first + u * W);
    for (int i = 0; i < Q; ++i) {
      const typename V::T p = V::set1(weights[i * weight_stride + j]);
      for (int u = 0; u < NV; ++u) acc[i][u] = V::fma(p, v[u], acc[i][u]);
    }
  }
  for (int i = 0; i < Q; ++i)
    for (int u = 0; u < NV; ++u) V::store(out + i * out_stride + u * W, V::mul(acc[i][u], V::set1(inv_sums[i])));
}

// Queries sharing one value load: as many as leave registers for the NV values and a weight.
template <class V, int NV>
constexpr int kQueriesPerPass = (V::kRegisters - NV - 2) / NV < 8 ? (V::kRegisters - NV - 2) / NV : 8;

// weighted_sums for n_q queries in passes of kQueriesPerPass, the last pass as wide as is left.
template <class V, typename E, int NV, int Q = kQueriesPerPass<V, NV>>
void weighted_sums_all(int64_t n_q, const float* weights, int64_t weight_stride, const void* const* values,
                       int64_t offset, int64_t first, int64_t n_keys, const float* inv_sums, float* out,
                       int64_t out_stride) {
  if constexpr (Q > 1) {
    if (n_q < Q) {
      weighted_sums_all<V, E, NV, Q - 1>(n_q, weights, weight_stride, values, offset, first, n_keys, inv_sums, out,
                                         out_stride);
      return;
    }
  }
  for (int64_t i = 0; i + Q <= n_q; i += Q)
    weighted_sums<V, E, NV, Q>(weights + i * weight_stride, weight_stride, values, offset, first, n_keys,
                               inv_sums + i, out + i * out_stride, out_stride);
  if (n_q % Q)
    weighted_sums_all<V, E, NV>(n_q % Q, weights + n_q / Q * Q * weight_stride, weight_stride, values, offset, first,
                                n_keys, inv_sums + n_q / Q * Q, out + n_q / Q * Q * out_stride, out_stride);
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
  float* inv_sums = a.scratch + a.n_q * n_keys;
  float* tile = inv_sums + a.n_q;
  const int64_t blocks_end = n_keys / W * W;
  for (int64_t j0 = 0; j0 < blocks_end; j0 += W) {
    prefetch_rows<E>(a.keys + j0 + W, (n_keys - j0 - W < W ? n_keys - j0 - W : W), a.offset, head_dim);
    scores<V, E>(a, j0, tile);
  }
  for (int64_t j = blocks_end; j < n_keys; ++j) {
    const E* key = kv_row<E>(a.keys[j], a.offset);
    for (int64_t i = 0; i < a.n_q; ++i)
      a.scratch[i * n_keys + j] = dot<V>(a.q + i * a.q_stride, key, head_dim, head_dim / W * W) * a.scale;
  }
  // Softmax numerators in place, row by row, over the keys the query sees; the division by their
  // sum is folded into the output. Keys it does not see get weight 0: adding 0 * v leaves a sum's
  // bits as they are, so the value sums below may run over every key for every query.
  for (int64_t i = 0; i < a.n_q; ++i) {
    float* s = a.scratch + i * n_keys;
    const int64_t seen = a.key_counts ? a.key_counts[i] : n_keys;
    const int64_t full = seen / W * W;
    typename V::T vmax = V::set1(-INFINITY);
    for (int64_t j = 0; j < full; j += W) vmax = V::max(vmax, V::load(s + j));
    float max = V::reduce_max(vmax);
    for (int64_t j = full; j < seen; ++j) max = s[j] > max ? s[j] : max;
    const typename V::T vm = V::set1(max);
    typename V::T vsum = V::zero();
    for (int64_t j = 0; j < full; j += W) {
      const typename V::T e = exp_nonpositive<V>(V::sub(V::load(s + j), vm));
      V::store(s + j, e);
      vsum = V::add(vsum, e);
    }
    if (full < seen) {
      const int64_t n = seen - full;
      const typename V::T e =
          exp_nonpositive<V>(V::sub(load_partial<V>(s + full, n, -INFINITY), vm));
      store_partial<V>(s + full, e, n);
    }
    float sum = V::reduce_add(vsum);
    for (int64_t j = full; j < seen; ++j) sum += s[j];
    for (int64_t j = seen; j < n_keys; ++j) s[j] = 0.0f;
    inv_sums[i] = 1.0f / sum;
  }
  const float* weights = a.scratch;
  int64_t d = 0;
  for (; d + 4 * W <= head_dim; d += 4 * W)
    weighted_sums_all<V, E, 4>(a.n_q, weights, n_keys, a.values, a.offset, d, n_keys, inv_sums, a.out + d, a.out_stride);
  switch ((head_dim - d) / W) {
    case 3: weighted_sums_all<V, E, 3>(a.n_q, weights, n_keys, a.values, a.offset, d, n_keys, inv_sums, a.out + d, a.out_stride); break;
    case 2: weighted_sums_all<V, E, 2>(a.n_q, weights, n_keys, a.values, a.offset, d, n_keys, inv_sums, a.out + d, a.out_stride); break;
    case 1: weighted_sums_all<V, E, 1>(a.n_q, weights, n_keys, a.values, a.offset, d, n_keys, inv_sums, a.out + d, a.out_stride); break;
    default: break;
  }
  d += (head_dim - d) / W * W;
  if constexpr (!kBlockRow<E>)
    if (d < head_dim)
      for (int64_t i = 0; i < a.n_q; ++i)
        weighted_sum_tail<V, E>(a.scratch + i * n_keys, a.values, a.offset + d, n_keys, inv_sums[i], head_dim - d,
                                a.out + i * a.out_stride + d);
}

template <class V>
void attend(const AttendArgs& a) {
  static_assert(V::kWidth <= 16, "attend_scratch_floats has room for a tile of 16 keys");
  switch (a.kv_type) {
    case DType::F16: attend_as<V, uint16_t>(a); break;
    case DType::Q8_0: attend_as<V, BlockQ8_0>(a); break;
    default: attend_as<V, float>(a); break;
  }
}

// quantize_row(F16)'s bytes for n floats: whole vectors, then the tail through a padded one.
// fp32_to_fp16 itself is not called here: an out-of-line copy compiled with the including file's
// flags could serve the whole program.
template <class V>
void to_f16(const float* x, uint16_t* out, int64_t n) {
  constexpr int W = V::kWidth;
  int64_t i = 0;
  for (; i + W <= n; i += W) V::store_f16(out + i, V::load(x + i));
  if (i < n) {
    uint16_t halves[W];
    V::store_f16(halves, load_partial<V>(x + i, n - i, 0.0f));
    std::memcpy(out + i, halves, (n - i) * sizeof(uint16_t));
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
