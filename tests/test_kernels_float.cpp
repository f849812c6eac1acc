// The float kernels on every backend this CPU runs, against double precision: attend (with f32,
// f16 and q8_0 keys/values), sum_exp and silu.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels.h"

using namespace octet;
using namespace octet::kernels;

namespace {

std::vector<std::string> backends() {
  std::vector<std::string> out;
  for (const char* const* n = available_backends(); *n; ++n) out.push_back(*n);
  return out;
}

struct BackendGuard {
  std::string saved = backend_name();
  ~BackendGuard() { force_backend(saved.c_str()); }
};

// n_q queries over n_keys key/value rows scattered through a larger buffer (rows d elements
// wide, the head at `offset`), as a beam's cache rows are. Q8_0 rows are whole blocks: the head
// starts one block in and ends the row.
struct Problem {
  int64_t n_q, n_keys, head_dim, offset, d;
  DType kv_type;
  float scale;
  std::vector<float> q;
  std::vector<uint8_t> memory_keys, memory_values;  // d elements of kv_type per row
  std::vector<const void*> keys, values;
  std::vector<std::vector<float>> key_heads, value_heads;  // the heads as the kernel must read them

  Problem(std::mt19937& rng, int64_t n_q, int64_t n_keys, int64_t head_dim, float magnitude, DType kv_type)
      : n_q(n_q), n_keys(n_keys), head_dim(head_dim), offset(kv_type == DType::Q8_0 ? kBlockSize : 3),
        d(head_dim + (kv_type == DType::Q8_0 ? kBlockSize : 5)), kv_type(kv_type),
        scale(1.0f / std::sqrt(float(head_dim))) {
    std::normal_distribution<float> normal(0.0f, magnitude);
    const int64_t memory_rows = 2 * n_keys + 1;
    const size_t row = row_bytes(kv_type, d);
    for (int64_t i = 0; i < n_q * head_dim; ++i) q.push_back(normal(rng));
    memory_keys.resize(memory_rows * row);
    memory_values.resize(memory_rows * row);
    std::vector<float> k(d), v(d);
    for (int64_t r = 0; r < memory_rows; ++r) {
      for (int64_t i = 0; i < d; ++i) k[i] = normal(rng), v[i] = normal(rng) / magnitude;
      quantize_row(kv_type, k.data(), memory_keys.data() + r * row, d);
      quantize_row(kv_type, v.data(), memory_values.data() + r * row, d);
    }
    std::uniform_int_distribution<int64_t> pick(0, memory_rows - 1);
    for (int64_t j = 0; j < n_keys; ++j) {
      const int64_t r = pick(rng);
      keys.push_back(memory_keys.data() + r * row);
      values.push_back(memory_values.data() + r * row);
      key_heads.push_back(head_of(keys.back()));
      value_heads.push_back(head_of(values.back()));
    }
  }

  std::vector<float> head_of(const void* row) const {
    std::vector<float> all(d);
    dequantize_row(kv_type, row, all.data(), d);
    return {all.begin() + offset, all.begin() + offset + head_dim};
  }

  // out rows are head_dim + 2 apart; the gaps must stay untouched.
  // Queries first_query .. first_query + queries - 1 over the first `keys_seen` keys (default:
  // all), each limited to its key_counts entry when given.
  std::vector<float> run(int64_t first_query = 0, int64_t queries = -1, int64_t keys_seen = -1,
                         const int64_t* key_counts = nullptr) const {
    if (queries < 0) queries = n_q;
    if (keys_seen < 0) keys_seen = n_keys;
    const int64_t out_stride = head_dim + 2;
    std::vector<float> scratch(attend_scratch_floats(queries, keys_seen, head_dim), NAN), out(queries * out_stride, -7.0f);
    attend({.q = q.data() + first_query * head_dim,
            .q_stride = head_dim,
            .n_q = queries,
            .kv_type = kv_type,
            .keys = keys.data(),
            .values = values.data(),
            .offset = offset,
            .n_keys = keys_seen,
            .key_counts = key_counts,
            .head_dim = head_dim,
            .scale = scale,
            .scratch = scratch.data(),
            .out = out.data(),
            .out_stride = out_stride});
    return out;
  }

  double expected(int64_t i, int64_t c) const {
    std::vector<double> s(n_keys);
    double max = -INFINITY, sum = 0, out = 0;
    for (int64_t j = 0; j < n_keys; ++j) {
      for (int64_t e = 0; e < head_dim; ++e) s[j] += double(q[i * head_dim + e]) * key_heads[j][e];
      max = std::max(max, s[j] *= scale);
    }
    for (double& v : s) sum += (v = std::exp(v - max));
    for (int64_t j = 0; j < n_keys; ++j) out += s[j] / sum * value_heads[j][c];
    return out;
  }
};

}  // namespace

