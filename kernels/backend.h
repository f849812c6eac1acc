// Internal to kernels/: the one narrow table each instruction-set file fills in. matmul.cpp does
// the threading and tiling and calls only through this table, so an ISA file holds nothing but
// its inner loops.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/blocks.h"
#include "kernels/kernels.h"

namespace octet::kernels {

// Activation rows handled by one DotTileFn call: each weight row is read once per tile.
constexpr int kTileRows = 4;

// Quantizes k floats (k a multiple of kBlockSize) to k / kBlockSize activation blocks with
// d = amax / 127 and q = round-half-to-even(x / d). Every backend must produce exactly the bytes
// of the scalar one, so that all backends multiply the same integers. When `sums` is not null,
// sums[b] = the sum of block b's qs (the packed kernels' corrections come from it).
using QuantizeActFn = void (*)(const float* x, BlockQ8A* out, int64_t k, int32_t* sums);

// What a SIMD quantizer writes for a block whose amax is 0 (after its d = 0): the scalar
// quantizer's bytes, zero quants, s = 0, and a block sum of 0 when sums are asked for.
inline void store_zero_block(BlockQ8A& block, int32_t* sum) {
  std::memset(block.qs, 0, sizeof block.qs);
  block.s = 0;
  if (sum) *sum = 0;
}

// For one weight row w of k elements and `rows` (1..kTileRows) activation rows:
//   y[r * ldy] = dot(w, activation row r),  r < rows.
// Activation row r starts at x + r * x_stride bytes: BlockQ8A blocks when the weight type is
// quantized, f32 otherwise.
using DotTileFn = void (*)(const void* w, const void* x, size_t x_stride, int rows, int64_t k,
                           float* y, int64_t ldy);

// Weight rows handled by one DotBlockFn call.
constexpr int kWeightRows = 4;

// Optional, register-blocked form of DotTileFn: `wrows` (1..kWeightRows) weight rows, row j at
// w + j * w_stride bytes, against `rows` (1..kTileRows) activation rows:
//   y[r * ldy + j] = dot(weight row j, activation row r).
// Each output must have exactly the bits DotTileFn gives it for that weight row alone (and so
// the same bits for every wrows and rows).
using DotBlockFn = void (*)(const void* w, size_t w_stride, int wrows, const void* x, size_t x_stride, int rows,
                            int64_t k, float* y, int64_t ldy);

// Activation rows handled by one PackedTileFn call. 4 measured best on Zen 4 (TinyLlama layer,
// 1 thread: Q8_0 280, Q4_0 288 GMAC/s at M = 512; 8 rows 271 / 278, 6 rows 283 / 284).
constexpr int kPackedTileRows = 4;

// Packed groups a GEMV kernel (one activation row) works through at once, each its own stream of
// weights from memory; matmul gives each thread a share in whole multiples of it.
constexpr int kGemvGroups = 4;

// How far ahead of its reads a packed x86 kernel prefetches its weights, and into which cache: L2
// (_MM_HINT_T1), so that the prefetches do not hold the few L1 miss buffers the loads need. The
// hardware prefetcher alone left AVX2 GEMV from DRAM at ~17 GB/s (row-major streams ~31); 8 KiB
// ahead into L1 gave 36-38 on one 2-vCPU EPYC VM. On another, whose memory is further away (~32
// GB/s read at 2 threads, 15-20 from one core), that lost to no prefetch at all, and into L2 won:
// decode +25% on the SmolLM2 shape, +10% on TinyLlama; 4-16 KiB ahead all did about as well
// there (bench/README.md). The address is computed in integers: it may lie past the matrix, which
// a prefetch may touch but a pointer may not point to.
constexpr uintptr_t kPrefetchBytes = 8192;

// For n_groups consecutive packed groups (group g at group + g * group_bytes; its scales first,
// its quants at quant_offset) of nb blocks and `rows` (1..kPackedTileRows) activation rows, row r
// at x + r * nb blocks:
//   y[r * ldy + g * kPackRows + i] = dot(weight row i of group g, activation row r),  i < kPackRows.
// corr[r * nb + b] is the block's offset correction, -128 * sum(x.qs) for Q8_0 (whose weights
// are stored + 128) and -8 * sum(x.qs) for Q4_0 (nibbles q = w + 8); a kernel may use it or
// not. It is in memory, made once per activation row, because a kernel that broadcast it from
// a register computed on the fly lost 3-4% of a translation (the broadcast competes with the
// int8 products). Every output must get exactly the bits of packed_reference for any `rows`.
using PackedTileFn = void (*)(const uint8_t* group, size_t group_bytes, int64_t n_groups, size_t quant_offset,
                              int64_t nb, const BlockQ8A* x, const int32_t* corr, int rows, float* y, int64_t ldy);

// A tile function of fixed height, and the DotTileFn that picks one per row count: each ISA
// file writes its tiles as templates over the height and builds its table entries with this.
using TileR = void (*)(const void*, const void*, size_t, int64_t, float*, int64_t);
template <TileR Tile1, TileR Tile2, TileR Tile3, TileR Tile4>
void by_rows(const void* w, const void* x, size_t x_stride, int rows, int64_t k, float* y, int64_t ldy) {
  static_assert(kTileRows == 4);
  switch (rows) {
    case 1: Tile1(w, x, x_stride, k, y, ldy); break;
    case 2: Tile2(w, x, x_stride, k, y, ldy); break;
    case 3: Tile3(w, x, x_stride, k, y, ldy); break;
    default: Tile4(w, x, x_stride, k, y, ldy); break;
  }
}

// The PackedTileFn of an ISA file whose packed tile is a template over the height: group by
// group, the tile of the asked height.
using PackedTileR = void (*)(const uint8_t* group, size_t quant_offset, int64_t nb, const BlockQ8A* x,
                             const int32_t* corr, float* y, int64_t ldy);
template <PackedTileR Tile1, PackedTileR Tile2, PackedTileR Tile3, PackedTileR Tile4>
void packed_by_rows(const uint8_t* group, size_t group_bytes, int64_t n_groups, size_t quant_offset, int64_t nb,
                    const BlockQ8A* x, const int32_t* corr, int rows, float* y, int64_t ldy) {
  static_assert(kPackedTileRows == 4);
  const PackedTileR tile = rows == 1 ? Tile1 : rows == 2 ? Tile2 : rows == 3 ? Tile3 : Tile4;
  for (int64_t g = 0; g < n_groups; ++g, group += group_bytes, y += kPackRows) tile(group, quant_offset, nb, x, corr, y, ldy);
}

// No function in an ISA file may run before dispatch.cpp has checked the CPU (which it does in
// plain x86-64 / armv8-a code), so the table holds only the kernels.
struct Backend {
  const char* name;
  QuantizeActFn quantize_act;
  DotTileFn dot[5];  // indexed by DType
  DotBlockFn dot_block[5];  // indexed by DType; nullptr where matmul should call dot per weight row
  void (*attend)(const AttendArgs& args);  // see kernels.h
  double (*sum_exp)(const float* x, int64_t n, float max);
  void (*silu)(float* x, const float* bias, int64_t n);
  // fp32_to_fp16 of n floats, the same bytes (a NaN as the reference writes it), or nullptr where
  // quantize_row's F16 loop should run the reference. KV caches and converted tensors.
  void (*to_f16)(const float* x, uint16_t* out, int64_t n);
  // Indexed by DType: a fast kernel for packed weights (kernels.h, PackedWeights), or nullptr
  // where the backend has none; matmul then uses packed.cpp's scalar reference, the same bits.
  PackedTileFn packed_tile[5];
};

// True for the block types, whose activations are quantized to BlockQ8A.
constexpr bool is_quantized(DType t) { return t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_1; }

// Element j (0..31) of a Q4 block: low nibbles hold elements 0..15, high nibbles 16..31.
inline int q4_nibble(const uint8_t* qs, int j) {
  return j < kBlockSize / 2 ? (qs[j] & 0x0f) : (qs[j - kBlockSize / 2] >> 4);
}

// Defined in the per-ISA files.
const Backend& scalar_backend();
#if defined(__x86_64__) || defined(_M_X64)
const Backend& avx2_backend();
const Backend& avx512_backend();
#endif
#if defined(__aarch64__)
const Backend& neon_backend();
#endif

// The backend matmul uses now (see dispatch.cpp), and lookup by name (nullptr when unknown).
const Backend& active_backend();
const Backend* find_backend(const char* name);

}  // namespace octet::kernels
