// NEON + dotprod (ARMv8.2-A) backend, for phones. One 32-element block is two 128-bit vectors of
// bytes; int8 products use sdot (four s8 x s8 products summed into each i32 lane), so they are
// exact. Q4 nibbles (0..15, or -8..7 for Q4_0) fit in s8, so every block type takes the same sdot.
// Only this file's own (anonymous) functions use the ARMv8.2 flags: header inlines such as
// fp16_to_fp32 are avoided here, so no out-of-line copy of them can carry dotprod code.
#include <arm_neon.h>

#include <cstring>
#include <type_traits>

#include "kernels/simd.h"
#include "kernels/backend.h"

namespace octet::kernels {

namespace {

// fcvt, exact for every half (subnormals included: Linux and Android leave FPCR's flush bits off).
float half_to_float(uint16_t bits) {
  __fp16 h;
  std::memcpy(&h, &bits, sizeof h);
  return (float)h;
}

// Same arithmetic as the scalar quantizer (fmax-style amax, a true division, ties to even, NaN
// clamped to -127), so the same bytes.
void quantize_act(const float* x, BlockQ8A* out, int64_t k, int32_t* sums) {
  const float32x4_t lowest = vdupq_n_f32(-127.0f), highest = vdupq_n_f32(127.0f);
  for (int64_t b = 0; b < k / kBlockSize; ++b, x += kBlockSize) {
    float32x4_t v[8];
    for (int i = 0; i < 8; ++i) v[i] = vld1q_f32(x + 4 * i);
    // maxnm ignores NaN like std::fmax, and starting from 0 as the scalar loop does keeps an
    // all-NaN block at d = 0.
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int i = 0; i < 8; ++i) amax = vmaxnmq_f32(amax, vabsq_f32(v[i]));
    const float d = vmaxnmvq_f32(amax) / 127.0f;
    out[b].d = d;
    if (d == 0) {
      store_zero_block(out[b], sums ? sums + b : nullptr);
      continue;
    }
    const float32x4_t vd = vdupq_n_f32(d);
    int32x4_t q[8];
    for (int i = 0; i < 8; ++i) {
      const float32x4_t r = vrndnq_f32(vdivq_f32(v[i], vd));
      // As the scalar clamp: a NaN fails r >= -127 and becomes -127.
      q[i] = vcvtq_s32_f32(vbslq_f32(vcgeq_f32(r, lowest), vminq_f32(r, highest), lowest));
    }
    int32x4_t sum = q[0];
    for (int i = 1; i < 8; ++i) sum = vaddq_s32(sum, q[i]);
    for (int i = 0; i < 2; ++i) {
      const int16x8_t lo = vcombine_s16(vmovn_s32(q[4 * i]), vmovn_s32(q[4 * i + 1]));
      const int16x8_t hi = vcombine_s16(vmovn_s32(q[4 * i + 2]), vmovn_s32(q[4 * i + 3]));
      vst1q_s8(out[b].qs + 16 * i, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
    }
    const int32_t total = vaddvq_s32(sum);
    out[b].s = d * (float)total;
    if (sums) sums[b] = total;
  }
}

template <DType T>
using BlockOf = std::conditional_t<T == DType::Q8_0, BlockQ8_0,
                                   std::conditional_t<T == DType::Q4_0, BlockQ4_0, BlockQ4_1>>;

// The block's weights as signed bytes, elements 0..15 then 16..31: Q8_0 as stored, Q4_0 as q - 8,
// Q4_1 as the plain nibbles (low nibbles are elements 0..15).
template <DType T>
int8x16x2_t load_weights(const BlockOf<T>& blk) {
  if constexpr (T == DType::Q8_0) {
    return {{vld1q_s8(blk.qs), vld1q_s8(blk.qs + 16)}};
  } else {
    const uint8x16_t packed = vld1q_u8(blk.qs);
    int8x16x2_t q = {{vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))), vreinterpretq_s8_u8(vshrq_n_u8(packed, 4))}};
    if constexpr (T == DType::Q4_0) {
      q.val[0] = vsubq_s8(q.val[0], vdupq_n_s8(8));
      q.val[1] = vsubq_s8(q.val[1], vdupq_n_s8(8));
    }
    return q;
  }
}

// Every tile height adds in the same order (same U for every R), so a row's result does not
// depend on how many rows share its tile: M = 1 and M > 1 give the same bits, which the engine's
// token-by-token == batch check needs (the next layer's int8 rounding amplifies any difference).

