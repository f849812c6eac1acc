// AVX2 + FMA + F16C backend. One 32-element block is one 256-bit vector of bytes; int8 products
// use maddubs (u8 x s8 -> pairs in i16) then madd (-> i32), so they are exact.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/simd.h"
#include "kernels/backend.h"

namespace octet::kernels {

namespace {

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Same arithmetic as the scalar quantizer (a true division, ties to even), so the same bytes.
void quantize_act(const float* x, BlockQ8A* out, int64_t k, int32_t* sums) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i byte_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < k / kBlockSize; ++b, x += kBlockSize) {
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
    const __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
                                      _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
    const float d = hmax(amax) / 127.0f;
    out[b].d = d;
    if (d == 0) {
      store_zero_block(out[b], sums ? sums + b : nullptr);
      continue;
    }
    const __m256 vd = _mm256_set1_ps(d);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
      q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_div_ps(v[i], vd), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const int32_t sum = hsum(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    // The packs interleave 128-bit lanes; the permute restores element order.
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i*)out[b].qs, _mm256_permutevar8x32_epi32(bytes, byte_order));
    out[b].s = d * (float)sum;
    if (sums) sums[b] = sum;
  }
}

template <DType T>
using BlockOf = std::conditional_t<T == DType::Q8_0, BlockQ8_0,
                                   std::conditional_t<T == DType::Q4_0, BlockQ4_0, BlockQ4_1>>;

// A Q4 block's 32 nibbles as bytes in element order (low nibbles are elements 0..15).
__m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i packed = _mm_loadu_si128((const __m128i*)qs);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0f));
}

// The block's weights as bytes: signed for Q8_0 and Q4_0 (q - 8), unsigned nibbles for Q4_1.
template <DType T>
__m256i load_weights(const BlockOf<T>& blk) {
  if constexpr (T == DType::Q8_0) return _mm256_loadu_si256((const __m256i*)blk.qs);
  else if constexpr (T == DType::Q4_0) return _mm256_sub_epi8(unpack_nibbles(blk.qs), _mm256_set1_epi8(8));
  else return unpack_nibbles(blk.qs);
}

// Every tile height adds in the same order (same U for every R), so a row's result does not
// depend on how many rows share its tile: M = 1 and M > 1 give the same bits, which the engine's
// token-by-token == batch check needs (the next layer's int8 rounding amplifies any difference).

// Dot products of one weight row with R activation rows at once: each weight block is loaded and
// unpacked once per tile. Two accumulators per row hide the FMA latency.
template <DType T, int R>
void dot_tile_q(const void* w, const void* x, size_t x_stride, int64_t k, float* y, int64_t ldy) {
  constexpr int U = 2;
  const BlockOf<T>* wb = static_cast<const BlockOf<T>*>(w);
  const BlockQ8A* xb[R];
  for (int r = 0; r < R; ++r) xb[r] = reinterpret_cast<const BlockQ8A*>(static_cast<const char*>(x) + r * x_stride);
  __m256 acc[R][U];
  float min_acc[R];  // Q4_1: sum of m * s
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_ps();
    min_acc[r] = 0;
  }
  const __m256i ones = _mm256_set1_epi16(1);
  auto step = [&](int64_t b, int u) __attribute__((always_inline)) {
    const __m256i wq = load_weights<T>(wb[b]);
    // maddubs takes u8 x s8: signed weights give their sign to the activation, w x = |w| sign(x, w).
    // Pair sums stay within i16: 2 * 128 * 127 < 32768.
    const __m256i wu = T == DType::Q4_1 ? wq : _mm256_sign_epi8(wq, wq);
    const float dw = _cvtsh_ss(wb[b].d);
    for (int r = 0; r < R; ++r) {
      const __m256i xq = _mm256_loadu_si256((const __m256i*)xb[r][b].qs);
      const __m256i xs = T == DType::Q4_1 ? xq : _mm256_sign_epi8(xq, wq);
      const __m256i sumi = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xs), ones);
      acc[r][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(dw * xb[r][b].d), acc[r][u]);
      if constexpr (T == DType::Q4_1) min_acc[r] += _cvtsh_ss(wb[b].m) * xb[r][b].s;
    }
  };
  const int64_t nb = k / kBlockSize;
  int64_t b = 0;
  for (; b + U <= nb; b += U)
    for (int u = 0; u < U; ++u) step(b + u, u);
  for (; b < nb; ++b) step(b, 0);
  for (int r = 0; r < R; ++r) {
    __m256 sum = acc[r][0];
    for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[r][u]);
    y[r * ldy] = hsum(sum) + min_acc[r];
  }
}

__m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
float load1(const float* p) { return *p; }
float load1(const uint16_t* p) { return _cvtsh_ss(*p); }

