// AVX-512 (F, BW, VL, VNNI) backend. Two 32-element blocks fill one 512-bit vector; int8
// products use vpdpbusd (u8 x s8, four products summed into each i32 lane), so they are exact.
// GCC 12's AVX-512 intrinsics self-initialise their "undefined" vectors and then warn about it
// wherever they are inlined (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <array>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/backend.h"
#include "kernels/packed.h"
#include "kernels/simd.h"

namespace octet::kernels {

namespace {

// Same arithmetic as the scalar quantizer (a true division, ties to even), so the same bytes.
void quantize_act(const float* x, BlockQ8A* out, int64_t k, int32_t* sums) {
  for (int64_t b = 0; b < k / kBlockSize; ++b, x += kBlockSize) {
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    const float d = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1))) / 127.0f;
    out[b].d = d;
    if (d == 0) {
      store_zero_block(out[b], sums ? sums + b : nullptr);
      continue;
    }
    const __m512 vd = _mm512_set1_ps(d);
    constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_div_ps(v0, vd), kNearest));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_div_ps(v1, vd), kNearest));
    _mm_storeu_si128((__m128i*)out[b].qs, _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128((__m128i*)(out[b].qs + 16), _mm512_cvtsepi32_epi8(q1));
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    out[b].s = d * (float)sum;
    if (sums) sums[b] = sum;
  }
}

template <DType T>
using BlockOf = std::conditional_t<T == DType::Q8_0, BlockQ8_0,
                                   std::conditional_t<T == DType::Q4_0, BlockQ4_0, BlockQ4_1>>;

// The 32 bytes at a, then the 32 at b.
__m512i load_pair(const int8_t* a, const int8_t* b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)a)),
                            _mm256_loadu_si256((const __m256i*)b), 1);
}

// Two Q4 blocks' nibbles as bytes in element order: 128-bit lanes [a low, a high, b low, b high].
__m512i unpack_nibbles_pair(const uint8_t* a, const uint8_t* b) {
  const __m256i packed = _mm256_set_m128i(_mm_loadu_si128((const __m128i*)b), _mm_loadu_si128((const __m128i*)a));
  const __m512i dup = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), _mm512_castsi256_si512(packed));
  const __m512i high_in_odd_lanes = _mm512_mask_srli_epi16(dup, 0xff00ff00u, dup, 4);
  return _mm512_and_si512(high_in_odd_lanes, _mm512_set1_epi8(0x0f));
}

// Two blocks' weights as bytes: signed for Q8_0, the unsigned nibbles for Q4_0 and Q4_1.
template <DType T>
__m512i load_weight_pair(const BlockOf<T>& a, const BlockOf<T>& b) {
  if constexpr (T == DType::Q8_0) return load_pair(a.qs, b.qs);
  else return unpack_nibbles_pair(a.qs, b.qs);
}

// Low 8 lanes a, high 8 lanes b: the per-block scales of a block pair.
__m512 pair_scales(float a, float b) { return _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(a), _mm512_set1_ps(b)); }