// Dot products of one weight row with R activation rows: each weight block is loaded and
// unpacked once per tile. Two accumulators hide the FMA latency.
template <DType T, int R>
void dot_tile_q(const void* w, const void* x, size_t x_stride, int64_t k, float* y, int64_t ldy) {
  constexpr int U = 2;
  const BlockOf<T>* wb = static_cast<const BlockOf<T>*>(w);
  const BlockQ8A* xb[R];
  for (int r = 0; r < R; ++r) xb[r] = reinterpret_cast<const BlockQ8A*>(static_cast<const char*>(x) + r * x_stride);
  float32x4_t acc[R][U];
  float min_acc[R];  // Q4_1: sum of m * s
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < U; ++u) acc[r][u] = vdupq_n_f32(0.0f);
    min_acc[r] = 0;
  }
  auto step = [&](int64_t b, int u) __attribute__((always_inline)) {
    const int8x16x2_t wq = load_weights<T>(wb[b]);
    const float dw = half_to_float(wb[b].d);
    for (int r = 0; r < R; ++r) {
      const BlockQ8A& xr = xb[r][b];
      const int32x4_t sumi = vdotq_s32(vdotq_s32(vdupq_n_s32(0), wq.val[0], vld1q_s8(xr.qs)), wq.val[1], vld1q_s8(xr.qs + 16));
      acc[r][u] = vfmaq_n_f32(acc[r][u], vcvtq_f32_s32(sumi), dw * xr.d);
      if constexpr (T == DType::Q4_1) min_acc[r] += half_to_float(wb[b].m) * xr.s;
    }
  };
  const int64_t nb = k / kBlockSize;
  int64_t b = 0;
  for (; b + U <= nb; b += U)
    for (int u = 0; u < U; ++u) step(b + u, u);
  for (; b < nb; ++b) step(b, 0);
  for (int r = 0; r < R; ++r) {
    float32x4_t sum = acc[r][0];
    for (int u = 1; u < U; ++u) sum = vaddq_f32(sum, acc[r][u]);
    y[r * ldy] = vaddvq_f32(sum) + min_acc[r];
  }
}

// 4 weights as f32.
float32x4_t load4(const float* p) { return vld1q_f32(p); }
float32x4_t load4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
float load1(const float* p) { return *p; }
float load1(const uint16_t* p) { return half_to_float(*p); }

// F16 / F32 weights against f32 activations. Four accumulators of 4 lanes keep every lane's
// chain of additions at k/16 or shorter; the k % 16 tail goes 4 at a time, then one at a time.
template <typename W, int R>
void dot_tile_f(const void* w, const void* x, size_t x_stride, int64_t k, float* y, int64_t ldy) {
  constexpr int U = 4;
  const W* wr = static_cast<const W*>(w);
  const float* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = reinterpret_cast<const float*>(static_cast<const char*>(x) + r * x_stride);
  float32x4_t acc[R][U];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = vdupq_n_f32(0.0f);
  auto step = [&](int64_t i, int u) __attribute__((always_inline)) {
    const float32x4_t wv = load4(wr + i);
    for (int r = 0; r < R; ++r) acc[r][u] = vfmaq_f32(acc[r][u], wv, vld1q_f32(xr[r] + i));
  };
  int64_t i = 0;
  for (; i + 4 * U <= k; i += 4 * U)
    for (int u = 0; u < U; ++u) step(i + 4 * u, u);
  for (; i + 4 <= k; i += 4) step(i, 0);
  for (int r = 0; r < R; ++r) {
    float32x4_t sum = acc[r][0];
    for (int u = 1; u < U; ++u) sum = vaddq_f32(sum, acc[r][u]);
    float total = vaddvq_f32(sum);
    for (int64_t j = i; j < k; ++j) total += load1(wr + j) * xr[r][j];
    y[r * ldy] = total;
  }
}

