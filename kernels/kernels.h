// The narrow interface the engine uses for all heavy math. Everything here works on raw memory
// and the block structs of blocks.h; kernels/ includes nothing from engine/.
#pragma once
#include <cstddef>
#include <cstdint>

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
// vectors of head_dim elements of kv_type (F32 or F16: a KV cache in half the memory); q[i] =
// q + i * q_stride, out[i] = out + i * out_stride, in f32. Keys are found through pointers, so they
// may lie anywhere: a cache, a packed batch, a beam's ancestors. scratch holds n_q * n_keys
// floats. Runs on the calling thread only: callers run many at once.
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
  int64_t head_dim;
  float scale;
  float* scratch;
  float* out;
  int64_t out_stride;
};
void attend(const AttendArgs& args);

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
