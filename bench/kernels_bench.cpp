// kernels-bench: throughput of octet::kernels::matmul per weight type and backend.
//   GEMV (M = 1, decode): GB/s of weight bytes read, against a STREAM-like read probe. The
//     weights rotate through enough copies to exceed the last-level cache, as in a real decode
//     step (every layer's weights pass once), so the numbers are memory, not cache, bandwidth.
//   GEMM (M = 64..512, prefill): GMAC/s, and the TinyLlama-1.1B prefill rate that implies (22
//     layers of q, k, v, o, gate, up, down; 0.968 GMAC per token, lm head excluded).
//   Attention (prefill of 512 positions over an f16 KV cache, ops::attention as a model layer runs
//     it): ns per query head and key, SmolLM2-135M (9 heads, 3 KV heads) and TinyLlama-1.1B (32, 4)
//     shapes, head size 64.
// Each figure is the median of --reps timed runs (the machine may be shared: medians, not bests).
// A backend with packed kernels (kernels.h, PackedWeights) is timed twice for the packable types:
// row-major (its name) and packed, the layout the converter writes (name/p, matmul_packed).
//
//   kernels-bench [--threads 1,2] [--backends avx512,avx2] [--types q8_0,q4_0] [--reps 5] [--quick]
//                 [--only gemv,gemm,translation,attention]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "kernels/kernels.h"

using namespace octet;
using namespace octet::kernels;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const size_t end = comma == std::string::npos ? s.size() : comma;
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Deterministic pseudo-random floats, roughly N(0, 1)-shaped (sum of uniforms), fast enough for
// 65M weights.
void fill_random(float* x, size_t n, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    float acc = 0;
    for (int j = 0; j < 3; ++j) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      acc += (float)(s >> 40) * (1.0f / 16777216.0f) - 0.5f;
    }
    x[i] = acc * 2.0f;
  }
}

std::vector<uint8_t> random_weights(DType t, int64_t n, int64_t k, uint64_t seed) {
  const size_t rb = row_bytes(t, k);
  std::vector<uint8_t> w(rb * n);
  std::vector<float> row(k);
  for (int64_t r = 0; r < n; ++r) {
    fill_random(row.data(), k, seed + r);
    quantize_row(t, row.data(), w.data() + r * rb, k);
  }
  return w;
}

// Runs fn `reps` times for at least min_s each (fn may repeat inside), returns the median time
// of one fn() call.
template <typename Fn>
double time_median(Fn&& fn, int reps, double min_s) {
  fn();  // warm up (thread pool, scratch buffers, page faults)
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    int calls = 0;
    const auto t0 = Clock::now();
    double el;
    do {
      fn();
      ++calls;
      el = seconds_since(t0);
    } while (el < min_s);
    times.push_back(el / calls);
  }
  return median(times);
}

// STREAM-like read bandwidth: sum a buffer much larger than the last-level cache.
double read_bandwidth_gbs(int reps) {
  const size_t n = (size_t)256 << 20 >> 3;  // 256 MiB of uint64
  static std::vector<uint64_t> buf;
  if (buf.empty()) {
    buf.resize(n);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) buf[i] = i * 2654435761u;
  }
  volatile uint64_t sink = 0;
  const double t = time_median(
      [&] {
        uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
        for (size_t i = 0; i < n; i += 8) {
          total += buf[i] + buf[i + 1] + buf[i + 2] + buf[i + 3] + buf[i + 4] + buf[i + 5] + buf[i + 6] + buf[i + 7];
        }
        sink = sink + total;
      },
      reps, 0.2);
  return (double)n * 8 / t / 1e9;
}

struct Shape {
  const char* what;
  int64_t n, k;
};

// TinyLlama-1.1B: hidden 2048, 32 heads, 4 KV heads of 64, FFN 5632, 22 layers.
const std::vector<Shape> kTinyLlamaLayer = {{"q", 2048, 2048}, {"k", 256, 2048},    {"v", 256, 2048},   {"o", 2048, 2048},
                                            {"gate", 5632, 2048}, {"up", 5632, 2048}, {"down", 2048, 5632}};
constexpr int kTinyLlamaLayers = 22;
// opus-mt-en-zh decoder layer: d_model 512, FFN 2048; self-attention q, k, v, o, cross-attention q
// and o (its keys and values come once per source), up, down.
const std::vector<Shape> kOpusMtDecoderLayer = {{"q", 512, 512},     {"k", 512, 512},      {"v", 512, 512},
                                                {"o", 512, 512},     {"cross q", 512, 512}, {"cross o", 512, 512},
                                                {"up", 2048, 512}, {"down", 512, 2048}};

// A layer's causal attention over `positions` new tokens from an empty f16 cache.
struct AttentionShape {
  const char* what;
  int64_t heads, kv_heads;
};
constexpr int64_t kAttentionHeadDim = 64, kAttentionPositions = 512;