TEST_CASE("attend: every backend matches a double-precision softmax attention") {
  BackendGuard guard;
  std::mt19937 rng(11);
  for (const std::string& backend : backends())
  for (DType kv_type : {DType::F32, DType::F16, DType::Q8_0}) {
    REQUIRE(force_backend(backend.c_str()));
    // Head sizes with and without vector tails (Q8_0: multiples of 32 only); key counts around the
    // vector widths; scores up to ~+-1000 (magnitude 8: the max shift must work) and near-uniform
    // ones (magnitude 0.1). The reference reads the stored (rounded) keys and values, so every type
    // has the same bound.
    const std::vector<int64_t> head_dims =
        kv_type == DType::Q8_0 ? std::vector<int64_t>{32, 64, 96, 128} : std::vector<int64_t>{4, 8, 17, 40, 64, 80, 128};
    for (int64_t head_dim : head_dims) {
      for (int64_t n_keys : {1, 2, 7, 16, 17, 33, 300}) {
        for (float magnitude : {0.1f, 1.0f, 8.0f}) {
          CAPTURE(backend);
          CAPTURE(dtype_name(kv_type));
          CAPTURE(head_dim);
          CAPTURE(n_keys);
          CAPTURE(magnitude);
          const Problem p(rng, 3, n_keys, head_dim, magnitude, kv_type);
          const std::vector<float> out = p.run();
          const int64_t stride = head_dim + 2;
          // Values are ~N(0, 1) and the output a convex combination of them: an absolute bound.
          // float scores of dot products of length <= 128 round at ~1e-6 relative, which e^s turns
          // into the same relative error of each weight; 2e-5 leaves room for magnitude-8 scores
          // (|s| ~ 1000, so an ulp of s is ~6e-5 absolute before exp, but both sides round s).
          double worst = 0;
          for (int64_t i = 0; i < p.n_q; ++i)
            for (int64_t c = 0; c < head_dim; ++c)
              worst = std::max(worst, std::fabs(out[i * stride + c] - p.expected(i, c)) / (magnitude > 4 ? 8 : 1));
          CHECK(worst < 2e-5);
          for (int64_t i = 0; i < p.n_q; ++i) CHECK((out[i * stride + head_dim] == -7.0f && out[i * stride + head_dim + 1] == -7.0f));
        }
      }
    }
  }
}

TEST_CASE("attend: a query's result has the same bits alone, in any group, and limited by key counts") {
  // The engine groups query heads one way for a prompt and another for a decode step, and a
  // prompt's positions share a call with each limited to its causal prefix; a prompt run as one
  // batch must equal it run token by token, bit for bit.
  BackendGuard guard;
  std::mt19937 rng(12);
  // Key counts that straddle the blocks of keys the SIMD kernels score together: a key is scored
  // in a block in one call and alone in another.
  const int64_t counts[] = {1, 15, 16, 17, 31, 33, 44, 45};
  for (const std::string& backend : backends())
  for (DType kv_type : {DType::F32, DType::F16, DType::Q8_0})
  for (int64_t head_dim : {40, 64, 96}) {
    if (kv_type == DType::Q8_0 && head_dim % kBlockSize) continue;
    REQUIRE(force_backend(backend.c_str()));
    CAPTURE(backend);
    CAPTURE(dtype_name(kv_type));
    CAPTURE(head_dim);
    // 8 queries: the value sums take them in passes of up to 6, so a query's pass and its place
    // in it change between the calls below.
    const Problem p(rng, 8, 45, head_dim, 1.0f, kv_type);
    const std::vector<float> group = p.run(), limited = p.run(0, 8, 45, counts);
    const int64_t stride = p.head_dim + 2;
    for (int64_t i = 0; i < p.n_q; ++i) {
      CAPTURE(counts[i]);
      const std::vector<float> alone = p.run(i, 1), alone_limited = p.run(i, 1, counts[i]);
      CHECK(std::memcmp(alone.data(), group.data() + i * stride, p.head_dim * sizeof(float)) == 0);
      CHECK(std::memcmp(alone_limited.data(), limited.data() + i * stride, p.head_dim * sizeof(float)) == 0);
    }
    const std::vector<float> middle = p.run(2, 5);
    CHECK(std::memcmp(middle.data(), group.data() + 2 * stride, (5 * stride - 2) * sizeof(float)) == 0);
  }
}

TEST_CASE("sum_exp and silu: every backend within float rounding of double precision") {
  BackendGuard guard;
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.0f, 6.0f);
  for (const std::string& backend : backends()) {
    REQUIRE(force_backend(backend.c_str()));
    CAPTURE(backend);
    for (int64_t n : {1, 7, 16, 63, 64, 65, 513, 65001}) {
      CAPTURE(n);
      std::vector<float> x(n);
      for (float& v : x) v = normal(rng);
      float max = x[0];
      for (float v : x) max = std::max(max, v);
      double expected = 0;
      for (float v : x) expected += std::exp(double(v) - max);
      // Each term within 2 ulp (~2.4e-7 relative), float partial sums over <= 512 terms.
      CHECK(std::fabs(sum_exp(x.data(), n, max) - expected) <= 2e-6 * expected);

      std::vector<float> bias(n), with_bias = x, without = x;
      for (float& v : bias) v = normal(rng);
      silu(with_bias.data(), bias.data(), n);
      silu(without.data(), nullptr, n);
      double worst = 0;
      for (int64_t i = 0; i < n; ++i) {
        for (auto [got, v] : {std::pair{double(with_bias[i]), double(x[i] + bias[i])}, {double(without[i]), double(x[i])}}) {
          const double want = v / (1 + std::exp(-v));
          // Relative to the value, plus an absolute floor for the far negative side, where the
          // clamped exp gives ~1e-36 for silu(v < -87) instead of a subnormal.
          worst = std::max(worst, std::fabs(got - want) / (std::fabs(want) + 1e-30));
        }
      }
      CHECK(worst < 1e-6);
    }
    // Edge values: 0, -0, far on both sides.
    std::vector<float> edges = {0.0f, -0.0f, 100.0f, -100.0f, 88.0f, -88.0f};
    silu(edges.data(), nullptr, edges.size());
    CHECK(edges[0] == 0.0f);
    CHECK(edges[1] == 0.0f);
    CHECK(edges[2] == doctest::Approx(100.0f));
    CHECK(std::fabs(edges[3]) < 1e-30);
    CHECK(edges[4] == doctest::Approx(88.0f));
    CHECK(std::fabs(edges[5]) < 1e-30);
  }
}