// Every output is computed by the same sequence of operations whatever the tile (weight rows x
// activation rows) it lands in, so a row's result does not depend on how many rows share its
// tile: M = 1 and M > 1 give the same bits, which the engine's token-by-token == batch check needs
// (the next layer's int8 rounding amplifies any difference). Per output and block pair:
//   lanes = exact int32 sums of 4 products (vpdpbusd), acc = fma(float(lanes), dw * dx, acc),
// in block order, then one fixed horizontal sum (+ the Q4_1 minimum terms, summed in order).
//
// vpdpbusd multiplies u8 by s8. The signed-by-signed products are made exact with an offset
// folded into the accumulator's starting value, computed once per weight block pair (Q8_0:
// x + 128 times w, minus 128 * sum(w)) or once per activation block pair (Q4_0: nibble q times
// x, minus 8 * sum(x)); Q4_1's nibbles are unsigned already. So the work per (weight row,
// activation row, block pair) is one vpdpbusd, one convert, one multiply and one fma, and a tile
// of RW weight rows x R activation rows loads each weight block RW x fewer times per output.
template <DType T, int RW, int R>
void dot_block_q(const void* w, size_t w_stride, const void* x, size_t x_stride, int64_t k, float* y, int64_t ldy) {
  const BlockOf<T>* wb[RW];
  for (int i = 0; i < RW; ++i) wb[i] = reinterpret_cast<const BlockOf<T>*>(static_cast<const char*>(w) + i * w_stride);
  const BlockQ8A* xb[R];
  for (int r = 0; r < R; ++r) xb[r] = reinterpret_cast<const BlockQ8A*>(static_cast<const char*>(x) + r * x_stride);
  __m512 acc[RW][R];
  float min_acc[RW][R];  // Q4_1: sum of m * s
  for (int i = 0; i < RW; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps(), min_acc[i][r] = 0;
  // Blocks b0 and b1; for a lone last block b1 == b0 and its second copy gets scale 0. A plain
  // loop (no lambda) so that the accumulators stay in registers.
  const int64_t nb = k / kBlockSize;
  for (int64_t b0 = 0; b0 < nb; b0 += 2) {
    const bool pair = b0 + 1 < nb;
    const int64_t b1 = pair ? b0 + 1 : b0;
    __m512i xa[R], xinit[R];
    __m512 dx[R];
    for (int r = 0; r < R; ++r) {
      const __m512i xq = load_pair(xb[r][b0].qs, xb[r][b1].qs);
      if constexpr (T == DType::Q8_0) {
        xa[r] = _mm512_xor_si512(xq, _mm512_set1_epi8((char)0x80));  // x + 128 as u8
      } else {
        xa[r] = xq;
        if constexpr (T == DType::Q4_0)
          xinit[r] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), xq));
      }
      dx[r] = pair_scales(xb[r][b0].d, xb[r][b1].d);
    }
    for (int i = 0; i < RW; ++i) {
      const __m512i wq = load_weight_pair<T>(wb[i][b0], wb[i][b1]);
      const __m512 dw = pair_scales(_cvtsh_ss(wb[i][b0].d), pair ? _cvtsh_ss(wb[i][b1].d) : 0.0f);
      __m512i winit = _mm512_setzero_si512();
      if constexpr (T == DType::Q8_0)
        winit = _mm512_sub_epi32(winit, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), wq));
      for (int r = 0; r < R; ++r) {
        __m512i sumi;
        if constexpr (T == DType::Q8_0) sumi = _mm512_dpbusd_epi32(winit, xa[r], wq);
        else if constexpr (T == DType::Q4_0) sumi = _mm512_dpbusd_epi32(xinit[r], wq, xa[r]);
        else sumi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, xa[r]);
        acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_mul_ps(dw, dx[r]), acc[i][r]);
        if constexpr (T == DType::Q4_1) {
          min_acc[i][r] += _cvtsh_ss(wb[i][b0].m) * xb[r][b0].s;
          if (pair) min_acc[i][r] += _cvtsh_ss(wb[i][b1].m) * xb[r][b1].s;
        }
      }
    }
  }
  for (int i = 0; i < RW; ++i)
    for (int r = 0; r < R; ++r) y[r * ldy + i] = _mm512_reduce_add_ps(acc[i][r]) + min_acc[i][r];
}

template <DType T, int R>
void dot_tile_q(const void* w, const void* x, size_t x_stride, int64_t k, float* y, int64_t ldy) {
  dot_block_q<T, 1, R>(w, 0, x, x_stride, k, y, ldy);
}

// kWeightRows weight rows at once, or one at a time for the last few. GEMV (R = 1) reads weights
// from memory, where one row at a time streams measured 2x faster than four interleaved rows.
template <DType T, int R>
void dot_block_rows(const void* w, size_t w_stride, int wrows, const void* x, size_t x_stride, int64_t k, float* y,
                    int64_t ldy) {
  static_assert(kWeightRows == 4);
  if (R > 1 && wrows == 4) return dot_block_q<T, 4, R>(w, w_stride, x, x_stride, k, y, ldy);
  for (int i = 0; i < wrows; ++i)
    dot_block_q<T, 1, R>(static_cast<const char*>(w) + i * w_stride, 0, x, x_stride, k, y + i, ldy);
}

template <DType T>
void dot_block(const void* w, size_t w_stride, int wrows, const void* x, size_t x_stride, int rows, int64_t k, float* y,
               int64_t ldy) {
  static_assert(kTileRows == 4);
  switch (rows) {
    case 1: dot_block_rows<T, 1>(w, w_stride, wrows, x, x_stride, k, y, ldy); break;
    case 2: dot_block_rows<T, 2>(w, w_stride, wrows, x, x_stride, k, y, ldy); break;
    case 3: dot_block_rows<T, 3>(w, w_stride, wrows, x, x_stride, k, y, ldy); break;
    default: dot_block_rows<T, 4>(w, w_stride, wrows, x, x_stride, k, y, ldy); break;
  }
}

// 16 weights as f32; lanes outside mask read nothing and are 0.
__m512 load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
__m512 load16(const uint16_t* p, __mmask16 mask) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p)); }

