// The kernels layer: type table, fp16 conversion, reference quantizers (with their error bounds),
// and every backend this CPU runs checked against the scalar reference.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <omp.h>

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/kernels.h"

using namespace octet;
using namespace octet::kernels;

namespace {

// Counts operator new calls on this thread while enabled, to check matmul allocates nothing warm.
thread_local bool g_count_allocations = false;
thread_local int g_allocations = 0;

}  // namespace

// Plain malloc/free pairs; GCC cannot see that they match.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(size_t size) {
  if (g_count_allocations) ++g_allocations;
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

constexpr DType kAllTypes[] = {DType::F32, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_1};

std::vector<std::string> backends() {
  std::vector<std::string> out;
  for (const char* const* n = available_backends(); *n; ++n) out.push_back(*n);
  return out;
}

// Restores the backend active when the test started.
struct BackendGuard {
  std::string saved = backend_name();
  ~BackendGuard() { force_backend(saved.c_str()); }
};

std::vector<float> random_floats(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<uint8_t> quantize(DType t, const std::vector<float>& x, int64_t rows, int64_t k) {
  std::vector<uint8_t> out(row_bytes(t, k) * rows);
  for (int64_t r = 0; r < rows; ++r) quantize_row(t, x.data() + r * k, out.data() + r * row_bytes(t, k), k);
  return out;
}

std::vector<float> dequantize(DType t, const std::vector<uint8_t>& w, int64_t rows, int64_t k) {
  std::vector<float> out(rows * k);
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t, w.data() + r * row_bytes(t, k), out.data() + r * k, k);
  return out;
}

// The activation values the quantized kernels actually multiply: X rounded per block to int8.
std::vector<float> quantized_activations(const std::vector<float>& x, int64_t rows, int64_t k) {
  std::vector<BlockQ8A> blocks(k / kBlockSize);
  std::vector<float> out(rows * k);
  for (int64_t r = 0; r < rows; ++r) {
    scalar_backend().quantize_act(x.data() + r * k, blocks.data(), k, nullptr);
    for (int64_t i = 0; i < k; ++i) out[r * k + i] = blocks[i / kBlockSize].d * blocks[i / kBlockSize].qs[i % kBlockSize];
  }
  return out;
}

// Per-element magnitude of a weight as the kernels see it: for Q4_1 the d q and m parts are
// added separately (and may cancel), so both count.
std::vector<float> weight_magnitudes(DType t, const std::vector<uint8_t>& w, int64_t rows, int64_t k) {
  std::vector<float> out = dequantize(t, w, rows, k);
  for (float& v : out) v = std::fabs(v);
  if (t == DType::Q4_1) {
    const int64_t nb = k / kBlockSize;
    const BlockQ4_1* blocks = reinterpret_cast<const BlockQ4_1*>(w.data());
    for (int64_t i = 0; i < rows * k; ++i) {
      const BlockQ4_1& b = blocks[(i / k) * nb + (i % k) / kBlockSize];
      out[i] = std::fabs(fp16_to_fp32(b.d)) * q4_nibble(b.qs, (int)(i % kBlockSize)) + std::fabs(fp16_to_fp32(b.m));
    }
  }
  return out;
}

// A float sum of n terms is off by at most n * eps * sum|terms| (Higham's gamma_n bound). In every
// backend the longest chain of additions into one lane is at most k/16 + 16: SIMD lanes take every
// 16th (AVX2 F32, two accumulators) or sparser element, block kernels one term per block, plus the
// final reduction, a scalar tail and the rounding of each block term (scale products).
double summation_tolerance(int64_t k, double abs_terms) {
  return (double)(k / 16 + 16) * FLT_EPSILON * abs_terms + 1e-30;
}

}  // namespace

TEST_CASE("element type table") {
  CHECK(row_bytes(DType::F32, 10) == 40);
  CHECK(row_bytes(DType::F16, 10) == 20);
  CHECK(row_bytes(DType::Q8_0, 64) == 68);
  CHECK(row_bytes(DType::Q4_0, 64) == 36);
  CHECK(row_bytes(DType::Q4_1, 64) == 40);
  CHECK(row_bytes(DType::Q8_0, 48) == 0);  // not whole blocks
  CHECK(row_bytes(DType::Q4_0, 0) == 0);
  CHECK(row_bytes(DType::F32, -1) == 0);
  for (DType t : kAllTypes) {
    DType back;
    REQUIRE(dtype_from_name(dtype_name(t), &back));
    CHECK(back == t);
    CHECK(dtype_is_valid((uint32_t)t));
  }
  DType unused;
  CHECK_FALSE(dtype_from_name("q5_0", &unused));
  CHECK_FALSE(dtype_from_name("", &unused));
  CHECK_FALSE(dtype_from_name(nullptr, &unused));
  CHECK_FALSE(dtype_is_valid(5));
  CHECK_FALSE(dtype_is_valid(0xffffffffu));
}

TEST_CASE("fp16: every half round-trips through f32") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32((uint16_t)h);
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    if (nan) {
      CHECK(std::isnan(f));
      CHECK(((fp32_to_fp16(f) & 0x7c00u) == 0x7c00u && (fp32_to_fp16(f) & 0x3ffu) != 0));
    } else if (fp32_to_fp16(f) != h) {
      FAIL("half 0x" << std::hex << h << " does not round-trip");
    }
  }
}

