// Threading and tiling of Y = X W^T over the active backend's tile function.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/backend.h"
#include "kernels/kernels.h"

namespace octet::kernels {

namespace {

// Weight bytes one thread works through before moving to the next activation tile: small enough
// to stay in L2 while every tile of X passes over them, so W comes from memory once per call.
constexpr size_t kChunkBytes = 128 * 1024;
// Below this many multiply-adds a call takes about as long as waking the other threads, so it
// runs on the calling thread alone (tiny models would otherwise spend most time in barriers).
constexpr int64_t kMinParallelMacs = int64_t{1} << 18;

[[noreturn]] void bad_call(const char* what, DType t, int64_t K, int64_t N, int64_t ldy) {
  std::fprintf(stderr, "octet::kernels::matmul: %s (wtype %s, K %lld, N %lld, ldy %lld)\n", what,
               dtype_name(t), (long long)K, (long long)N, (long long)ldy);
  std::abort();
}

}  // namespace

void matmul(DType wtype, const void* W, int64_t N, int64_t K, const float* X, int64_t M, float* Y,
            int64_t ldy) {
  if (M <= 0 || N <= 0) return;
  if (ldy < N) bad_call("ldy < N", wtype, K, N, ldy);
  if (K <= 0) {
    for (int64_t m = 0; m < M; ++m) std::fill(Y + m * ldy, Y + m * ldy + N, 0.0f);
    return;
  }
  const size_t w_stride = row_bytes(wtype, K);
  if (w_stride == 0) bad_call("K is not valid for the weight type", wtype, K, N, ldy);

  const Backend& backend = active_backend();
  const DotTileFn dot = backend.dot[(int)wtype];
  const DotBlockFn dot_block = backend.dot_block[(int)wtype];
  const bool quantized = is_quantized(wtype);

  // Quantized weights take X as int8 blocks, made once per call in a buffer owned by the calling
  // thread, which only ever grows. The pointer is taken here: inside the parallel region the name
  // would denote each worker's own (empty) thread_local buffer.
  thread_local std::vector<BlockQ8A> act_scratch;
  const char* x_base = reinterpret_cast<const char*>(X);
  size_t x_stride = (size_t)K * sizeof(float);
  BlockQ8A* act = nullptr;
  if (quantized) {
    const size_t blocks = (size_t)M * (size_t)(K / kBlockSize);
    if (act_scratch.size() < blocks) act_scratch.resize(blocks);
    act = act_scratch.data();
    x_base = reinterpret_cast<const char*>(act);
    x_stride = (size_t)(K / kBlockSize) * sizeof(BlockQ8A);
  }

  const int64_t threads = omp_get_max_threads();
  const int64_t rows_per_thread = (N + threads - 1) / threads;
  int64_t chunk_rows = std::clamp<int64_t>((int64_t)(kChunkBytes / w_stride), 1, rows_per_thread);
  if (chunk_rows > kWeightRows) chunk_rows -= chunk_rows % kWeightRows;  // whole register blocks
  const int64_t chunks = (N + chunk_rows - 1) / chunk_rows;
  const char* w_base = static_cast<const char*>(W);

#pragma omp parallel if (M * N * K >= kMinParallelMacs)
  {
    if (quantized) {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m) backend.quantize_act(X + m * K, act + m * (K / kBlockSize), K);
    }
    // Dynamic: on a loaded machine a descheduled thread's chunks go to the other threads. Which
    // thread computes an output does not change its bits.
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * chunk_rows, n1 = std::min(N, n0 + chunk_rows);
      for (int64_t m0 = 0; m0 < M; m0 += kTileRows) {
        const int rows = (int)std::min<int64_t>(kTileRows, M - m0);
        const char* x_tile = x_base + m0 * x_stride;
        float* y_tile = Y + m0 * ldy;
        if (dot_block != nullptr) {
          for (int64_t n = n0; n < n1; n += kWeightRows)
            dot_block(w_base + n * w_stride, w_stride, (int)std::min<int64_t>(kWeightRows, n1 - n), x_tile, x_stride, rows,
                      K, y_tile + n, ldy);
        } else {
          for (int64_t n = n0; n < n1; ++n) dot(w_base + n * w_stride, x_tile, x_stride, rows, K, y_tile + n, ldy);
        }
      }
    }
  }
}

}  // namespace octet::kernels