void bench_attention(const std::vector<std::string>& backends, const std::vector<int>& threads, int reps) {
  const int64_t hd = kAttentionHeadDim, n = kAttentionPositions;
  for (const AttentionShape& s : {AttentionShape{"SmolLM2-135M", 9, 3}, AttentionShape{"TinyLlama-1.1B", 32, 4}}) {
    std::vector<float> q(n * s.heads * hd), out(q.size()), kv(s.kv_heads * n * hd);
    fill_random(q.data(), q.size(), 11);
    std::vector<uint16_t> keys(kv.size()), values(kv.size());
    fill_random(kv.data(), kv.size(), 12);
    quantize_row(DType::F16, kv.data(), keys.data(), (int64_t)kv.size());
    fill_random(kv.data(), kv.size(), 13);
    quantize_row(DType::F16, kv.data(), values.data(), (int64_t)kv.size());
    const auto key_rows = ops::kv_rows(DType::F16, keys.data(), n, hd), value_rows = ops::kv_rows(DType::F16, values.data(), n, hd);
    const ops::KvCache cache{DType::F16, key_rows.data(), value_rows.data(), n};
    const ops::AttentionShape shape{s.heads, s.kv_heads, hd, 0};
    const double pairs = (double)s.heads * n * (n + 1) / 2;  // causal: position p sees p + 1 keys
    for (const std::string& b : backends) {
      if (!force_backend(b.c_str())) continue;
      for (int th : threads) {
        omp_set_num_threads(th);
        const double sec = time_median([&] { ops::attention(q.data(), cache, n, 0, shape, out.data()); }, reps, 0.3);
        std::printf("attention f16 %-7s %-14s prefill %lld  threads %d: %6.2f ns per query head and key (x threads)  %7.2f ms\n",
                    b.c_str(), s.what, (long long)n, th, sec * 1e9 * th / pairs, sec * 1e3);
      }
    }
  }
}

