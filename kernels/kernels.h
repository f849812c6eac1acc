// The narrow interface the engine uses for all heavy math. Everything here works on raw memory
// and the block structs of blocks.h; kernels/ includes nothing from engine/.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "kernels/blocks.h"

namespace octet::kernels {

// Bytes taken by one row of n elements of type t (n must be a multiple of kBlockSize for the
// block types). Returns 0 when n is not valid for t.
size_t row_bytes(DType t, int64_t n);
const char* dtype_name(DType t);  // "f32", "f16", "q8_0", "q4_0", "q4_1"
bool dtype_from_name(const char* name, DType* out);
bool dtype_is_valid(uint32_t raw);

// Reference (scalar) conversions between f32 and a stored type. Used by the converter, so the
// bytes in a file never depend on the CPU that wrote it.
void quantize_row(DType t, const float* src, void* dst, int64_t n);
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// Y[m][n] = sum_k X[m][k] * W[n][k]   (X: M x K f32 row-major, W: N rows of K elements of type
// wtype, Y: M x N f32 row-major; ldy is Y's row stride in floats, >= N).
// Quantized weights: X is quantized per block to int8 on the fly, so the inner loop is
// int8 x int8 (or int4 x int8) into int32. Runs on the OpenMP threads of the caller's team
// size (omp_get_max_threads()). Allocates nothing per call once warmed up. A K that row_bytes
// rejects for wtype, or ldy < N, is a caller bug: it aborts with a message.
void matmul(DType wtype, const void* W, int64_t N, int64_t K, const float* X, int64_t M, float* Y,
            int64_t ldy);

// Attention of n_q queries that share one set of n_keys keys and values (the query heads of a
// GQA group at one position, or a single head):
//   out[i] = sum_j softmax_j(scale * q[i] . k_j) v_j,   k_j = keys[j] + offset, v_j = values[j] + offset,
// vectors of head_dim elements of kv_type: F32, F16 (a KV cache in half the memory) or Q8_0 (~53%
// of F16's, read as its dequantized values; head_dim and offset must then be multiples of 32,
// which the caller checks); q[i] = q + i * q_stride, out[i] = out + i * out_stride, in f32. Keys
// are found through pointers, so they may lie anywhere: a cache, a packed batch, a beam's
// ancestors. scratch holds attend_scratch_floats(n_q, n_keys, head_dim) floats. Runs on the
// calling thread only: callers run many at once. A query's result has the same bits whatever
// other queries share the call, so callers may group queries as they like.
// SIMD backends use a polynomial exp (within 2 ulp of expf; inputs below -87.3 give ~1e-38,
// not 0), so they agree with the scalar reference to rounding, not bit for bit.
struct AttendArgs {
  const float* q;
  int64_t q_stride;
  int64_t n_q;
  DType kv_type;
  const void* const* keys;
  const void* const* values;
  int64_t offset;  // in elements
  int64_t n_keys;
  // Optional (nullptr: every query sees all n_keys): query i sees keys [0, key_counts[i]) only,
  // 1 <= key_counts[i] <= n_keys, with the bits of a call of key_counts[i] keys. Causal
  // attention of several positions in one call.
  const int64_t* key_counts = nullptr;
  int64_t head_dim;
  float scale;
  float* scratch;
  float* out;
  int64_t out_stride;
};
void attend(const AttendArgs& args);
// The scores, one per query and key, and room for a block of keys widened to f32.
constexpr int64_t attend_scratch_floats(int64_t n_q, int64_t n_keys, int64_t head_dim) {
  return n_q * (n_keys + 1) + 16 * ((head_dim + 15) / 16 * 16);
}

// ---- Packed (interleaved) weights ----------------------------------------------------------
//
// A Q8_0 or Q4_0 matrix rearranged so that one 64-byte vector holds 4 consecutive k-bytes of
// kPackRows = 16 different rows: a SIMD kernel's 16 int32 lanes are then 16 outputs, and no
// output needs a horizontal sum. The converter writes matrices this way (Layout::Packed), so the
// runtime maps them as they are. A packed matrix of N rows, K columns (nb = K / 32 blocks) is
// N / 16 groups of group_bytes each, then the N % 16 remaining rows, row-major. One group:
//   scales: nb x 16 fp16 (block b, row i at [b * 16 + i]), zero-padded to a multiple of 64 bytes; then
//   Q8_0: per block 8 chunks of 64 bytes; chunk c holds, for row i at bytes 4i..4i+3, the weights
//         4c..4c+3 of row i's block, stored as u8 = int8 + 128 (xor 0x80);
//   Q4_0: per block 4 vectors of 64 bytes; vector p holds at bytes 4i..4i+3 the bytes
//         qs[4p..4p+3] of row i's block, so low nibbles are elements 4p..4p+3, high nibbles 16+4p..16+4p+3.
// Per output, the arithmetic is exact int32 block sums then acc = fma(float(sum_b), dw_b * dx_b, acc)
// in block order (packed_reference in packed.cpp); every backend's packed kernel gives those bits.
constexpr int kPackRows = 16;

// A packed matrix in memory (a mapped file, or a PackedBuffer); a view, owning nothing. Its
// data must be 64-byte aligned.
struct PackedWeights {
  DType dtype = DType::Q8_0;
  int64_t rows = 0;         // N
  int64_t cols = 0;         // K
  int64_t groups = 0;       // rows / kPackRows: rows [0, groups * kPackRows) are interleaved
  size_t group_bytes = 0;   // bytes per group
  size_t quant_offset = 0;  // offset of the quants within a group (after the scales)
  const uint8_t* data = nullptr;