// F16 / F32 weights against f32 activations; the k % 16 tail uses masked loads.
// Four accumulators per row for every R (16 of the 32 zmm registers at R = 4).
template <typename W, int R>
void dot_tile_f(const void* w, const void* x, size_t x_stride, int64_t k, float* y, int64_t ldy) {
  constexpr int U = 4;
  const W* wr = static_cast<const W*>(w);
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = reinterpret_cast<const float*>(static_cast<const char*>(x) + r * x_stride);
  __m512 acc[R][U];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_ps();
  auto step = [&](int64_t i, __mmask16 mask, int u) __attribute__((always_inline)) {
    const __m512 wv = load16(wr + i, mask);
    for (int r = 0; r < R; ++r) acc[r][u] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, xr[r] + i), acc[r][u]);
  };
  int64_t i = 0;
  for (; i + 16 * U <= k; i += 16 * U)
    for (int u = 0; u < U; ++u) step(i + 16 * u, 0xffff, u);
  for (; i + 16 <= k; i += 16) step(i, 0xffff, 0);
  if (i < k) step(i, (__mmask16)((1u << (k - i)) - 1), 0);
  for (int r = 0; r < R; ++r) {
    __m512 sum = acc[r][0];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[r][u]);
    y[r * ldy] = _mm512_reduce_add_ps(sum);
  }
}

// ---- Packed weights (kernels.h, PackedWeights). The 16 int32 lanes of a vector are the 16
// weight rows of a group, so per block and activation row the work is: one
// broadcast of the block's offset correction, 8 vpdpbusd (u8 weights x a broadcast 4-byte group
// of s8 activations), one convert, one multiply (16 weight scales x the activation scale) and one
// fma; a tile's 16 outputs per activation row leave with one store, no horizontal sums.
// Same bits as packed.cpp's reference: the int32 sums are exact, and the float operations
// (convert, dw * dx, fma in block order) are the reference's, lane by lane.

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// R >= 2 activation rows against one group (one row is packed_gemv's). Q8_0: the 8 weight chunks
// of a block are loaded once and reused by every row. Q4_0: the 4 vectors are split into low
// (elements 4p..) and high (16+4p..) nibbles. Each row's block sum runs as two interleaved chains
// (even / odd chunks), added at the end: integer, so the same value as one chain. On a Zen 4 VM,
// which runs a 512-bit vpdpbusd as two halves, two chains at R = 4 gave Q8_0 162 -> 169 GMAC/s
// at M = 512 (about one vpdpbusd per cycle, its peak there; Q4_0 unchanged). On the earlier VM
// (236-285 GMAC/s per core) they were no faster than one chain, nor were tiles of 6 or 8 rows.
template <DType T, int R>
void packed_tile(const uint8_t* group, size_t quant_offset, int64_t nb, const BlockQ8A* x, const int32_t* corr,
                 float* y, int64_t ldy) {
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(group);
  const uint8_t* quants = group + quant_offset;
  constexpr size_t kQb = T == DType::Q8_0 ? 512 : 256;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* q = quants + b * kQb;
    __m512i w[8];  // w[c]: the bytes that multiply activation bytes 4c..4c+3
    if constexpr (T == DType::Q8_0) {
      for (int c = 0; c < 8; ++c) w[c] = _mm512_load_si512(q + 64 * c);
    } else {
      const __m512i mask = _mm512_set1_epi8(0x0f);
      for (int p = 0; p < 4; ++p) {
        const __m512i v = _mm512_load_si512(q + 64 * p);
        w[p] = _mm512_and_si512(v, mask);
        w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
      }
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(scales + b * kPackRows)));
    if (b + 4 < nb) _mm_prefetch(reinterpret_cast<const char*>(scales + (b + 4) * kPackRows), _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const BlockQ8A& xb = x[r * nb + b];
      __m512i s0 = _mm512_set1_epi32(corr[r * nb + b]), s1 = _mm512_setzero_si512();
      for (int c = 0; c < 8; c += 2) {
        s0 = _mm512_dpbusd_epi32(s0, w[c], broadcast4(xb.qs + 4 * c));
        s1 = _mm512_dpbusd_epi32(s1, w[c + 1], broadcast4(xb.qs + 4 * c + 4));
      }
      const __m512i s = _mm512_add_epi32(s0, s1);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(xb.d)), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * ldy, acc[r]);
}