TEST_CASE("fp16: known values") {
  CHECK(fp16_to_fp32(0x3c00) == 1.0f);
  CHECK(fp16_to_fp32(0xc000) == -2.0f);
  CHECK(fp16_to_fp32(0x7bff) == 65504.0f);
  CHECK(fp16_to_fp32(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(fp16_to_fp32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(fp16_to_fp32(0x03ff) == std::ldexp(1023.0f, -24));
  CHECK(fp16_to_fp32(0x7c00) == INFINITY);
  CHECK(fp16_to_fp32(0xfc00) == -INFINITY);
  CHECK(std::signbit(fp16_to_fp32(0x8000)));
  CHECK(std::isnan(fp16_to_fp32(0x7e00)));

  CHECK(fp32_to_fp16(1.0f) == 0x3c00);
  CHECK(fp32_to_fp16(-0.0f) == 0x8000);
  CHECK(fp32_to_fp16(65504.0f) == 0x7bff);
  CHECK(fp32_to_fp16(65519.0f) == 0x7bff);  // below the midpoint to 65536
  CHECK(fp32_to_fp16(65520.0f) == 0x7c00);  // the midpoint rounds to even: infinity
  CHECK(fp32_to_fp16(1e10f) == 0x7c00);
  CHECK(fp32_to_fp16(-INFINITY) == 0xfc00);
  CHECK(fp32_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);  // half the smallest subnormal: tie to 0
  CHECK(fp32_to_fp16(std::ldexp(1.0001f, -25)) == 0x0001);
  CHECK(fp32_to_fp16(std::ldexp(3.0f, -25)) == 0x0002);  // tie between 1 and 2 subnormal steps
  CHECK(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);       // tie: even
  CHECK(fp32_to_fp16(1.0f + std::ldexp(3.0f, -11)) == 0x3c02);       // tie: even
  CHECK(fp32_to_fp16(std::ldexp(1.0f, -30)) == 0x0000);
  const uint16_t nan = fp32_to_fp16(NAN);
  CHECK(((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0));
}

TEST_CASE("fp16: f32 values round to the nearest half, ties to even") {
  // Between each pair of adjacent finite halves a < b: the midpoint goes to the even one, values
  // just off it to the nearer one. Midpoints are exact in f32 (12 significant bits).
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const uint16_t lo = (uint16_t)(h | sign), hi = (uint16_t)((h + 1) | sign);
      const float a = fp16_to_fp32(lo), b = fp16_to_fp32(hi);
      const float mid = a + (b - a) / 2;
      REQUIRE(fp32_to_fp16(mid) == ((h & 1) ? hi : lo));
      REQUIRE(fp32_to_fp16(std::nextafter(mid, a)) == lo);
      REQUIRE(fp32_to_fp16(std::nextafter(mid, b)) == hi);
    }
  }
}

TEST_CASE("every backend converts f32 to f16 with the reference's bytes") {
  // Every sign, exponent and top 10 mantissa bits, each with the low 13 bits (the part rounded
  // away) at and around the tie: rounding, overflow to infinity, subnormals, NaN payloads. Calls
  // of 1..37 floats, so the vector loops' tails run too.
  std::vector<float> x;
  for (uint32_t high = 0; high < (1u << 19); ++high)
    for (uint32_t low : {0u, 1u, 0xfffu, 0x1000u, 0x1001u, 0x1fffu}) {
      const uint32_t bits = high << 13 | low;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      x.push_back(f);
    }
  std::vector<uint16_t> expected(x.size());
  for (size_t i = 0; i < x.size(); ++i) expected[i] = fp32_to_fp16(x[i]);
  BackendGuard guard;
  for (const std::string& backend : backends()) {
    REQUIRE(force_backend(backend.c_str()));
    CAPTURE(backend);
    std::vector<uint16_t> got(x.size());
    for (size_t i = 0, n = 1; i < x.size(); i += n, n = n % 37 + 1)
      quantize_row(DType::F16, x.data() + i, got.data() + i, std::min(n, x.size() - i));
    size_t mismatches = 0;
    for (size_t i = 0; i < x.size(); ++i) mismatches += got[i] != expected[i];
    CHECK(mismatches == 0);
  }
}

TEST_CASE("round trip F32 is exact, F16 is the fp16 rounding") {
  std::mt19937 rng(1);
  const std::vector<float> x = random_floats(rng, 1000, 3.0f);
  std::vector<float> y(x.size());
  std::vector<uint8_t> buf(row_bytes(DType::F32, (int64_t)x.size()));
  quantize_row(DType::F32, x.data(), buf.data(), (int64_t)x.size());
  dequantize_row(DType::F32, buf.data(), y.data(), (int64_t)x.size());
  CHECK(std::memcmp(x.data(), y.data(), x.size() * 4) == 0);
  quantize_row(DType::F16, x.data(), buf.data(), (int64_t)x.size());
  dequantize_row(DType::F16, buf.data(), y.data(), (int64_t)x.size());
  for (size_t i = 0; i < x.size(); ++i) REQUIRE(y[i] == fp16_to_fp32(fp32_to_fp16(x[i])));
}

namespace {

// Blocks that stress the quantizers: plain noise, constant, one outlier, one sign only, zero,
// tiny (fp16-subnormal and underflowing scales) and large magnitudes (still within the fp16
// range of every scale: amax / 8 < 65504).
std::vector<std::vector<float>> test_blocks() {
  std::mt19937 rng(7);
  std::vector<std::vector<float>> blocks;
  for (float scale : {1.0f, 1e-3f, 1e-6f, 1e-9f, 1e4f}) {
    blocks.push_back(random_floats(rng, kBlockSize, scale));
    std::vector<float> outlier = random_floats(rng, kBlockSize, scale * 1e-3f);
    outlier[5] = scale;
    blocks.push_back(outlier);
    std::vector<float> positive = random_floats(rng, kBlockSize, scale);
    for (float& v : positive) v = std::fabs(v) + scale;
    blocks.push_back(positive);
    std::vector<float> negative = positive;
    for (float& v : negative) v = -v;
    blocks.push_back(negative);
    blocks.push_back(std::vector<float>(kBlockSize, scale));
    blocks.push_back(std::vector<float>(kBlockSize, -scale));
  }
  blocks.push_back(std::vector<float>(kBlockSize, 0.0f));
  std::vector<float> steps(kBlockSize);
  for (int j = 0; j < kBlockSize; ++j) steps[j] = (float)(j - 16) * 0.5f;  // ties in x / d
  blocks.push_back(steps);
  return blocks;
}

float amax_of(const std::vector<float>& x) {
  float a = 0;
  for (float v : x) a = std::fmax(a, std::fabs(v));
  return a;
}

}  // namespace

// Bounds for blocks within fp16 range (amax up to ~1e6 here). The slack is f32 rounding of x / d
// and of d q (+ m): a few ulps of the block's magnitude.
TEST_CASE("round trip Q8_0: error <= d/2, d at most one fp16 step above amax/127") {
  for (const std::vector<float>& x : test_blocks()) {
    BlockQ8_0 blk;
    float y[kBlockSize];
    quantize_row(DType::Q8_0, x.data(), &blk, kBlockSize);
    dequantize_row(DType::Q8_0, &blk, y, kBlockSize);
    const float amax = amax_of(x), d = fp16_to_fp32(blk.d);
    CHECK(d * 127.0f >= amax);                                         // nothing clips
    CHECK(d <= amax / 127.0f * (1 + 1.0f / 1024) + std::ldexp(1.0f, -24));  // up by <= 1 fp16 step
    const float slack = 4 * FLT_EPSILON * amax;
    for (int j = 0; j < kBlockSize; ++j) REQUIRE(std::fabs(y[j] - x[j]) <= d / 2 + slack);
  }
}

TEST_CASE("round trip Q4_0: error <= |d|/2 except the clipped side (<= |d|)") {
  for (const std::vector<float>& x : test_blocks()) {
    BlockQ4_0 blk;
    float y[kBlockSize];
    quantize_row(DType::Q4_0, x.data(), &blk, kBlockSize);
    dequantize_row(DType::Q4_0, &blk, y, kBlockSize);
    const float amax = amax_of(x), d = fp16_to_fp32(blk.d);
    CHECK(std::fabs(d) * 8.0f >= amax);
    const float slack = 4 * FLT_EPSILON * amax;
    for (int j = 0; j < kBlockSize; ++j) {
      // d has the opposite sign of the largest value, so values on that value's side map to
      // q - 8 in [-8, 0]; the other side reaches only +7, and values beyond 7.5 |d| clip.
      const bool clipped_side = x[j] / d > 7.5f;
      REQUIRE(std::fabs(y[j] - x[j]) <= (clipped_side ? std::fabs(d) : std::fabs(d) / 2) + slack);
    }
  }
}

TEST_CASE("round trip Q4_1: m <= min, error <= d/2") {
  for (const std::vector<float>& x : test_blocks()) {
    BlockQ4_1 blk;
    float y[kBlockSize];
    quantize_row(DType::Q4_1, x.data(), &blk, kBlockSize);
    dequantize_row(DType::Q4_1, &blk, y, kBlockSize);
    float min = x[0];
    for (float v : x) min = std::fmin(min, v);
    const float d = fp16_to_fp32(blk.d), m = fp16_to_fp32(blk.m);
    CHECK(m <= min);
    CHECK(d >= 0);
    const float slack = 8 * FLT_EPSILON * amax_of(x);
    for (int j = 0; j < kBlockSize; ++j) REQUIRE(std::fabs(y[j] - x[j]) <= d / 2 + slack);
  }
}

TEST_CASE("quantizers: zero blocks are exact and values beyond fp16 range saturate") {
  std::vector<float> zeros(2 * kBlockSize, 0.0f), y(2 * kBlockSize);
  for (DType t : kAllTypes) {
    std::vector<uint8_t> buf(row_bytes(t, 2 * kBlockSize));
    quantize_row(t, zeros.data(), buf.data(), 2 * kBlockSize);
    dequantize_row(t, buf.data(), y.data(), 2 * kBlockSize);
    for (float v : y) REQUIRE(v == 0.0f);
  }
  // 1e12 is far beyond 65504 * 127: the scale saturates at the largest half, results stay finite
  // with the right sign.
  std::vector<float> huge(kBlockSize);
  for (int j = 0; j < kBlockSize; ++j) huge[j] = (j % 2 ? 1e12f : -1e12f) * (float)(j + 1);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    std::vector<uint8_t> buf(row_bytes(t, kBlockSize));
    quantize_row(t, huge.data(), buf.data(), kBlockSize);
    dequantize_row(t, buf.data(), y.data(), kBlockSize);
    for (int j = 0; j < kBlockSize; ++j) {
      REQUIRE(std::isfinite(y[j]));
      if (t != DType::Q4_1) REQUIRE((y[j] > 0) == (huge[j] > 0));  // Q4_1's m saturates too
    }
  }
}

TEST_CASE("activation quantizer: ties to even, s = d * sum(q), |x - d q| <= d/2") {
  std::vector<float> x(kBlockSize);
  x[0] = 127.0f;  // d = 1, so the others are exact ties
  for (int j = 1; j < kBlockSize; ++j) x[j] = (float)(j - 16) + 0.5f;
  BlockQ8A blk;
  scalar_backend().quantize_act(x.data(), &blk, kBlockSize, nullptr);
  CHECK(blk.d == 1.0f);
  int sum = 0;
  for (int j = 0; j < kBlockSize; ++j) {
    REQUIRE(blk.qs[j] == (int)std::nearbyint(x[j]));
    REQUIRE(blk.qs[j] % 2 == (j == 0 ? 1 : 0));  // 127, then every tie went to the even neighbour
    sum += blk.qs[j];
  }
  CHECK(blk.s == (float)sum);

  for (const std::vector<float>& b : test_blocks()) {
    scalar_backend().quantize_act(b.data(), &blk, kBlockSize, nullptr);
    sum = 0;
    for (int j = 0; j < kBlockSize; ++j) {
      REQUIRE(std::fabs(blk.d * blk.qs[j] - b[j]) <= blk.d / 2 + 4 * FLT_EPSILON * std::fabs(b[j]));
      sum += blk.qs[j];
    }
    CHECK(blk.s == blk.d * (float)sum);
  }
}

TEST_CASE("every backend quantizes activations to the same bytes as the scalar one") {
  std::mt19937 rng(11);
  std::vector<float> x;
  for (const std::vector<float>& b : test_blocks()) x.insert(x.end(), b.begin(), b.end());
  for (int i = 0; i < 64; ++i) {  // random blocks with exact ties
    std::vector<float> b = random_floats(rng, kBlockSize);
    const float amax = amax_of(b);
    for (float& v : b) v = std::round(v / amax * 254.0f) / 2.0f;  // multiples of 0.5 up to 127
    b[0] = 127.0f;
    x.insert(x.end(), b.begin(), b.end());
  }
  const int64_t all = (int64_t)x.size() / kBlockSize;
  REQUIRE(all > 17);
  // Several lengths, so that a sum written past its block would show.
  for (int64_t blocks : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{17}, all}) {
    CAPTURE(blocks);
    const int64_t k = blocks * kBlockSize;
    std::vector<BlockQ8A> ref(blocks), got(blocks);
    std::vector<int32_t> sums(blocks + 1, -1);  // one past the end must stay untouched
    scalar_backend().quantize_act(x.data(), ref.data(), k, nullptr);
    for (const std::string& name : backends()) {
      CAPTURE(name);
      find_backend(name.c_str())->quantize_act(x.data(), got.data(), k, sums.data());
      for (int64_t b = 0; b < blocks; ++b) {
        CAPTURE(b);
        REQUIRE(got[b].d == ref[b].d);
        REQUIRE(got[b].s == ref[b].s);
        REQUIRE(std::memcmp(got[b].qs, ref[b].qs, kBlockSize) == 0);
        int32_t sum = 0;
        for (int j = 0; j < kBlockSize; ++j) sum += ref[b].qs[j];
        REQUIRE(sums[b] == sum);
      }
      REQUIRE(sums[blocks] == -1);
    }
  }
}