  const uint8_t* group(int64_t g) const { return data + (size_t)g * group_bytes; }
  int64_t packed_rows() const { return groups * kPackRows; }
  const uint8_t* tail() const { return data + (size_t)groups * group_bytes; }  // the remaining rows
};

bool packable(DType t);  // Q8_0, Q4_0
// Bytes of the packed form of an N x K matrix of type t; 0 when t is not packable, N < 0 or K is
// not a valid row length for t.
size_t packed_bytes(DType t, int64_t N, int64_t K);
// The packed matrix at `data` (packed_bytes(t, N, K) bytes, 64-byte aligned).
PackedWeights packed_view(DType t, const void* data, int64_t N, int64_t K);
// A packed copy of W (N row-major rows of K elements of type t), in memory of its own (64-byte
// aligned): what the converter writes. Packs on the calling thread.
class PackedBuffer {
 public:
  PackedBuffer(DType t, const void* W, int64_t N, int64_t K);
  const PackedWeights& view() const { return view_; }
  const uint8_t* bytes() const { return storage_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> storage_;
  size_t size_ = 0;
  PackedWeights view_;
};

// True when the active backend has a fast packed kernel for t; elsewhere packed matrices run on
// the scalar reference (same bits, slower).
bool packed_kernel_active(DType t);
// Row n (< N) of a packed matrix, dequantized: the same floats as dequantize_row of the original row.
void dequantize_packed_row(const PackedWeights& P, int64_t n, float* out);
// Y = X W^T as matmul() does, for a packed W. No output's bits depend on M or the thread count:
// the interleaved rows get the reference's bits under every backend, the remaining N % 16 rows
// those of matmul() on the row-major kernels.
void matmul_packed(const PackedWeights& P, const float* X, int64_t M, float* Y, int64_t ldy, float* residual = nullptr);
// Several packed matrices of one type and K applied to the same X (a layer's q, k and v, or its
// gate and up): Y_j = X W_j^T, with X quantized once and all their rows shared out in one
// parallel region; each output has the bits a matmul_packed of its own matrix gives it.
// With a residual, residual += Y as well (the same [M][ldy] layout, not aliasing Y), each output
// added by the thread that computed it, while it is in cache: a residual connection without a
// pass of its own, with the bits of one.
struct PackedProduct {
  PackedWeights w;
  float* y;
  int64_t ldy;
  float* residual = nullptr;
};
constexpr size_t kMaxPackedProducts = 4;
void matmul_packed(std::span<const PackedProduct> products, const float* X, int64_t M);

// Long-row float math of the decoders, on the active backend (SIMD backends use the polynomial
// exp described above).
// sum_i exp(x[i] - max), x[i] <= max: a softmax denominator; partial sums are added in double.
double sum_exp(const float* x, int64_t n, float max);
// x[i] = silu(x[i] + bias[i]) = v / (1 + exp(-v)); bias may be null. The swish activation.
void silu(float* x, const float* bias, int64_t n);

// Which implementation is active: "scalar", "avx2", "avx512", "neon". The best one this CPU
// supports is chosen at start-up; the environment variable OCTET_KERNELS=<name> or
// force_backend() overrides it. force_backend returns false (and changes nothing) when the CPU
// cannot run that backend or the name is unknown.
const char* backend_name();
bool force_backend(const char* name);
// The backends this CPU can run, best last, as a null-terminated list of names.
const char* const* available_backends();

}  // namespace octet::kernels