// GEMV (one activation row) against G (1, 2 or kGemvGroups = 4) groups at once: each activation
// broadcast serves 16 G rows, 2 G independent int32 chains keep the vpdpbusd units busy, and G
// streams of weights are in flight. 4 streams per thread over 2, paired decode runs on the Zen 4
// VM: TinyLlama shape q8_0 +7%, q4_0 +5%, SmolLM2 q8_0 +3%, q4_0 +0%; 8 was no better. Q4_0's
// high nibbles are masked in place (16 q) instead of shifted down: their exact int32 sum, a
// multiple of 16, is shifted once per block. Per lane the operations of packed_tile (exact int32
// block sums, then convert, dw * dx, fma), so the reference's bits.
template <DType T, int G>
void packed_gemv(const uint8_t* group, size_t group_bytes, size_t quant_offset, int64_t nb, const BlockQ8A* x,
                 const int32_t* corr, float* y) {
  constexpr size_t kQb = T == DType::Q8_0 ? 512 : 256;
  const uint8_t* groups[G];
  __m512 acc[G];
  for (int g = 0; g < G; ++g) groups[g] = group + g * group_bytes, acc[g] = _mm512_setzero_ps();
  const __m512i mask_low = _mm512_set1_epi8(0x0f), mask_high = _mm512_set1_epi8((char)0xf0);
  // Each group is its own stream: it prefetches its block kPrefetchBytes ahead, which past its end
  // is the same block of the group G further on (the next call's), and that group's scales. A
  // plain address + kPrefetchBytes would land in the neighbouring group this call reads already.
  // Integer arithmetic: see kPrefetchBytes.
  constexpr int64_t kAhead = kPrefetchBytes / kQb;
  int64_t ahead_block = kAhead % nb;
  uintptr_t ahead_groups = (kAhead / nb) * G * group_bytes;
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ8A& xb = x[b];
    for (int g = 0; g < G; ++g) {
      const uintptr_t stream = reinterpret_cast<uintptr_t>(groups[g]);
      for (size_t line = 0; line < kQb; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(stream + ahead_groups + quant_offset + ahead_block * kQb + line),
                     _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(stream + G * group_bytes + b * kPackRows * sizeof(uint16_t)),
                   _MM_HINT_T1);
    }
    if (++ahead_block == nb) ahead_block = 0, ahead_groups += G * group_bytes;
    __m512i s[G];
    if constexpr (T == DType::Q8_0) {
      __m512i even[G], odd[G];
      for (int g = 0; g < G; ++g) even[g] = _mm512_set1_epi32(corr[b]), odd[g] = _mm512_setzero_si512();
      for (int c = 0; c < 8; c += 2) {
        const __m512i x0 = broadcast4(xb.qs + 4 * c), x1 = broadcast4(xb.qs + 4 * c + 4);
        for (int g = 0; g < G; ++g) {
          const uint8_t* q = groups[g] + quant_offset + b * kQb;
          even[g] = _mm512_dpbusd_epi32(even[g], _mm512_load_si512(q + 64 * c), x0);
          odd[g] = _mm512_dpbusd_epi32(odd[g], _mm512_load_si512(q + 64 * c + 64), x1);
        }
      }
      for (int g = 0; g < G; ++g) s[g] = _mm512_add_epi32(even[g], odd[g]);
    } else {
      __m512i lo[G], hi[G];
      for (int g = 0; g < G; ++g) lo[g] = _mm512_set1_epi32(corr[b]), hi[g] = _mm512_setzero_si512();
      for (int p = 0; p < 4; ++p) {
        const __m512i x_lo = broadcast4(xb.qs + 4 * p), x_hi = broadcast4(xb.qs + 16 + 4 * p);
        for (int g = 0; g < G; ++g) {
          const __m512i v = _mm512_load_si512(groups[g] + quant_offset + b * kQb + 64 * p);
          lo[g] = _mm512_dpbusd_epi32(lo[g], _mm512_and_si512(v, mask_low), x_lo);
          hi[g] = _mm512_dpbusd_epi32(hi[g], _mm512_and_si512(v, mask_high), x_hi);
        }
      }
      for (int g = 0; g < G; ++g) s[g] = _mm512_add_epi32(lo[g], _mm512_srai_epi32(hi[g], 4));
    }
    const __m512 dx = _mm512_set1_ps(xb.d);
    for (int g = 0; g < G; ++g) {
      const auto* scales = reinterpret_cast<const __m256i*>(groups[g]) + b;  // 16 halves per block
      const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(scales));
      acc[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[g]), _mm512_mul_ps(dw, dx), acc[g]);
    }
  }
  for (int g = 0; g < G; ++g) _mm512_storeu_ps(y + g * kPackRows, acc[g]);
}

