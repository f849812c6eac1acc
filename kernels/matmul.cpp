// Threading and tiling of Y = X W^T over the active backend's tile function.
#include <omp.h>

#include <algorithm>
#include <span>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/backend.h"
#include "kernels/kernels.h"
#include "kernels/packed.h"

namespace octet::kernels {

namespace {

// Weight bytes one thread works through before moving to the next activation tile: small enough
// to stay in L2 while every tile of X passes over them, so W comes from memory once per call.
constexpr size_t kChunkBytes = 128 * 1024;
// Below this many multiply-adds a call takes about as long as waking the other threads, so it
// runs on the calling thread alone (tiny models would otherwise spend most time in barriers).
constexpr int64_t kMinParallelMacs = int64_t{1} << 18;
// A single row of activations (a decode step) is quantized by the calling thread before the
// parallel region: split across threads it is one thread's work anyway, and the barrier after it
// would cost more than the quantization (about a microsecond per thousand values).
inline bool quantize_before_region(int64_t M) { return M == 1; }

[[noreturn]] void bad_call(const char* what, DType t, int64_t K, int64_t N, int64_t ldy) {
  std::fprintf(stderr, "octet::kernels::matmul: %s (wtype %s, K %lld, N %lld, ldy %lld)\n", what,
               dtype_name(t), (long long)K, (long long)N, (long long)ldy);
  std::abort();
}

// n elements of scratch owned by the calling thread, which only ever grows (no allocation once
// warm). Call it outside the parallel region: inside, each worker would get its own empty buffer.
template <typename T>
T* calling_thread_scratch(size_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// One thread's share of `units` split evenly over the team: at least one.
int64_t thread_share(int64_t units) {
  const int64_t threads = omp_get_max_threads();
  return std::max<int64_t>(1, (units + threads - 1) / threads);
}

// Weight units (rows, or packed groups) per work chunk: about kChunkBytes, at least one, and no
// more than a thread's share, so every thread gets work.
int64_t units_per_chunk(size_t unit_bytes, int64_t units) {
  return std::clamp<int64_t>((int64_t)(kChunkBytes / unit_bytes), 1, thread_share(units));
}

// Rows n0..n1 of a row-major W against all M rows of X (quantized or f32, x_stride bytes apart).
void row_major_rows(DotTileFn dot, DotBlockFn dot_block, const char* w_base, size_t w_stride, int64_t n0, int64_t n1,
                    const char* x_base, size_t x_stride, int64_t M, int64_t K, float* Y, int64_t ldy) {
  for (int64_t m0 = 0; m0 < M; m0 += kTileRows) {
    const int rows = (int)std::min<int64_t>(kTileRows, M - m0);
    const char* x_tile = x_base + m0 * x_stride;
    float* y_tile = Y + m0 * ldy;
    if (dot_block != nullptr) {
      for (int64_t n = n0; n < n1; n += kWeightRows)
        dot_block(w_base + n * w_stride, w_stride, (int)std::min<int64_t>(kWeightRows, n1 - n), x_tile, x_stride, rows, K,
                  y_tile + n, ldy);
    } else {
      for (int64_t n = n0; n < n1; ++n) dot(w_base + n * w_stride, x_tile, x_stride, rows, K, y_tile + n, ldy);
    }
  }
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

  // Quantized weights take X as int8 blocks, made once per call.
  const char* x_base = reinterpret_cast<const char*>(X);
  size_t x_stride = (size_t)K * sizeof(float);
  BlockQ8A* act = nullptr;
  if (quantized) {
    act = calling_thread_scratch<BlockQ8A>((size_t)M * (size_t)(K / kBlockSize));
    x_base = reinterpret_cast<const char*>(act);
    x_stride = (size_t)(K / kBlockSize) * sizeof(BlockQ8A);
    if (quantize_before_region(M)) backend.quantize_act(X, act, K, nullptr);
  }

  int64_t chunk_rows = units_per_chunk(w_stride, N);
  if (chunk_rows > kWeightRows) chunk_rows -= chunk_rows % kWeightRows;  // whole register blocks
  const int64_t chunks = (N + chunk_rows - 1) / chunk_rows;
  const char* w_base = static_cast<const char*>(W);

#pragma omp parallel if (M * N * K >= kMinParallelMacs)
  {
    if (quantized && !quantize_before_region(M)) {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m) backend.quantize_act(X + m * K, act + m * (K / kBlockSize), K, nullptr);
    }
    // Dynamic: on a loaded machine a descheduled thread's chunks go to the other threads. Which
    // thread computes an output does not change its bits.
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * chunk_rows, n1 = std::min(N, n0 + chunk_rows);
      row_major_rows(dot, dot_block, w_base, w_stride, n0, n1, x_base, x_stride, M, K, Y, ldy);
    }
  }
}

void matmul_packed(std::span<const PackedProduct> products, const float* X, int64_t M) {
  if (M <= 0 || products.empty()) return;
  if (products.size() > kMaxPackedProducts) bad_call("too many products in one call", products[0].w.dtype, 0, 0, 0);
  const DType wtype = products[0].w.dtype;
  const int64_t K = products[0].w.cols;
  const size_t w_stride = row_bytes(wtype, K);
  if (w_stride == 0 || !packable(wtype)) bad_call("not a packed matrix", wtype, K, products[0].w.rows, products[0].ldy);
  int64_t total_rows = 0;
  for (const PackedProduct& p : products) {
    if (p.w.dtype != wtype || p.w.cols != K)
      bad_call("products of different types or lengths", p.w.dtype, p.w.cols, p.w.rows, p.ldy);
    if (p.ldy < p.w.rows) bad_call("ldy < N", wtype, K, p.w.rows, p.ldy);
    total_rows += p.w.rows;
  }

  const Backend& backend = active_backend();
  const PackedTileFn fast = backend.packed_tile[(int)wtype];
  const PackedTileFn tile = fast != nullptr ? fast : packed_reference_tile(wtype);
  const DotTileFn dot = backend.dot[(int)wtype];
  const DotBlockFn dot_block = backend.dot_block[(int)wtype];
  const int64_t nb = K / kBlockSize;

  // Activation blocks and their offset corrections, as in matmul: once for all the products.
  BlockQ8A* act = calling_thread_scratch<BlockQ8A>((size_t)M * (size_t)nb);
  int32_t* corr = calling_thread_scratch<int32_t>((size_t)M * (size_t)nb);
  const size_t x_stride = (size_t)nb * sizeof(BlockQ8A);

  // A GEMV passes over the weights once: there one contiguous share per thread reads fastest (each
  // thread's prefetch runs ahead through all of it; decode +11-18% over 128 KiB chunks on the
  // 2-vCPU VM), rounded to whole kGemvGroups, which the GEMV kernels take at once. The shares are
  // cut from all the products' groups end to end and handed out statically: a dynamic loop's
  // shared counter is one more cross-core round trip per call, 1.2 us instead of 0.5 for a
  // barrier when the VM's two vCPUs sit far apart. A GEMM works through chunks of whole groups,
  // sized like matmul's, dynamically, then one chunk per product for its row-major tail rows.
  const int64_t total_groups = total_rows / kPackRows;
  const int64_t gemv_share = thread_share(total_groups);
  const int64_t chunk_groups =
      M == 1 ? (gemv_share + kGemvGroups - 1) / kGemvGroups * kGemvGroups
             : units_per_chunk(products[0].w.group_bytes, total_groups);
  // first_chunk[j]: product j's first chunk (GEMM); first_group[j]: its first group end to end (GEMV).
  int64_t first_chunk[kMaxPackedProducts + 1] = {0}, first_group[kMaxPackedProducts + 1] = {0};
  for (size_t j = 0; j < products.size(); ++j) {
    const PackedWeights& w = products[j].w;
    const bool has_tail = w.packed_rows() < w.rows;
    first_chunk[j + 1] = first_chunk[j] + (w.groups + chunk_groups - 1) / chunk_groups + (has_tail ? 1 : 0);
    first_group[j + 1] = first_group[j] + w.groups;
  }
  const int64_t chunks = first_chunk[products.size()];
  const int64_t shares = std::max<int64_t>(1, (total_groups + chunk_groups - 1) / chunk_groups);

  const auto quantize_row = [&](int64_t m) {
    backend.quantize_act(X + m * K, act + m * nb, K, corr + m * nb);
    sums_to_corrections(wtype, corr + m * nb, nb);
  };
  // Product j's groups [g0, g1) for all M rows, or its row-major tail rows when g0 == its groups.
  const auto run_part = [&](size_t j, int64_t g0, int64_t g1) {
    const PackedWeights& w = products[j].w;
    float *Y = products[j].y, *residual = products[j].residual;
    const int64_t ldy = products[j].ldy;
    const auto add_to_residual = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
      if (residual == nullptr) return;
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = n0; n < n1; ++n) residual[m * ldy + n] += Y[m * ldy + n];
    };
    if (g0 < w.groups) {
      for (int64_t m0 = 0; m0 < M; m0 += kPackedTileRows) {
        const int rows = (int)std::min<int64_t>(kPackedTileRows, M - m0);
        tile(w.group(g0), w.group_bytes, g1 - g0, w.quant_offset, nb, act + m0 * nb, corr + m0 * nb, rows,
             Y + m0 * ldy + g0 * kPackRows, ldy);
        add_to_residual(m0, m0 + rows, g0 * kPackRows, g1 * kPackRows);
      }
    } else if (w.packed_rows() < w.rows) {
      row_major_rows(dot, dot_block, reinterpret_cast<const char*>(w.tail()), w_stride, 0, w.rows - w.packed_rows(),
                     reinterpret_cast<const char*>(act), x_stride, M, K, Y + w.packed_rows(), ldy);
      add_to_residual(0, M, w.packed_rows(), w.rows);
    }
  };
  if (quantize_before_region(M)) quantize_row(0);