// F16 / F32 weights against f32 activations; k need not be a multiple of 8. Four accumulators per
// row for every R (same order of additions for every tile height); R is at most 2 here, taller
// tiles go two rows at a time (see by_rows) so the 16 ymm registers suffice.
template <typename W, int R>
void dot_tile_f(const void* w, const void* x, size_t x_stride, int64_t k, float* y, int64_t ldy) {
  static_assert(R <= 2);
  constexpr int U = 4;
  const W* wr = static_cast<const W*>(w);
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = reinterpret_cast<const float*>(static_cast<const char*>(x) + r * x_stride);
  __m256 acc[R][U];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_ps();
  auto step = [&](int64_t i, int u) __attribute__((always_inline)) {
    const __m256 wv = load8(wr + i);
    for (int r = 0; r < R; ++r) acc[r][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xr[r] + i), acc[r][u]);
  };
  int64_t i = 0;
  for (; i + 8 * U <= k; i += 8 * U)
    for (int u = 0; u < U; ++u) step(i + 8 * u, u);
  for (; i + 8 <= k; i += 8) step(i, 0);
  for (int r = 0; r < R; ++r) {
    __m256 sum = acc[r][0];
    for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[r][u]);
    float tail = 0;
    for (int64_t j = i; j < k; ++j) tail += load1(wr + j) * xr[r][j];
    y[r * ldy] = hsum(sum) + tail;
  }
}

// ---- Packed weights (kernels.h, PackedWeights). A 64-byte chunk of a group is two 256-bit
// halves, rows 0-7 and rows 8-15, whose 8 int32 lanes are 8 outputs: maddubs (u8 x s8 -> i16
// pairs) and madd with ones (-> i32) add the 4 products of a lane, and a broadcast 4-byte group
// of activations feeds every lane. maddubs saturates its pair sums at 32767, so:
//   Q8_0: the signed weight w = stored ^ 0x80 gives its sign to the activation, w x = |w| sign(x, w):
//         a pair is at most 2 * 128 * 127 = 32512, so it goes to i32 (madd) at once;
//   Q4_0: nibbles (0..15) times |x| <= 127 make pairs of at most 3810, so the 8 pair sums of a
//         block that land in one i16 lane (at most 30480) add up there, and one madd per block
//         widens them; the correction -8 sum(x) then removes the nibbles' offset.
// The int32 sums are exact and the float steps are the reference's (convert, dw * dx, fma in
// block order), so the bits are the reference's.

inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

template <DType T, int R>
void packed_tile(const uint8_t* group, size_t quant_offset, int64_t nb, const BlockQ8A* x, const int32_t* corr,
                 float* y, int64_t ldy) {
  constexpr size_t kQb = T == DType::Q8_0 ? 512 : 256;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(group);
  const uint8_t* quants = group + quant_offset;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* q = quants + b * kQb;
    // Integer arithmetic: see kPrefetchBytes.
    for (size_t line = 0; line < kQb; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(q) + kPrefetchBytes + line), _MM_HINT_T1);
    __m256i s[R][2];
    if constexpr (T == DType::Q8_0) {
      for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = _mm256_setzero_si256();
      for (int c = 0; c < 8; ++c) {
        for (int h = 0; h < 2; ++h) {
          const __m256i w = _mm256_xor_si256(_mm256_load_si256((const __m256i*)(q + 64 * c + 32 * h)),
                                             _mm256_set1_epi8((char)0x80));
          const __m256i w_abs = _mm256_abs_epi8(w);
          for (int r = 0; r < R; ++r) {
            const __m256i xs = _mm256_sign_epi8(broadcast4(x[r * nb + b].qs + 4 * c), w);
            s[r][h] = _mm256_add_epi32(s[r][h], _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, xs), ones));
          }
        }
      }
    } else {
      __m256i pairs[R][2];
      for (int r = 0; r < R; ++r) pairs[r][0] = pairs[r][1] = _mm256_setzero_si256();
      const __m256i mask = _mm256_set1_epi8(0x0f);
      for (int p = 0; p < 4; ++p) {
        for (int h = 0; h < 2; ++h) {
          const __m256i v = _mm256_load_si256((const __m256i*)(q + 64 * p + 32 * h));
          const __m256i low = _mm256_and_si256(v, mask);
          const __m256i high = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
          for (int r = 0; r < R; ++r) {
            const int8_t* xq = x[r * nb + b].qs;
            const __m256i low_pairs = _mm256_maddubs_epi16(low, broadcast4(xq + 4 * p));
            const __m256i high_pairs = _mm256_maddubs_epi16(high, broadcast4(xq + 16 + 4 * p));
            pairs[r][h] = _mm256_add_epi16(pairs[r][h], _mm256_add_epi16(low_pairs, high_pairs));
          }
        }
      }
      for (int r = 0; r < R; ++r)
        for (int h = 0; h < 2; ++h)
          s[r][h] = _mm256_add_epi32(_mm256_set1_epi32(corr[r * nb + b]), _mm256_madd_epi16(pairs[r][h], ones));
    }
    __m256 dw[2];
    for (int h = 0; h < 2; ++h)
      dw[h] = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(scales + b * kPackRows + 8 * h)));
    for (int r = 0; r < R; ++r) {
      const __m256 dx = _mm256_set1_ps(x[r * nb + b].d);
      for (int h = 0; h < 2; ++h)
        acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][h]), _mm256_mul_ps(dw[h], dx), acc[r][h]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(y + r * ldy + 8 * h, acc[r][h]);
}

