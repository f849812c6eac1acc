// Element types and the reference f32 <-> stored-type conversions. The converter writes files
// with these, so they are plain scalar code: a file's bytes never depend on the CPU.
#include <cmath>
#include <cstring>

#include "kernels/backend.h"
#include "kernels/kernels.h"

namespace octet::kernels {

namespace {

constexpr uint16_t kHalfMax = 0x7bff;  // 65504, the largest finite half

// The smallest finite half >= v (the largest finite half when v is beyond it). Block scales are
// rounded this way so that no value of the block falls outside the grid they span.
uint16_t half_at_least(float v) {
  uint16_t h = fp32_to_fp16(v);
  if ((h & 0x7fffu) >= 0x7c00u) return v > 0 ? kHalfMax : (uint16_t)(0x8000u | kHalfMax);
  if (fp16_to_fp32(h) < v) {
    if (h == kHalfMax) return h;
    if (h == 0x8000u) return 1;      // -0: up to the smallest positive subnormal
    h = (h & 0x8000u) ? h - 1 : h + 1;  // halves of one sign are ordered like their magnitudes
  }
  return h;
}
// The largest finite half <= v.
uint16_t half_at_most(float v) { return half_at_least(-v) ^ 0x8000u; }

// Round half to even, then clamp; NaN gives lo (defined, if meaningless). Within one of the
// range, adding and subtracting 1.5 * 2^23 leaves no fraction bits, rounded as nearbyint rounds:
// the same integers, without nearbyint's library call at baseline x86-64 (quantized KV caches
// run this every decoder step).
int round_clamp(float v, int lo, int hi) {
  if (!(v >= (float)lo - 1.0f)) return lo;
  if (v > (float)hi + 1.0f) return hi;
  const float r = (v + 0x1.8p23f) - 0x1.8p23f;
  if (r < (float)lo) return lo;
  if (r > (float)hi) return hi;
  return (int)r;
}

void quantize_q8_0(const float* x, BlockQ8_0* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += kBlockSize) {
    float amax = 0;
    for (int j = 0; j < kBlockSize; ++j) {
      const float a = std::fabs(x[j]);
      amax = a > amax ? a : amax;  // fmax's result (a NaN is skipped), without its library call
    }
    out[b].d = half_at_least(amax / 127.0f);
    const float d = fp16_to_fp32(out[b].d);
    for (int j = 0; j < kBlockSize; ++j)
      out[b].qs[j] = (int8_t)(d == 0 ? 0 : round_clamp(x[j] / d, -127, 127));
  }
}

// d = max / -8, with max the value of largest magnitude: max maps exactly to q = 0, the other
// side of zero reaches q = 15 (the value -max itself clips to 7 * d).
void quantize_q4_0(const float* x, BlockQ4_0* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += kBlockSize) {
    float max = 0;
    for (int j = 0; j < kBlockSize; ++j)
      if (std::fabs(x[j]) > std::fabs(max)) max = x[j];
    const float d_exact = max / -8.0f;
    const uint16_t dh = half_at_least(std::fabs(d_exact));
    out[b].d = d_exact < 0 ? (uint16_t)(dh | 0x8000u) : dh;
    const float d = fp16_to_fp32(out[b].d);
    uint8_t q[kBlockSize];
    for (int j = 0; j < kBlockSize; ++j) q[j] = (uint8_t)(d == 0 ? 8 : round_clamp(x[j] / d + 8.0f, 0, 15));
    for (int j = 0; j < kBlockSize / 2; ++j) out[b].qs[j] = (uint8_t)(q[j] | (q[j + kBlockSize / 2] << 4));
  }
}

