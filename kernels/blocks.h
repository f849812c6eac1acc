// Quantized block formats: the one definition shared by the scalar reference, every ISA file,
// the CUDA code, the converter and the .qbin reader. Sizes are part of the file format.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define OCTET_HD __host__ __device__
#else
#define OCTET_HD
#endif

namespace octet {

// Element types of stored tensors. The numeric values are written into .qbin files: never reuse one.
enum class DType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 2, Q4_0 = 3, Q4_1 = 4 };

// How a matrix's rows lie in memory, and in a .qbin file (the values are written there too).
// Rows: row after row. Packed: Q8_0/Q4_0 rows interleaved in groups of 16 for the kernels
// (kernels.h, PackedWeights), the rows past the last full group row after row.
enum class Layout : uint32_t { Rows = 0, Packed = 1 };

constexpr int kBlockSize = 32;  // elements per quantized block, for every block type

// 32 int8 values, one fp16 scale: x = d * q. 8.5 bits per weight.
struct BlockQ8_0 {
  uint16_t d;  // fp16 bits
  int8_t qs[kBlockSize];
};
// 32 4-bit values, one fp16 scale: x = d * (q - 8). qs[j] holds element j in its low nibble and
// element j + 16 in its high nibble. 4.5 bits per weight.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kBlockSize / 2];
};
// 32 4-bit values with fp16 scale and minimum: x = d * q + m. Nibble layout as Q4_0. 5 bits per weight.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kBlockSize / 2];
};
// Activations, quantized on the fly (never stored in files): int8 with a float scale, plus the
// scaled sum of the block (s = d * sum(qs)), which Q4_1's minimum needs.
struct BlockQ8A {
  float d;
  float s;
  int8_t qs[kBlockSize];
};

static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block layout is part of the file format");
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block layout is part of the file format");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block layout is part of the file format");
static_assert(sizeof(BlockQ8A) == 40, "activation block layout");

// IEEE half <-> float, exact round-to-nearest-even, usable on host and device.
OCTET_HD inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal half: normalise
      int e = -1;
      do { mant <<= 1; ++e; } while ((mant & 0x400u) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

OCTET_HD inline uint16_t fp32_to_fp16(float f) {
  uint32_t x;
  __builtin_memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {                                     // below the smallest normal half
    if (abs < 0x33000000u) return (uint16_t)sign;              // rounds to zero
    const uint32_t shift = 126u - (abs >> 23);  // 14..24: h counts subnormal steps of 2^-24
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (uint16_t)(sign | h);
}

OCTET_HD inline float bf16_to_fp32(uint16_t h) {
  const uint32_t bits = (uint32_t)h << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

}  // namespace octet