template <DType T>
constexpr PackedTileFn kPackedTile =
    packed_by_rows<packed_tile<T, 1>, packed_tile<T, 2>, packed_tile<T, 3>, packed_tile<T, 4>>;

struct Vec8 {
  using T = __m256;
  static constexpr int kWidth = 8;
  static constexpr int kRegisters = 16;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float f) { return _mm256_set1_ps(f); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T load(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
  static T load(const int8_t* p, uint16_t scale) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))),
                         _mm256_set1_ps(_cvtsh_ss(scale)));
  }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T if_negative(T v, T a, T b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ)); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T round(T v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T scale2(T v, T n) {
    const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(v, _mm256_castsi256_ps(exponent));
  }
  static float reduce_add(T v) { return hsum(v); }  // lanes l and l + 4, 2, 1: sum_each's order
  static float reduce_max(T v) { return hmax(v); }
  // F16C rounds to nearest even, as fp32_to_fp16; only a NaN's payload differs, so NaNs are
  // rewritten as the reference writes them: quiet, payload 0x200, sign kept.
  static void store_f16(uint16_t* p, T v) {
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i nan32 = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m128i nan = _mm_packs_epi32(_mm256_castsi256_si128(nan32), _mm256_extracti128_si256(nan32, 1));
    const __m128i quiet = _mm_or_si128(_mm_and_si128(h, _mm_set1_epi16((short)0x8000)), _mm_set1_epi16(0x7e00));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_blendv_epi8(h, quiet, nan));
  }
  // Three rounds, each adding every vector's lanes l and l + half (half = 4, 2, 1) and packing two
  // vectors' sums into one; the last leaves vector 2s + r at lane 4r + s, put back in order.
  static T sum_each(const T* v) {
    T a[4], b[2];
    for (int m = 0; m < 4; ++m)
      a[m] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * m], v[2 * m + 1], 0x20),
                           _mm256_permute2f128_ps(v[2 * m], v[2 * m + 1], 0x31));
    for (int m = 0; m < 2; ++m)
      b[m] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a[2 * m]), _mm256_castps_pd(a[2 * m + 1]))),
                           _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a[2 * m]), _mm256_castps_pd(a[2 * m + 1]))));
    const T c = _mm256_add_ps(_mm256_shuffle_ps(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm256_shuffle_ps(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  }
};

template <DType T>
constexpr DotTileFn kTileQ = by_rows<dot_tile_q<T, 1>, dot_tile_q<T, 2>, dot_tile_q<T, 3>, dot_tile_q<T, 4>>;
// Rows 0-1 as one tile, then the rest: a row's additions do not depend on its neighbours.
template <TileR Head, TileR Rest>
void split2(const void* w, const void* x, size_t x_stride, int64_t k, float* y, int64_t ldy) {
  Head(w, x, x_stride, k, y, ldy);
  Rest(w, static_cast<const char*>(x) + 2 * x_stride, x_stride, k, y + 2 * ldy, ldy);
}
template <typename W>
constexpr DotTileFn kTileF = by_rows<dot_tile_f<W, 1>, dot_tile_f<W, 2>, split2<dot_tile_f<W, 2>, dot_tile_f<W, 1>>,
                                     split2<dot_tile_f<W, 2>, dot_tile_f<W, 2>>>;

}  // namespace

const Backend& avx2_backend() {
  static const Backend backend = {
      "avx2",
      quantize_act,
      {kTileF<float>, kTileF<uint16_t>, kTileQ<DType::Q8_0>, kTileQ<DType::Q4_0>, kTileQ<DType::Q4_1>},
      {},
      simd::attend<Vec8>,
      simd::sum_exp<Vec8>,
      simd::silu<Vec8>,
      simd::to_f16<Vec8>,
      {nullptr, nullptr, kPackedTile<DType::Q8_0>, kPackedTile<DType::Q4_0>, nullptr},
  };
  return backend;
}

}  // namespace octet::kernels