#pragma omp parallel if (M * total_rows * K >= kMinParallelMacs)
  {
    if (M == 1) {
#pragma omp for schedule(static)
      for (int64_t share = 0; share < shares; ++share) {
        const int64_t begin = share * chunk_groups, end = std::min(total_groups, begin + chunk_groups);
        for (size_t j = 0; j < products.size(); ++j) {
          const int64_t g0 = std::max(begin, first_group[j]), g1 = std::min(end, first_group[j + 1]);
          if (g0 < g1) run_part(j, g0 - first_group[j], g1 - first_group[j]);
          // The tail rows go with the share that holds the product's last group (or would).
          const int64_t last = std::max<int64_t>(first_group[j + 1] - 1, 0);
          if (std::min(last / chunk_groups, shares - 1) == share) run_part(j, products[j].w.groups, 0);
        }
      }
    } else {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m) quantize_row(m);
      // Dynamic, as in matmul: many chunks, so a descheduled thread's go to the other threads.
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < chunks; ++c) {
        size_t j = 0;
        while (c >= first_chunk[j + 1]) ++j;
        const int64_t g0 = (c - first_chunk[j]) * chunk_groups;
        run_part(j, g0, std::min(products[j].w.groups, g0 + chunk_groups));
      }
    }
  }
}

void matmul_packed(const PackedWeights& P, const float* X, int64_t M, float* Y, int64_t ldy, float* residual) {
  const PackedProduct product{P, Y, ldy, residual};
  matmul_packed({&product, 1}, X, M);
}

}  // namespace octet::kernels