TEST_CASE("backend selection") {
  BackendGuard guard;
  const std::vector<std::string> names = backends();
  REQUIRE(!names.empty());
  CHECK(names.front() == "scalar");
  MESSAGE("backends on this CPU: " << [&] {
    std::string s;
    for (const std::string& n : names) s += n + " ";
    return s;
  }() << "(active: " << std::string(backend_name()) << ")");

  const std::string before = backend_name();
  CHECK_FALSE(force_backend("nonsense"));
  CHECK_FALSE(force_backend(""));
  CHECK_FALSE(force_backend(nullptr));
  CHECK(backend_name() == before);
  CHECK(force_backend("scalar"));
  CHECK(std::string(backend_name()) == "scalar");
  for (const std::string& n : names) {
    CHECK(force_backend(n.c_str()));
    CHECK(backend_name() == n);
  }
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    CHECK(names.back() == "avx512");
#endif
}

namespace {

// Runs matmul on backend `name`, into a Y with row stride ldy = N + 3 whose padding must survive.
std::vector<float> run_matmul(const char* name, DType t, const std::vector<uint8_t>& w, int64_t n, int64_t k,
                              const std::vector<float>& x, int64_t m) {
  REQUIRE(force_backend(name));
  const int64_t ldy = n + 3;
  std::vector<float> y(m * ldy, -12345.0f);
  matmul(t, w.data(), n, k, x.data(), m, y.data(), ldy);
  std::vector<float> packed(m * n);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = n; c < ldy; ++c) REQUIRE(y[r * ldy + c] == -12345.0f);
    std::copy(y.begin() + r * ldy, y.begin() + r * ldy + n, packed.begin() + r * n);
  }
  return packed;
}

}  // namespace

