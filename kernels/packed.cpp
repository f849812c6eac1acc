// Packed weights: the packing (the converter's), its inverse (embedding lookups) and the scalar reference
// kernel, which defines the arithmetic every packed kernel reproduces bit for bit:
//   per output and block b: s_b = exact int32 sum of the 32 int8 x int8 products,
//   acc = fma(float(s_b), dw_b * dx_b, acc) in block order (acc starts at 0), y = acc.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/packed.h"

namespace octet::kernels {

namespace {

constexpr size_t kAlign = 64;

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Bytes of quants per block of a group: 16 rows x 32 elements.
size_t quant_block_bytes(DType t) { return t == DType::Q8_0 ? kPackRows * kBlockSize : kPackRows * kBlockSize / 2; }

template <DType T>
void reference_group(const uint8_t* group, size_t quant_offset, int64_t nb, const BlockQ8A* x, int rows, float* y,
                     int64_t ldy) {
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(group);
  const uint8_t* quants = group + quant_offset;
  const size_t qb = quant_block_bytes(T);
  for (int r = 0; r < rows; ++r) {
    const BlockQ8A* xr = x + r * nb;
    for (int i = 0; i < kPackRows; ++i) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* q = quants + b * qb + 4 * i;
        const int8_t* xq = xr[b].qs;
        int32_t sum = 0;
        if constexpr (T == DType::Q8_0) {
          for (int c = 0; c < 8; ++c)
            for (int t = 0; t < 4; ++t) sum += (int32_t)(int8_t)(q[64 * c + t] ^ 0x80) * xq[4 * c + t];
        } else {
          for (int p = 0; p < 4; ++p)
            for (int t = 0; t < 4; ++t) {
              const uint8_t byte = q[64 * p + t];
              sum += ((byte & 0x0f) - 8) * xq[4 * p + t] + ((byte >> 4) - 8) * xq[16 + 4 * p + t];
            }
        }
        acc = std::fma((float)sum, fp16_to_fp32(scales[b * kPackRows + i]) * xr[b].d, acc);
      }
      y[r * ldy + i] = acc;
    }
  }
}

template <DType T>
void reference_tile(const uint8_t* group, size_t group_bytes, int64_t n_groups, size_t quant_offset, int64_t nb,
                    const BlockQ8A* x, const int32_t* /*corr*/, int rows, float* y, int64_t ldy) {
  for (int64_t g = 0; g < n_groups; ++g)
    reference_group<T>(group + g * group_bytes, quant_offset, nb, x, rows, y + g * kPackRows, ldy);
}

}  // namespace

PackedTileFn packed_reference_tile(DType t) {
  return t == DType::Q8_0 ? reference_tile<DType::Q8_0> : reference_tile<DType::Q4_0>;
}

void sums_to_corrections(DType t, int32_t* sums, int64_t nb) {
  const int32_t offset = t == DType::Q8_0 ? 128 : 8;
  for (int64_t b = 0; b < nb; ++b) sums[b] *= -offset;
}

bool packable(DType t) { return t == DType::Q8_0 || t == DType::Q4_0; }

bool packed_kernel_active(DType t) { return packable(t) && active_backend().packed_tile[(int)t] != nullptr; }

namespace {

// The view's geometry, data unset; false when the matrix cannot be packed.
bool packed_geometry(DType t, int64_t N, int64_t K, PackedWeights& P) {
  if (!packable(t) || row_bytes(t, K) == 0 || N < 0) return false;
  const int64_t nb = K / kBlockSize;
  P.dtype = t;
  P.rows = N;
  P.cols = K;
  P.groups = N / kPackRows;
  P.quant_offset = round_up((size_t)nb * kPackRows * sizeof(uint16_t), kAlign);
  P.group_bytes = P.quant_offset + (size_t)nb * quant_block_bytes(t);
  return true;
}

}  // namespace

size_t packed_bytes(DType t, int64_t N, int64_t K) {
  PackedWeights P;
  if (!packed_geometry(t, N, K, P)) return 0;
  return (size_t)P.groups * P.group_bytes + (size_t)(N - P.packed_rows()) * row_bytes(t, K);
}