// ---- Packed weights (kernels.h, PackedWeights). A 64-byte chunk of a group is four 128-bit
// vectors of 4 rows x 4 bytes, so one sdot by lane (vdotq_laneq_s32: the 4 activation bytes
// picked from a vector of 16) adds 4 products into each of 4 rows: 4 int32x4 accumulators hold
// the group's 16 outputs. Q8_0 bytes are stored + 128, so xor 0x80 gives the signed weight; Q4_0
// nibbles (0..15) fit s8 and the block's correction (-8 sum x) removes the offset. The int32 sums
// are exact and the float steps are the reference's (convert, dw * dx, fused multiply-add in
// block order), so the bits are the reference's.
template <DType T, int R>
void packed_tile(const uint8_t* group, size_t quant_offset, int64_t nb, const BlockQ8A* x, const int32_t* corr,
                 float* y, int64_t ldy) {
  constexpr size_t kQb = T == DType::Q8_0 ? 512 : 256;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(group);
  const uint8_t* quants = group + quant_offset;
  float32x4_t acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* q = quants + b * kQb;
    int32x4_t s[R][4];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) s[r][j] = vdupq_n_s32(T == DType::Q8_0 ? 0 : corr[r * nb + b]);
    int8x16_t xv[R][2];
    for (int r = 0; r < R; ++r) xv[r][0] = vld1q_s8(x[r * nb + b].qs), xv[r][1] = vld1q_s8(x[r * nb + b].qs + 16);
    // Chunk c (Q8_0) or half-vector (Q4_0) multiplies activation bytes 4c..4c+3: vector c / 4, lane c % 4.
    for (int c = 0; c < 8; ++c) {
      int8x16_t w[4];
      for (int j = 0; j < 4; ++j) {
        if constexpr (T == DType::Q8_0) {
          w[j] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(q + 64 * c + 16 * j), vdupq_n_u8(0x80)));
        } else {
          const uint8x16_t v = vld1q_u8(q + 64 * (c % 4) + 16 * j);
          w[j] = vreinterpretq_s8_u8(c < 4 ? vandq_u8(v, vdupq_n_u8(0x0f)) : vshrq_n_u8(v, 4));
        }
      }
      for (int r = 0; r < R; ++r) {
        const int8x16_t xs = xv[r][c / 4];
        for (int j = 0; j < 4; ++j) {
          switch (c % 4) {
            case 0: s[r][j] = vdotq_laneq_s32(s[r][j], w[j], xs, 0); break;
            case 1: s[r][j] = vdotq_laneq_s32(s[r][j], w[j], xs, 1); break;
            case 2: s[r][j] = vdotq_laneq_s32(s[r][j], w[j], xs, 2); break;
            default: s[r][j] = vdotq_laneq_s32(s[r][j], w[j], xs, 3); break;
          }
        }
      }
    }
    float32x4_t dw[4];
    for (int j = 0; j < 4; ++j) dw[j] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(scales + b * kPackRows + 4 * j)));
    for (int r = 0; r < R; ++r) {
      const float32x4_t dx = vdupq_n_f32(x[r * nb + b].d);
      for (int j = 0; j < 4; ++j) acc[r][j] = vfmaq_f32(acc[r][j], vcvtq_f32_s32(s[r][j]), vmulq_f32(dw[j], dx));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) vst1q_f32(y + r * ldy + 4 * j, acc[r][j]);
}

template <DType T>
constexpr PackedTileFn kPackedTile =
    packed_by_rows<packed_tile<T, 1>, packed_tile<T, 2>, packed_tile<T, 3>, packed_tile<T, 4>>;

struct Vec4 {
  using T = float32x4_t;
  static constexpr int kWidth = 4;
  static constexpr int kRegisters = 32;
  static T zero() { return vdupq_n_f32(0.0f); }
  static T set1(float f) { return vdupq_n_f32(f); }
  static T load(const float* p) { return vld1q_f32(p); }
  static T load(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static T load(const int8_t* p, uint16_t scale) {
    int32_t four;  // 4 bytes only: a wider load would read past the end of a row's last block
    std::memcpy(&four, p, sizeof four);
    const int16x8_t wide = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(four)));
    return vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide))), vdupq_n_f32(half_to_float(scale)));
  }
  static void store(float* p, T v) { vst1q_f32(p, v); }
  static T add(T a, T b) { return vaddq_f32(a, b); }
  static T sub(T a, T b) { return vsubq_f32(a, b); }
  static T mul(T a, T b) { return vmulq_f32(a, b); }
  static T div(T a, T b) { return vdivq_f32(a, b); }
  static T if_negative(T v, T a, T b) { return vbslq_f32(vcltq_f32(v, vdupq_n_f32(0.0f)), a, b); }
  static T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }
  static T max(T a, T b) { return vmaxq_f32(a, b); }
  static T round(T v) { return vrndnq_f32(v); }
  static T scale2(T v, T n) {
    const int32x4_t exponent = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(v, vreinterpretq_f32_s32(exponent));
  }
  // Pairwise, as sum_each: (0 + 1) + (2 + 3).
  static float reduce_add(T v) { return vpadds_f32(vpadd_f32(vget_low_f32(v), vget_high_f32(v))); }
  static float reduce_max(T v) { return vmaxvq_f32(v); }
  // Pairwise: lanes 0+1 and 2+3 of every vector, then those two sums.
  static T sum_each(const T* v) { return vpaddq_f32(vpaddq_f32(v[0], v[1]), vpaddq_f32(v[2], v[3])); }
};

template <DType T>
constexpr DotTileFn kTileQ = by_rows<dot_tile_q<T, 1>, dot_tile_q<T, 2>, dot_tile_q<T, 3>, dot_tile_q<T, 4>>;
template <typename W>
constexpr DotTileFn kTileF = by_rows<dot_tile_f<W, 1>, dot_tile_f<W, 2>, dot_tile_f<W, 3>, dot_tile_f<W, 4>>;

}  // namespace

const Backend& neon_backend() {
  static const Backend backend = {
      "neon",
      quantize_act,
      {kTileF<float>, kTileF<uint16_t>, kTileQ<DType::Q8_0>, kTileQ<DType::Q4_0>, kTileQ<DType::Q4_1>},
      {},
      simd::attend<Vec4>,
      simd::sum_exp<Vec4>,
      simd::silu<Vec4>,
      nullptr,
      {nullptr, nullptr, kPackedTile<DType::Q8_0>, kPackedTile<DType::Q4_0>, nullptr},
  };
  return backend;
}

}  // namespace octet::kernels