// m is rounded down and d up, so every value lies in [m, m + 15 d] and rounds to the nearest step.
void quantize_q4_1(const float* x, BlockQ4_1* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += kBlockSize) {
    float min = x[0], max = x[0];
    for (int j = 1; j < kBlockSize; ++j) {
      min = std::fmin(min, x[j]);
      max = std::fmax(max, x[j]);
    }
    out[b].m = half_at_most(min);
    const float m = fp16_to_fp32(out[b].m);
    out[b].d = half_at_least((max - m) / 15.0f);
    const float d = fp16_to_fp32(out[b].d);
    uint8_t q[kBlockSize];
    for (int j = 0; j < kBlockSize; ++j) q[j] = (uint8_t)(d == 0 ? 0 : round_clamp((x[j] - m) / d, 0, 15));
    for (int j = 0; j < kBlockSize / 2; ++j) out[b].qs[j] = (uint8_t)(q[j] | (q[j + kBlockSize / 2] << 4));
  }
}

}  // namespace

size_t row_bytes(DType t, int64_t n) {
  if (n <= 0) return 0;
  const bool whole_blocks = n % kBlockSize == 0;
  switch (t) {
    case DType::F32: return (size_t)n * 4;
    case DType::F16: return (size_t)n * 2;
    case DType::Q8_0: return whole_blocks ? (size_t)(n / kBlockSize) * sizeof(BlockQ8_0) : 0;
    case DType::Q4_0: return whole_blocks ? (size_t)(n / kBlockSize) * sizeof(BlockQ4_0) : 0;
    case DType::Q4_1: return whole_blocks ? (size_t)(n / kBlockSize) * sizeof(BlockQ4_1) : 0;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::Q8_0: return "q8_0";
    case DType::Q4_0: return "q4_0";
    case DType::Q4_1: return "q4_1";
  }
  return "invalid";
}

bool dtype_is_valid(uint32_t raw) { return raw <= (uint32_t)DType::Q4_1; }

bool dtype_from_name(const char* name, DType* out) {
  if (name == nullptr) return false;
  for (uint32_t raw = 0; dtype_is_valid(raw); ++raw) {
    if (std::strcmp(name, dtype_name((DType)raw)) == 0) {
      *out = (DType)raw;
      return true;
    }
  }
  return false;
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  const int64_t nb = n / kBlockSize;
  switch (t) {
    case DType::F32: std::memcpy(dst, src, (size_t)n * 4); break;
    case DType::F16:
      if (const auto to_f16 = active_backend().to_f16) to_f16(src, static_cast<uint16_t*>(dst), n);
      else for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = fp32_to_fp16(src[i]);
      break;
    case DType::Q8_0: quantize_q8_0(src, static_cast<BlockQ8_0*>(dst), nb); break;
    case DType::Q4_0: quantize_q4_0(src, static_cast<BlockQ4_0*>(dst), nb); break;
    case DType::Q4_1: quantize_q4_1(src, static_cast<BlockQ4_1*>(dst), nb); break;
  }
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  const int64_t nb = n / kBlockSize;
  switch (t) {
    case DType::F32: std::memcpy(dst, src, (size_t)n * 4); break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(static_cast<const uint16_t*>(src)[i]);
      break;
    case DType::Q8_0:
      for (int64_t b = 0; b < nb; ++b) {
        const BlockQ8_0& blk = static_cast<const BlockQ8_0*>(src)[b];
        const float d = fp16_to_fp32(blk.d);
        for (int j = 0; j < kBlockSize; ++j) dst[b * kBlockSize + j] = d * (float)blk.qs[j];
      }
      break;
    case DType::Q4_0:
      for (int64_t b = 0; b < nb; ++b) {
        const BlockQ4_0& blk = static_cast<const BlockQ4_0*>(src)[b];
        const float d = fp16_to_fp32(blk.d);
        for (int j = 0; j < kBlockSize; ++j) dst[b * kBlockSize + j] = d * (float)(q4_nibble(blk.qs, j) - 8);
      }
      break;
    case DType::Q4_1:
      for (int64_t b = 0; b < nb; ++b) {
        const BlockQ4_1& blk = static_cast<const BlockQ4_1*>(src)[b];
        const float d = fp16_to_fp32(blk.d), m = fp16_to_fp32(blk.m);
        for (int j = 0; j < kBlockSize; ++j) dst[b * kBlockSize + j] = d * (float)q4_nibble(blk.qs, j) + m;
      }
      break;
  }
}

}  // namespace octet::kernels