// GEMM: M activation rows against each of `layer`'s matrices in turn, as a model layer runs them;
// GMAC/s per backend (row-major, and packed where it has packed kernels) and thread count, and
// `per_layer`'s figure from the seconds a layer took, when given.
void bench_gemm(DType t, const std::string& tname, const char* what, const std::vector<Shape>& layer, int64_t m,
                const std::vector<std::string>& backends, const std::vector<int>& threads, int reps,
                std::string (*per_layer)(double seconds, int64_t m) = nullptr) {
  std::vector<std::vector<uint8_t>> weights;
  double macs = 0;
  int64_t widest = 0;
  for (const Shape& s : layer) {
    weights.push_back(random_weights(t, s.n, s.k, 77 + s.n));
    macs += (double)s.n * s.k;
    widest = std::max({widest, s.n, s.k});
  }
  std::vector<PackedBuffer> packed;
  std::vector<float> x(m * widest), y(m * widest);
  fill_random(x.data(), x.size(), 9);
  for (const std::string& b : backends) {
    if (!force_backend(b.c_str())) continue;
    for (bool pack : {false, true}) {
      if (pack && !packed_kernel_active(t)) continue;
      if (pack && packed.empty())
        for (size_t i = 0; i < layer.size(); ++i) packed.emplace_back(t, weights[i].data(), layer[i].n, layer[i].k);
      const std::string label = b + (pack ? "/p" : "");
      for (int th : threads) {
        omp_set_num_threads(th);
        const double sec = time_median(
            [&] {
              for (size_t i = 0; i < layer.size(); ++i) {
                if (pack) matmul_packed(packed[i].view(), x.data(), m, y.data(), layer[i].n);
                else matmul(t, weights[i].data(), layer[i].n, layer[i].k, x.data(), m, y.data(), layer[i].n);
              }
            },
            reps, 0.3);
        std::printf("GEMM %-5s %-9s %-22s M=%-4lld threads %d: %7.1f GMAC/s%s\n", tname.c_str(), label.c_str(), what,
                    (long long)m, th, macs * m / sec / 1e9, per_layer ? per_layer(sec, m).c_str() : "");
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads = {1, 2};
  std::vector<std::string> backends, types = {"q8_0", "q4_0"};
  std::vector<int64_t> gemm_ms = {64, 128, 512};
  int reps = 5;
  bool quick = false;
  std::vector<std::string> sections = {"gemv", "gemm", "translation", "attention"};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--threads") threads.clear(), [&] { for (auto& s : split(v)) threads.push_back(std::atoi(s.c_str())); }(), ++i;
    else if (a == "--backends") backends = split(v), ++i;
    else if (a == "--types") types = split(v), ++i;
    else if (a == "--m") gemm_ms.clear(), [&] { for (auto& s : split(v)) gemm_ms.push_back(std::atoll(s.c_str())); }(), ++i;
    else if (a == "--reps") reps = std::max(1, std::atoi(v)), ++i;
    else if (a == "--quick") quick = true;
    else if (a == "--only") sections = split(v), ++i;
    else {
      std::fprintf(stderr, "usage: %s [--threads 1,2] [--backends avx512,avx2] [--types q8_0,q4_0] [--m 64,128,512] [--reps 5] [--quick] [--only gemv,gemm,translation,attention]\n", argv[0]);
      return 2;
    }
  }
  if (backends.empty())
    for (const char* const* n = available_backends(); *n; ++n)
      if (std::strcmp(*n, "scalar") != 0) backends.push_back(*n);
  if (quick) reps = 3, gemm_ms = {128};

  double load[3] = {0, 0, 0};
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
    std::fclose(f);
  }
  std::printf("kernels-bench: default backend %s, load average %.2f %.2f %.2f, medians of %d runs\n", backend_name(),
              load[0], load[1], load[2], reps);

  const auto wanted = [&](const char* section) { return std::find(sections.begin(), sections.end(), section) != sections.end(); };
  for (int th : wanted("gemv") ? threads : std::vector<int>{}) {
    omp_set_num_threads(th);
    std::printf("read bandwidth (STREAM-like sum, 256 MiB)  threads %d: %6.1f GB/s\n", th, read_bandwidth_gbs(reps));
  }

  const std::vector<Shape> gemv_shapes = {{"ffn up 5632x2048", 5632, 2048}, {"ffn down 2048x5632", 2048, 5632}, {"lm head 32000x2048", 32000, 2048}};

  for (const std::string& tname : types) {
    DType t;
    if (!dtype_from_name(tname.c_str(), &t)) {
      std::fprintf(stderr, "unknown type %s\n", tname.c_str());
      return 2;
    }
    // GEMV: copies of each shape adding up to >= 96 MiB, so no call finds its weights in L3.
    for (const Shape& s : wanted("gemv") ? gemv_shapes : std::vector<Shape>{}) {
      const size_t bytes = row_bytes(t, s.k) * s.n;
      const int copies = (int)std::max<size_t>(1, ((size_t)96 << 20) / bytes + 1);
      std::vector<std::vector<uint8_t>> ws;
      for (int c = 0; c < copies; ++c) ws.push_back(random_weights(t, s.n, s.k, 1000 * c + 1));
      std::vector<float> x(s.k), y(s.n);
      fill_random(x.data(), x.size(), 7);
      std::vector<PackedBuffer> ps;  // the same copies packed, for the backends with packed kernels
      for (const std::string& b : backends) {
        if (!force_backend(b.c_str())) continue;
        for (bool packed : {false, true}) {
          if (packed && !packed_kernel_active(t)) continue;
          if (packed && ps.empty())
            for (int c = 0; c < copies; ++c) ps.emplace_back(t, ws[c].data(), s.n, s.k);
          const std::string label = b + (packed ? "/p" : "");
          for (int th : threads) {
            omp_set_num_threads(th);
            int next = 0;
            const double sec = time_median(
                [&] {
                  if (packed) matmul_packed(ps[next].view(), x.data(), 1, y.data(), s.n);
                  else matmul(t, ws[next].data(), s.n, s.k, x.data(), 1, y.data(), s.n);
                  next = (next + 1) % copies;
                },
                reps, 0.3);
            std::printf("GEMV %-5s %-9s %-20s threads %d: %7.1f GB/s  %8.1f us/call\n", tname.c_str(), label.c_str(), s.what,
                        th, bytes / sec / 1e9, sec * 1e6);
          }
        }
      }
    }
    // GEMM: the TinyLlama layer, M tokens at once.
    for (int64_t m : wanted("gemm") ? gemm_ms : std::vector<int64_t>{})
      bench_gemm(t, tname, "TinyLlama layer", kTinyLlamaLayer, m, backends, threads, reps, [](double sec, int64_t m) {
        char note[64];
        std::snprintf(note, sizeof note, "  ~%6.1f tok/s prefill (matmuls only)", m / (sec * kTinyLlamaLayers));
        return std::string(note);
      });
    // GEMM: one translation decoder step at beam 4, batch 32 (128 rows), opus-mt-en-zh shape; the
    // output head has more multiply-adds than the six layers together.
    if (wanted("translation")) {
      bench_gemm(t, tname, "opus-mt decoder layer", kOpusMtDecoderLayer, 128, backends, threads, reps);
      bench_gemm(t, tname, "opus-mt output head", {{"head", 65001, 512}}, 128, backends, threads, reps);
    }
  }
  if (wanted("attention")) bench_attention(backends, threads, reps);
  return 0;
}