// packed_tile of every height 2..kPackedTileRows, indexed by rows - 2.
template <DType T, size_t... I>
constexpr auto tile_table(std::index_sequence<I...>) {
  using Fn = void (*)(const uint8_t*, size_t, int64_t, const BlockQ8A*, const int32_t*, float*, int64_t);
  return std::array<Fn, sizeof...(I)>{packed_tile<T, (int)I + 2>...};
}

template <DType T>
void packed_rows(const uint8_t* group, size_t group_bytes, int64_t n_groups, size_t quant_offset, int64_t nb,
                 const BlockQ8A* x, const int32_t* corr, int rows, float* y, int64_t ldy) {
  static constexpr auto kTiles = tile_table<T>(std::make_index_sequence<kPackedTileRows - 1>());
  int64_t g = 0;
  if (rows == 1) {
    for (; g + kGemvGroups <= n_groups; g += kGemvGroups)
      packed_gemv<T, kGemvGroups>(group + g * group_bytes, group_bytes, quant_offset, nb, x, corr, y + g * kPackRows);
    for (; g + 2 <= n_groups; g += 2)
      packed_gemv<T, 2>(group + g * group_bytes, group_bytes, quant_offset, nb, x, corr, y + g * kPackRows);
    if (g < n_groups) packed_gemv<T, 1>(group + g * group_bytes, group_bytes, quant_offset, nb, x, corr, y + g * kPackRows);
    return;
  }
  for (; g < n_groups; ++g)
    kTiles[rows - 2](group + g * group_bytes, quant_offset, nb, x, corr, y + g * kPackRows, ldy);
}


struct Vec16 {
  using T = __m512;
  static constexpr int kWidth = 16;
  static constexpr int kRegisters = 32;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float f) { return _mm512_set1_ps(f); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T load(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
  static T load(const int8_t* p, uint16_t scale) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p))),
                         _mm512_set1_ps(_cvtsh_ss(scale)));
  }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T if_negative(T v, T a, T b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), b, a); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T round(T v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T scale2(T v, T n) { return _mm512_scalef_ps(v, n); }
  // Lanes l and l + half for half = 8, 4, 2, 1: sum_each's order.
  static float reduce_add(T v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
  }
  static float reduce_max(T v) { return _mm512_reduce_max_ps(v); }
  // F16C rounds to nearest even, as fp32_to_fp16; only a NaN's payload differs, so NaNs are
  // rewritten as the reference writes them: quiet, payload 0x200, sign kept.
  static void store_f16(uint16_t* p, T v) {
    const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m256i quiet = _mm256_or_si256(_mm256_and_si256(h, _mm256_set1_epi16((short)0x8000)), _mm256_set1_epi16(0x7e00));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_mask_blend_epi16(nan, h, quiet));
  }
  // Four rounds, each adding every vector's lanes l and l + half (half = 8, 4, 2, 1) and packing
  // two vectors' sums into one; the last leaves vector 4s + r at lane 4r + s, put back in order.
  static T sum_each(const T* v) {
    T a[8], b[4], c[2];
    for (int m = 0; m < 8; ++m)
      a[m] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int m = 0; m < 4; ++m)
      b[m] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * m], a[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(a[2 * m], a[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int m = 0; m < 2; ++m)
      c[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b[2 * m]), _mm512_castps_pd(b[2 * m + 1]))),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b[2 * m]), _mm512_castps_pd(b[2 * m + 1]))));
    const T d = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), d);
  }
};

template <DType T>
constexpr DotTileFn kTileQ = by_rows<dot_tile_q<T, 1>, dot_tile_q<T, 2>, dot_tile_q<T, 3>, dot_tile_q<T, 4>>;
template <typename W>
constexpr DotTileFn kTileF = by_rows<dot_tile_f<W, 1>, dot_tile_f<W, 2>, dot_tile_f<W, 3>, dot_tile_f<W, 4>>;

}  // namespace

const Backend& avx512_backend() {
  static const Backend backend = {
      "avx512",
      quantize_act,
      {kTileF<float>, kTileF<uint16_t>, kTileQ<DType::Q8_0>, kTileQ<DType::Q4_0>, kTileQ<DType::Q4_1>},
      {nullptr, nullptr, dot_block<DType::Q8_0>, dot_block<DType::Q4_0>, dot_block<DType::Q4_1>},
      simd::attend<Vec16>,
      simd::sum_exp<Vec16>,
      simd::silu<Vec16>,
      simd::to_f16<Vec16>,
      {nullptr, nullptr, packed_rows<DType::Q8_0>, packed_rows<DType::Q4_0>, nullptr},
  };
  return backend;
}

}  // namespace octet::kernels