TEST_CASE("every backend matches the scalar reference (all types, tails, tiles)") {
  // All backends multiply the same integers (same activation bytes, exact int32 block sums), so
  // they differ only in the order of float additions: see summation_tolerance.
  BackendGuard guard;
  std::mt19937 rng(42);
  const std::vector<int64_t> ms = {1, 2, 3, 5, 8, 17};
  for (DType t : kAllTypes) {
    std::vector<int64_t> ks = {32, 64, 96, 160, 480, 1024, 4096};
    if (!is_quantized(t)) ks.insert(ks.end(), {1, 7, 15, 17, 33, 100, 4095});
    for (int64_t k : ks) {
      const int64_t m = ms[rng() % ms.size()];
      const int64_t n = 1 + (int64_t)(rng() % 37);
      const std::vector<float> wf = random_floats(rng, n * k);
      const std::vector<float> x = random_floats(rng, m * k, 2.0f);
      const std::vector<uint8_t> w = quantize(t, wf, n, k);
      const std::vector<float> wmag = weight_magnitudes(t, w, n, k);
      const std::vector<float> xv = is_quantized(t) ? quantized_activations(x, m, k) : x;
      const std::vector<float> ref = run_matmul("scalar", t, w, n, k, x, m);
      for (const std::string& name : backends()) {
        for (int64_t mm : {m, (int64_t)17}) {  // every tile height 1..4 and a long M
          const std::vector<float> xm = mm == m ? x : random_floats(rng, mm * k);
          const std::vector<float> xmv = mm == m ? xv : (is_quantized(t) ? quantized_activations(xm, mm, k) : xm);
          const std::vector<float> want = mm == m ? ref : run_matmul("scalar", t, w, n, k, xm, mm);
          const std::vector<float> got = run_matmul(name.c_str(), t, w, n, k, xm, mm);
          for (int64_t r = 0; r < mm; ++r) {
            for (int64_t c = 0; c < n; ++c) {
              double abs_terms = 0;
              for (int64_t i = 0; i < k; ++i) abs_terms += (double)wmag[c * k + i] * std::fabs(xmv[r * k + i]);
              const double err = std::fabs((double)got[r * n + c] - want[r * n + c]);
              if (err > summation_tolerance(k, abs_terms))
                FAIL(name << " " << std::string(dtype_name(t)) << " M=" << mm << " N=" << n << " K=" << k << " at (" << r << ","
                          << c << "): " << got[r * n + c] << " vs " << want[r * n + c]);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("matmul is close to an f32 matmul of the dequantized weights") {
  // Quantized types also round X per block to int8: |x - xq| <= dx/2 adds at most
  // sum_k |w_k| dx_b(k) / 2. Plus float summation error.
  BackendGuard guard;
  std::mt19937 rng(5);
  const int64_t m = 5, n = 19;
  for (DType t : kAllTypes) {
    for (int64_t k : {32, 256, 2048}) {
      const std::vector<float> wf = random_floats(rng, n * k, 0.05f);
      const std::vector<float> x = random_floats(rng, m * k);
      const std::vector<uint8_t> w = quantize(t, wf, n, k);
      const std::vector<float> wd = dequantize(t, w, n, k);
      for (const std::string& name : backends()) {
        const std::vector<float> y = run_matmul(name.c_str(), t, w, n, k, x, m);
        for (int64_t r = 0; r < m; ++r) {
          std::vector<float> dx(k / kBlockSize + 1, 0.0f);  // per-block activation scale
          if (is_quantized(t))
            for (int64_t i = 0; i < k; ++i) dx[i / kBlockSize] = std::fmax(dx[i / kBlockSize], std::fabs(x[r * k + i]) / 127.0f);
          for (int64_t c = 0; c < n; ++c) {
            double exact = 0, abs_terms = 0, act_error = 0;
            for (int64_t i = 0; i < k; ++i) {
              const double wi = wd[c * k + i];
              exact += wi * x[r * k + i];
              abs_terms += std::fabs(wi) * (std::fabs(x[r * k + i]) + dx[i / kBlockSize]);
              act_error += std::fabs(wi) * dx[i / kBlockSize] / 2 * (1 + 1e-6);
            }
            const double tol = act_error + summation_tolerance(k, abs_terms);
            if (std::fabs(y[r * n + c] - exact) > tol)
              FAIL(name << " " << std::string(dtype_name(t)) << " K=" << k << ": " << y[r * n + c] << " vs " << exact << " tol " << tol);
          }
        }
      }
    }
  }
}

TEST_CASE("matmul: same result with 1 or 2 threads, no allocation once warm, empty shapes") {
  BackendGuard guard;
  std::mt19937 rng(9);
  const int64_t m = 7, n = 33, k = 512;
  const std::vector<float> x = random_floats(rng, m * k);
  const std::vector<uint8_t> w = quantize(DType::Q4_0, random_floats(rng, n * k), n, k);
  const int threads = omp_get_max_threads();
  for (const std::string& name : backends()) {
    omp_set_num_threads(1);
    const std::vector<float> one = run_matmul(name.c_str(), DType::Q4_0, w, n, k, x, m);
    omp_set_num_threads(2);
    const std::vector<float> two = run_matmul(name.c_str(), DType::Q4_0, w, n, k, x, m);
    CHECK(std::memcmp(one.data(), two.data(), one.size() * 4) == 0);
  }
  omp_set_num_threads(threads);

  std::vector<float> y(m * n);
  matmul(DType::Q4_0, w.data(), n, k, x.data(), m, y.data(), n);  // warm up
  g_allocations = 0;
  g_count_allocations = true;
  matmul(DType::Q4_0, w.data(), n, k, x.data(), m, y.data(), n);
  matmul(DType::Q4_0, w.data(), n, k, x.data(), 1, y.data(), n);
  g_count_allocations = false;
  CHECK(g_allocations == 0);

  matmul(DType::Q4_0, w.data(), 0, k, x.data(), m, y.data(), n);  // no rows: nothing to do
  matmul(DType::Q4_0, w.data(), n, k, x.data(), 0, y.data(), n);
}

namespace {

// Y for M rows of X, then each row again on its own (M = 1): the engine needs the bits to match,
// so that a prompt run as one batch equals the same prompt run token by token.
void check_rows_match_alone(const std::string& name, DType t, const std::vector<uint8_t>& w, int64_t n, int64_t k,
                            const std::vector<float>& x, int64_t m) {
  const std::vector<float> all = run_matmul(name.c_str(), t, w, n, k, x, m);
  for (int64_t r = 0; r < m; ++r) {
    const std::vector<float> row(x.begin() + r * k, x.begin() + (r + 1) * k);
    const std::vector<float> alone = run_matmul(name.c_str(), t, w, n, k, row, 1);
    for (int64_t c = 0; c < n; ++c) {
      if (std::memcmp(&all[r * n + c], &alone[c], sizeof(float)) != 0)
        FAIL(name << " " << std::string(dtype_name(t)) << " M=" << m << " N=" << n << " K=" << k << " row " << r
                  << " col " << c << ": " << all[r * n + c] << " in the batch vs " << alone[c] << " alone");
    }
  }
}

}  // namespace

TEST_CASE("every tile height gives each row the same bits as that row alone (M = 1)") {
  BackendGuard guard;
  std::mt19937 rng(77);
  const int64_t n = 37;  // not a multiple of any SIMD row group
  for (DType t : kAllTypes) {
    for (int64_t k : {32, 64, 96, 128, 256, 4096 + 32}) {
      const std::vector<uint8_t> w = quantize(t, random_floats(rng, n * k), n, k);
      for (const std::string& name : backends()) {
        CAPTURE(name);
        // Every tile height explicitly, then heights that mix full tiles and a remainder.
        for (int64_t m = 1; m <= kTileRows; ++m) check_rows_match_alone(name, t, w, n, k, random_floats(rng, m * k, 2.0f), m);
        for (int64_t m : {kTileRows + 1, 2 * kTileRows + 3, 17})
          check_rows_match_alone(name, t, w, n, k, random_floats(rng, m * k, 2.0f), m);
      }
    }
  }
}

TEST_CASE("tile functions: rows 1..kTileRows give each row the bits of a one-row tile") {
  // The same property one level down, on each backend's DotTileFn directly.
  std::mt19937 rng(78);
  for (DType t : kAllTypes) {
    for (int64_t k : {32, 64, 96, 128, 256, 4096 + 32}) {
      const std::vector<uint8_t> w = quantize(t, random_floats(rng, k), 1, k);
      const std::vector<float> x = random_floats(rng, kTileRows * k, 2.0f);
      std::vector<BlockQ8A> act(kTileRows * (k / kBlockSize));
      const void* xp = x.data();
      size_t x_stride = (size_t)k * sizeof(float);
      if (is_quantized(t)) {
        for (int r = 0; r < kTileRows; ++r) scalar_backend().quantize_act(x.data() + r * k, act.data() + r * (k / kBlockSize), k, nullptr);
        xp = act.data();
        x_stride = (size_t)(k / kBlockSize) * sizeof(BlockQ8A);
      }
      for (const std::string& name : backends()) {
        const DotTileFn dot = find_backend(name.c_str())->dot[(int)t];
        float alone[kTileRows];
        for (int r = 0; r < kTileRows; ++r) dot(w.data(), static_cast<const char*>(xp) + r * x_stride, x_stride, 1, k, &alone[r], 1);
        for (int rows = 1; rows <= kTileRows; ++rows) {
          float got[kTileRows];
          dot(w.data(), xp, x_stride, rows, k, got, 1);
          for (int r = 0; r < rows; ++r)
            if (std::memcmp(&got[r], &alone[r], sizeof(float)) != 0)
              FAIL(name << " " << std::string(dtype_name(t)) << " K=" << k << " tile of " << rows << " rows, row " << r << ": "
                        << got[r] << " vs " << alone[r] << " alone");
        }
        // The register-blocked form, where a backend has one: every weight-row count 1..kWeightRows
        // (the same weight row repeated) against every tile height.
        const DotBlockFn block = find_backend(name.c_str())->dot_block[(int)t];
        if (block == nullptr) continue;
        for (int wrows = 1; wrows <= kWeightRows; ++wrows) {
          for (int rows = 1; rows <= kTileRows; ++rows) {
            float got[kTileRows * kWeightRows];
            block(w.data(), 0, wrows, xp, x_stride, rows, k, got, kWeightRows);
            for (int r = 0; r < rows; ++r)
              for (int j = 0; j < wrows; ++j)
                if (std::memcmp(&got[r * kWeightRows + j], &alone[r], sizeof(float)) != 0)
                  FAIL(name << " " << std::string(dtype_name(t)) << " K=" << k << " block of " << wrows << "x" << rows
                            << ", row " << r << " weight row " << j << ": " << got[r * kWeightRows + j] << " vs " << alone[r]);
          }
        }
      }
    }
  }
}

// ---- Packed weights (kernels.h, PackedWeights) ------------------------------------------------

namespace {

constexpr DType kPackedTypes[] = {DType::Q8_0, DType::Q4_0};

// matmul_packed on backend `name`, into a Y with row stride N + 3 whose padding must survive.
std::vector<float> run_packed(const char* name, const PackedWeights& p, const std::vector<float>& x, int64_t m) {
  REQUIRE(force_backend(name));
  const int64_t n = p.rows, ldy = n + 3;
  std::vector<float> y(m * ldy, -12345.0f);
  matmul_packed(p, x.data(), m, y.data(), ldy);
  std::vector<float> out(m * n);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = n; c < ldy; ++c) REQUIRE(y[r * ldy + c] == -12345.0f);
    std::copy(y.begin() + r * ldy, y.begin() + r * ldy + n, out.begin() + r * n);
  }
  return out;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

TEST_CASE("packed: which backends pack which types") {
  BackendGuard guard;
  REQUIRE(force_backend("scalar"));
  for (DType t : kAllTypes) CHECK_FALSE(packed_kernel_active(t));
  CHECK(packable(DType::Q8_0));
  CHECK(packable(DType::Q4_0));
  CHECK_FALSE(packable(DType::Q4_1));
  CHECK_FALSE(packable(DType::F16));
  for (const char* fast : {"avx2", "avx512", "neon"}) {
    if (!force_backend(fast)) continue;
    CHECK(packed_kernel_active(DType::Q8_0));
    CHECK(packed_kernel_active(DType::Q4_0));
    CHECK_FALSE(packed_kernel_active(DType::Q4_1));
    CHECK_FALSE(packed_kernel_active(DType::F32));
  }
}

TEST_CASE("packed: round trip, every row dequantizes to the original row") {
  std::mt19937 rng(101);
  for (DType t : kPackedTypes) {
    for (int64_t k : {32, 96, 2048}) {
      const int64_t n = 53;  // 3 groups and 5 rows left over
      const std::vector<uint8_t> w = quantize(t, random_floats(rng, n * k), n, k);
      const PackedBuffer buffer(t, w.data(), n, k);
      const PackedWeights& p = buffer.view();
      REQUIRE(p.groups == 3);
      REQUIRE(p.packed_rows() == 48);
      CHECK(reinterpret_cast<uintptr_t>(p.data) % 64 == 0);
      CHECK(p.group_bytes % 64 == 0);
      // The groups, then the 5 remaining rows exactly as stored.
      CHECK(buffer.size() == 3 * p.group_bytes + 5 * row_bytes(t, k));
      CHECK(std::memcmp(p.tail(), w.data() + 48 * row_bytes(t, k), 5 * row_bytes(t, k)) == 0);
      const std::vector<float> want = dequantize(t, w, n, k);
      std::vector<float> got(k);
      for (int64_t r = 0; r < n; ++r) {
        dequantize_packed_row(p, r, got.data());
        if (std::memcmp(got.data(), want.data() + r * k, k * sizeof(float)) != 0)
          FAIL(std::string(dtype_name(t)) << " K=" << k << " row " << r << " differs after packing");
      }
    }
    // Fewer rows than a group: nothing interleaved, the packed form is the row-major matrix.
    const std::vector<uint8_t> w = quantize(t, random_floats(rng, 7 * 64), 7, 64);
    const PackedBuffer buffer(t, w.data(), 7, 64);
    CHECK(buffer.view().groups == 0);
    REQUIRE(buffer.size() == w.size());
    CHECK(std::memcmp(buffer.bytes(), w.data(), w.size()) == 0);
  }
  CHECK(packed_bytes(DType::Q4_1, 16, 32) == 0);
  CHECK(packed_bytes(DType::Q8_0, 16, 33) == 0);
}

TEST_CASE("packed: the reference is close to a double matmul of the dequantized weights") {
  // The reference computes per output acc = fma(float(s_b), dw_b * dx_b, acc) over the nb blocks,
  // s_b the exact int32 block sum: one rounding of each scale product (relative eps/2 of that
  // block's term) and one per fma (eps/2 of the running sum, which is at most sum_b |term_b|),
  // so |error| <= (nb + 1) * eps/2 * sum_j |w_j x_j| (plus second-order terms, covered by using
  // eps rather than eps/2). The weights are the dequantized ones and the activations the quantized
  // ones, so the integer part adds no error. The tail rows (row-major kernels) must meet the same bound.
  BackendGuard guard;
  std::mt19937 rng(102);
  for (DType t : kPackedTypes) {
    for (int64_t k : {32, 64, 96, 1024, 4096}) {
      const int64_t n = 37, m = 3;
      const std::vector<uint8_t> w = quantize(t, random_floats(rng, n * k), n, k);
      const std::vector<float> wd = dequantize(t, w, n, k);
      const std::vector<float> x = random_floats(rng, m * k, 2.0f);
      const std::vector<float> xq = quantized_activations(x, m, k);
      const PackedBuffer p(t, w.data(), n, k);
      const std::vector<float> y = run_packed("scalar", p.view(), x, m);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          double exact = 0, abs_terms = 0;
          for (int64_t i = 0; i < k; ++i) {
            exact += (double)wd[c * k + i] * xq[r * k + i];
            abs_terms += std::fabs((double)wd[c * k + i] * xq[r * k + i]);
          }
          const double tol = (double)(k / kBlockSize + 1) * FLT_EPSILON * abs_terms + 1e-30;
          if (std::fabs(y[r * n + c] - exact) > tol)
            FAIL(std::string(dtype_name(t)) << " K=" << k << " at (" << r << "," << c << "): " << y[r * n + c] << " vs "
                                            << exact << " tol " << tol);
        }
      }
    }
  }
}

TEST_CASE("packed: every backend gives the packed rows the reference's bits, and every M the bits of M = 1") {
  // Packed rows: the reference's arithmetic exactly, on every backend (bit for bit). Rows past the
  // last full group: the backend's row-major kernels, so the bits of plain matmul on that backend.
  BackendGuard guard;
  std::mt19937 rng(103);
  for (DType t : kPackedTypes) {
    for (int64_t k : {32, 64, 96, 160, 1024, 4096 + 32}) {
      for (int64_t n : {5, 16, 37, 71}) {
        const std::vector<uint8_t> w = quantize(t, random_floats(rng, n * k), n, k);
        const PackedBuffer buffer(t, w.data(), n, k);
        const PackedWeights& p = buffer.view();
        for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 17}) {
          const std::vector<float> x = random_floats(rng, m * k, 2.0f);
          const std::vector<float> ref = run_packed("scalar", p, x, m);
          for (const std::string& name : backends()) {
            CAPTURE(name);
            const std::vector<float> got = run_packed(name.c_str(), p, x, m);
            const std::vector<float> plain = run_matmul(name.c_str(), t, w, n, k, x, m);
            for (int64_t r = 0; r < m; ++r)
              for (int64_t c = 0; c < n; ++c) {
                const float want = c < p.packed_rows() ? ref[r * n + c] : plain[r * n + c];
                if (!same_bits(got[r * n + c], want))
                  FAIL(name << " " << std::string(dtype_name(t)) << " M=" << m << " N=" << n << " K=" << k << " at (" << r
                            << "," << c << "): " << got[r * n + c] << " vs " << want);
              }
            // Each row alone (M = 1, the decode path) gives the bits it has in the batch.
            for (int64_t r = 0; r < m; ++r) {
              const std::vector<float> row(x.begin() + r * k, x.begin() + (r + 1) * k);
              const std::vector<float> alone = run_packed(name.c_str(), p, row, 1);
              for (int64_t c = 0; c < n; ++c)
                if (!same_bits(got[r * n + c], alone[c]))
                  FAIL(name << " " << std::string(dtype_name(t)) << " M=" << m << " N=" << n << " K=" << k << " row " << r
                            << " col " << c << ": " << got[r * n + c] << " in the batch vs " << alone[c] << " alone");
            }
          }
        }
      }
    }
  }
}

TEST_CASE("packed: extreme weights and activations give the reference's bits (no int16 saturation)") {
  // Random data almost never puts two largest products in one pair, where kernels built on
  // 16-bit pair sums (AVX2 maddubs) saturate: weights at -128, 127 (Q8_0) or nibbles 0, 15
  // (Q4_0), against activations at +-127, in every sign combination of a pair.
  BackendGuard guard;
  const int64_t n = 16 * 4 + 3, k = 4 * kBlockSize, nb = k / kBlockSize;
  std::vector<float> x;
  for (int r = 0; r < 6; ++r)  // all +1, all -1, then signs alternating by 1, 2, 4 and 8 elements
    for (int64_t j = 0; j < k; ++j) x.push_back(r == 0 ? 1.0f : r == 1 ? -1.0f : ((j >> (r - 2)) & 1) ? -1.0f : 1.0f);
  for (DType t : kPackedTypes) {
    std::vector<uint8_t> w(row_bytes(t, k) * n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t b = 0; b < nb; ++b) {
        // Row i, block b: the high extreme where bit (j >> s) & 1 of the pattern is set, s = (i + b) % 5.
        const int shift = (int)((i + b) % 5);
        const bool all_high = i % 3 == 0, all_low = i % 3 == 1;
        auto high = [&](int j) { return all_high || (!all_low && ((j >> shift) & 1)); };
        const uint16_t d = fp32_to_fp16(0.5f + 0.01f * (float)((i * 7 + b) % 50));
        uint8_t* blk = w.data() + i * row_bytes(t, k) + b * row_bytes(t, kBlockSize);
        std::memcpy(blk, &d, sizeof d);
        for (int j = 0; j < kBlockSize; ++j) {
          if (t == DType::Q8_0) blk[2 + j] = high(j) ? 127 : 0x80;  // 127 or -128
          else if (j < kBlockSize / 2) blk[2 + j] = (high(j) ? 15 : 0) | (high(j + 16) ? 0xf0 : 0);
        }
      }
    const PackedBuffer buffer(t, w.data(), n, k);
    const PackedWeights& p = buffer.view();
    for (int64_t m : {1, 6}) {
      const std::vector<float> xm(x.begin(), x.begin() + m * k);
      const std::vector<float> ref = run_packed("scalar", p, xm, m);
      for (const std::string& name : backends()) {
        const std::vector<float> got = run_packed(name.c_str(), p, xm, m);
        for (int64_t r = 0; r < m; ++r)
          for (int64_t c = 0; c < p.packed_rows(); ++c)
            if (!same_bits(got[r * n + c], ref[r * n + c]))
              FAIL(name << " " << std::string(dtype_name(t)) << " M=" << m << " at (" << r << "," << c
                        << "): " << got[r * n + c] << " vs " << ref[r * n + c]);
      }
    }
  }
}

TEST_CASE("packed: several products of one input in one call give each the bits of its own call") {
  // q, k and v of a layer: different N (with and without tail rows), the same K and X.
  BackendGuard guard;
  std::mt19937 rng(105);
  // m = 1 is the GEMV path, whose thread shares run across the products end to end; at k = 4096
  // it is parallel.
  for (auto [m, k] : {std::pair<int64_t, int64_t>{3, 256}, {1, 256}, {1, 4096}})
  for (DType t : kPackedTypes) {
    CAPTURE(m);
    CAPTURE(k);
    const int64_t ns[] = {64, 21, 5};
    std::vector<std::vector<uint8_t>> ws;
    std::vector<PackedBuffer> buffers;
    for (int64_t n : ns) {
      ws.push_back(quantize(t, random_floats(rng, n * k), n, k));
      buffers.emplace_back(t, ws.back().data(), n, k);
    }
    const std::vector<float> x = random_floats(rng, m * k, 2.0f);
    for (const std::string& name : backends()) {
      CAPTURE(name);
      REQUIRE(force_backend(name.c_str()));
      std::vector<std::vector<float>> fused;
      std::vector<PackedProduct> products;
      for (size_t j = 0; j < buffers.size(); ++j) {
        fused.emplace_back(m * (ns[j] + 1), -7.0f);  // ldy = N + 1: the padding must survive
        products.push_back({buffers[j].view(), fused.back().data(), ns[j] + 1});
      }
      matmul_packed(products, x.data(), m);
      for (size_t j = 0; j < buffers.size(); ++j) {
        const std::vector<float> alone = run_packed(name.c_str(), buffers[j].view(), x, m);
        for (int64_t r = 0; r < m; ++r) {
          CHECK(fused[j][r * (ns[j] + 1) + ns[j]] == -7.0f);
          for (int64_t c = 0; c < ns[j]; ++c)
            if (!same_bits(fused[j][r * (ns[j] + 1) + c], alone[r * ns[j] + c]))
              FAIL(name << " " << std::string(dtype_name(t)) << " product " << j << " at (" << r << "," << c << ")");
        }
      }
    }
  }
}

TEST_CASE("packed: a residual gets each output added, with the bits of a separate add") {
  BackendGuard guard;
  std::mt19937 rng(106);
  const int64_t n = 16 * 5 + 5, k = 256, ldy = n + 2;  // 5 groups and 5 row-major tail rows
  for (DType t : kPackedTypes) {
    const std::vector<uint8_t> w = quantize(t, random_floats(rng, n * k), n, k);
    const PackedBuffer buffer(t, w.data(), n, k);
    for (int64_t m : {1, 3}) {  // the GEMV and the tiled paths
      const std::vector<float> x = random_floats(rng, m * k, 2.0f), before = random_floats(rng, m * ldy, 3.0f);
      for (const std::string& name : backends()) {
        CAPTURE(name);
        CAPTURE(m);
        const std::vector<float> alone = run_packed(name.c_str(), buffer.view(), x, m);
        std::vector<float> y(m * ldy), residual = before;
        matmul_packed(buffer.view(), x.data(), m, y.data(), ldy, residual.data());
        for (int64_t r = 0; r < m; ++r) {
          CHECK(residual[r * ldy + n] == before[r * ldy + n]);  // past N: untouched
          for (int64_t c = 0; c < n; ++c) {
            if (!same_bits(y[r * ldy + c], alone[r * n + c]) ||
                !same_bits(residual[r * ldy + c], before[r * ldy + c] + alone[r * n + c]))
              FAIL(name << " " << std::string(dtype_name(t)) << " at (" << r << "," << c << ")");
          }
        }
      }
    }
  }
}

TEST_CASE("packed: same result with 1 or 2 threads, no allocation once warm") {
  BackendGuard guard;
  std::mt19937 rng(104);
  const int64_t m = 11, n = 16 * 40 + 3, k = 1024;  // enough work for both threads
  const std::vector<float> x = random_floats(rng, m * k);
  const std::vector<uint8_t> w = quantize(DType::Q4_0, random_floats(rng, n * k), n, k);
  const PackedBuffer buffer(DType::Q4_0, w.data(), n, k);
  const PackedWeights& p = buffer.view();
  const int threads = omp_get_max_threads();
  for (const std::string& name : backends()) {
    omp_set_num_threads(1);
    const std::vector<float> one = run_packed(name.c_str(), p, x, m);
    omp_set_num_threads(2);
    const std::vector<float> two = run_packed(name.c_str(), p, x, m);
    CHECK(std::memcmp(one.data(), two.data(), one.size() * 4) == 0);
  }
  omp_set_num_threads(threads);
  std::vector<float> y(m * n);
  matmul_packed(p, x.data(), m, y.data(), n);  // warm up
  g_allocations = 0;
  g_count_allocations = true;
  matmul_packed(p, x.data(), m, y.data(), n);
  matmul_packed(p, x.data(), 1, y.data(), n);
  g_count_allocations = false;
  CHECK(g_allocations == 0);
}