PackedWeights packed_view(DType t, const void* data, int64_t N, int64_t K) {
  PackedWeights P;
  if (!packed_geometry(t, N, K, P) || reinterpret_cast<uintptr_t>(data) % kAlign != 0) {
    std::fprintf(stderr, "octet::kernels::packed_view: not a packed %s matrix of N %lld, K %lld at %p\n", dtype_name(t),
                 (long long)N, (long long)K, data);
    std::abort();
  }
  P.data = static_cast<const uint8_t*>(data);
  return P;
}

namespace {

// Writes the packed form of W to out (packed_bytes(t, N, K) bytes, 64-byte aligned).
void pack_matrix(DType t, const void* W, int64_t N, int64_t K, uint8_t* out) {
  const PackedWeights P = packed_view(t, out, N, K);
  const size_t w_stride = row_bytes(t, K);
  const int64_t nb = K / kBlockSize;
  const uint8_t* src = static_cast<const uint8_t*>(W);
  const size_t qb = quant_block_bytes(t), block_bytes = row_bytes(t, kBlockSize);
  for (int64_t g = 0; g < P.groups; ++g) {
    uint8_t* group = out + (size_t)g * P.group_bytes;
    uint16_t* scales = reinterpret_cast<uint16_t*>(group);
    std::memset(group + nb * kPackRows * sizeof(uint16_t), 0, P.quant_offset - nb * kPackRows * sizeof(uint16_t));
    uint8_t* quants = group + P.quant_offset;
    const uint8_t* rows = src + (size_t)g * kPackRows * w_stride;
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* q = quants + b * qb;
      for (int i = 0; i < kPackRows; ++i) {
        const uint8_t* blk = rows + i * w_stride + b * block_bytes;
        std::memcpy(&scales[b * kPackRows + i], blk, sizeof(uint16_t));
        const uint8_t* qs = blk + sizeof(uint16_t);
        if (t == DType::Q8_0) {
          for (int c = 0; c < 8; ++c) {
            uint32_t v;
            std::memcpy(&v, qs + 4 * c, 4);
            v ^= 0x80808080u;
            std::memcpy(q + 64 * c + 4 * i, &v, 4);
          }
        } else {
          for (int p = 0; p < 4; ++p) std::memcpy(q + 64 * p + 4 * i, qs + 4 * p, 4);
        }
      }
    }
  }
  const int64_t tail_rows = N - P.packed_rows();
  if (tail_rows > 0)
    std::memcpy(out + (size_t)P.groups * P.group_bytes, src + (size_t)P.packed_rows() * w_stride, tail_rows * w_stride);
}

}  // namespace

PackedBuffer::PackedBuffer(DType t, const void* W, int64_t N, int64_t K) : size_(packed_bytes(t, N, K)) {
  // aligned_alloc wants a size that is a multiple of the alignment (and > 0).
  storage_.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, round_up(std::max<size_t>(size_, 1), kAlign))));
  if (!storage_) throw std::bad_alloc();
  pack_matrix(t, W, N, K, storage_.get());
  view_ = packed_view(t, storage_.get(), N, K);
}

void PackedBuffer::Free::operator()(uint8_t* p) const { std::free(p); }

void dequantize_packed_row(const PackedWeights& P, int64_t n, float* out) {
  if (n >= P.packed_rows())
    return dequantize_row(P.dtype, P.tail() + (size_t)(n - P.packed_rows()) * row_bytes(P.dtype, P.cols), out, P.cols);
  const int64_t nb = P.cols / kBlockSize;
  const uint8_t* group = P.group(n / kPackRows);
  const int i = (int)(n % kPackRows);
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(group);
  const size_t qb = quant_block_bytes(P.dtype);
  for (int64_t b = 0; b < nb; ++b, out += kBlockSize) {
    const float d = fp16_to_fp32(scales[b * kPackRows + i]);
    const uint8_t* q = group + P.quant_offset + b * qb + 4 * i;
    for (int j = 0; j < kBlockSize; ++j) {
      if (P.dtype == DType::Q8_0) {
        out[j] = d * (float)(int8_t)(q[64 * (j / 4) + j % 4] ^ 0x80);
      } else {
        const int jj = j % 16;  // byte 4p + t of the original qs
        const uint8_t byte = q[64 * (jj / 4) + jj % 4];
        out[j] = d * (float)((j < 16 ? (byte & 0x0f) : (byte >> 4)) - 8);
      }
    }
  }
}

}  // namespace octet::kernels
