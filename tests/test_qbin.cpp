// The .qbin reader and writer: round trips, and hostile files (truncated, bit-flipped, crafted
// with valid checksums) that must each give a clean octet::Error, never a crash or huge allocation.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "engine/error.h"
#include "engine/qbin.h"
#include "kernels/kernels.h"
#include "test_util.h"

using namespace octet;
using octet::test::read_bytes;
using octet::test::TempDir;
using octet::test::write_bytes;
namespace fs = std::filesystem;

namespace {

qbin::Metadata sample_metadata() {
  qbin::Metadata m;
  m.set("general.architecture", std::string("llama"));
  m.set("llama.dim", uint32_t{64});
  m.set("tokenizer.bos_id", int32_t{-1});
  m.set("llama.rms_eps", 1e-5f);
  m.set("big", uint64_t{1} << 40);
  m.set("llama.tied_output", true);
  m.set("tokenizer.sentencepiece.model", qbin::Bytes{0, 1, 2, 255});
  m.set("tokenizer.eos_ids", std::vector<int32_t>{2, 7});
  m.set("scales", std::vector<float>{0.5f, -1.25f});
  m.set("tokenizer.bpe.merges", std::vector<std::string>{"a b", "", "ü ß"});
  return m;
}

struct Sample {
  std::vector<float> a;     // f32 [3][5]
  std::vector<uint8_t> bq;  // q8_0 [2][64], row-major
  std::vector<uint8_t> pq;  // q4_0 [17][32], packed: one group of 16 rows and one row after it
};

// Writes a file holding the three tensors of a Sample; returns their contents.
Sample write_sample(const fs::path& path) {
  Sample s;
  s.a.resize(15);
  for (int i = 0; i < 15; ++i) s.a[i] = 0.25f * i - 1.f;
  std::vector<float> b(128);
  for (int i = 0; i < 128; ++i) b[i] = std::sin(0.1f * i);
  s.bq.resize(kernels::row_bytes(DType::Q8_0, 64) * 2);
  kernels::quantize_row(DType::Q8_0, b.data(), s.bq.data(), 128);
  std::vector<float> p(17 * 32);
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::cos(0.37f * i);
  std::vector<uint8_t> rows(kernels::row_bytes(DType::Q4_0, 32) * 17);
  kernels::quantize_row(DType::Q4_0, p.data(), rows.data(), 17 * 32);
  const kernels::PackedBuffer packed(DType::Q4_0, rows.data(), 17, 32);
  s.pq.assign(packed.bytes(), packed.bytes() + packed.size());
  qbin::Writer w(path.string(), sample_metadata(),
                 {{"a", DType::F32, {3, 5}},
                  {"layers.0.b", DType::Q8_0, {2, 64}},
                  {"p", DType::Q4_0, {17, 32}, Layout::Packed}});
  w.write_next(s.a.data(), s.a.size() * 4);
  w.write_next(s.bq.data(), s.bq.size());
  w.write_next(s.pq.data(), s.pq.size());
  w.finish();
  return s;
}

uint64_t read_u64(const std::vector<uint8_t>& f, size_t at) {
  uint64_t v;
  std::memcpy(&v, f.data() + at, 8);
  return v;
}
void put_u64(std::vector<uint8_t>& f, size_t at, uint64_t v) { std::memcpy(f.data() + at, &v, 8); }
void put_u32(std::vector<uint8_t>& f, size_t at, uint32_t v) { std::memcpy(f.data() + at, &v, 4); }
// Re-seals the header checksum, so a crafted change reaches the validation behind it.
void reseal(std::vector<uint8_t>& f) {
  const uint64_t data_offset = read_u64(f, 48);
  put_u64(f, 56, qbin::checksum64(f.data() + 64, data_offset - 64));
}

// Opening must fail with an octet::Error whose message contains `needle`.
void expect_rejected(const fs::path& path, const std::string& needle) {
  try {
    qbin::File::open(path.string());
    FAIL("opened a broken file; expected: " << needle);
  } catch (const Error& e) {
    CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
  }
}

}  // namespace

TEST_CASE("metadata and tensors round-trip") {
  TempDir dir("qbin");
  const fs::path path = dir / "m.qbin";
  const auto [a, bq, pq] = write_sample(path);
  CHECK_FALSE(fs::exists(path.string() + ".part"));
  auto file = qbin::File::open(path.string());
  const auto& m = file->metadata();
  CHECK(m.str("general.architecture") == "llama");
  CHECK(m.u32("llama.dim") == 64);
  CHECK(m.i32("tokenizer.bos_id") == -1);
  CHECK(m.f32("llama.rms_eps") == 1e-5f);
  CHECK(m.u64("big") == (uint64_t{1} << 40));
  CHECK(m.boolean("llama.tied_output"));
  CHECK(m.bytes("tokenizer.sentencepiece.model") == qbin::Bytes{0, 1, 2, 255});
  CHECK(m.i32_array("tokenizer.eos_ids") == std::vector<int32_t>{2, 7});
  CHECK(m.f32_array("scales") == std::vector<float>{0.5f, -1.25f});
  CHECK(m.str_array("tokenizer.bpe.merges") == std::vector<std::string>{"a b", "", "ü ß"});
  CHECK(m.u32_or("missing", 9) == 9);
  CHECK_THROWS_AS(m.u32("missing"), Error);
  CHECK_THROWS_WITH_AS(m.u32("llama.rms_eps"), doctest::Contains("expected u32"), Error);

  REQUIRE(file->tensors().size() == 3);
  const auto& ta = file->require("a", {3, 5});
  CHECK(ta.dtype == DType::F32);
  CHECK(ta.layout == Layout::Rows);
  CHECK(std::memcmp(file->data(ta), a.data(), a.size() * 4) == 0);
  const auto& tb = file->require("layers.0.b", {2, 64});
  CHECK(tb.dtype == DType::Q8_0);
  CHECK(tb.rows() == 2);
  CHECK(std::memcmp(file->data(tb), bq.data(), bq.size()) == 0);
  const auto& tp = file->require("p", {17, 32});
  CHECK(tp.dtype == DType::Q4_0);
  CHECK(tp.layout == Layout::Packed);
  REQUIRE(tp.size == pq.size());
  CHECK(pq.size() == kernels::packed_bytes(DType::Q4_0, 17, 32));
  CHECK(std::memcmp(file->data(tp), pq.data(), pq.size()) == 0);
  for (const auto& t : file->tensors())
    CHECK(reinterpret_cast<uintptr_t>(file->data(t)) % qbin::kAlignment == 0);
  CHECK_THROWS_WITH_AS(file->require("a", {5, 3}), doctest::Contains("expected [5, 3]"), Error);
  CHECK_THROWS_WITH_AS(file->require("nope", {1}), doctest::Contains("missing"), Error);
}

TEST_CASE("writer refuses wrong sizes and removes unfinished files") {
  TempDir dir("qbin");
  const fs::path path = dir / "w.qbin";
  {
    qbin::Writer w(path.string(), {}, {{"t", DType::F32, {4}}});
    float four[4] = {};
    CHECK_THROWS_AS(w.write_next(four, 8), Error);
    CHECK_THROWS_AS(w.finish(), Error);  // "t" not written yet
  }
  CHECK_FALSE(fs::exists(path));
  CHECK_FALSE(fs::exists(path.string() + ".part"));
  CHECK_THROWS_AS(qbin::Writer(path.string(), {}, {{"q", DType::Q4_0, {2, 33}}}), Error);  // row not of 32s
  CHECK_THROWS_AS(qbin::Writer(path.string(), {}, {{"d", DType::F32, {2}}, {"d", DType::F32, {2}}}), Error);
  // Only q8_0 and q4_0 matrices have a packed form.
  CHECK_THROWS_WITH_AS(qbin::Writer(path.string(), {}, {{"p", DType::Q4_1, {16, 32}, Layout::Packed}}),
                       doctest::Contains("can be packed"), Error);
  CHECK_THROWS_WITH_AS(qbin::Writer(path.string(), {}, {{"p", DType::Q8_0, {2, 16, 32}, Layout::Packed}}),
                       doctest::Contains("can be packed"), Error);
}

TEST_CASE("every truncation is rejected") {
  TempDir dir("qbin");
  const fs::path path = dir / "t.qbin";
  write_sample(path);
  const auto full = read_bytes(path);
  // The last tensor ends before the final padding; cutting only padding leaves a valid file.
  auto file = qbin::File::open(path.string());
  const auto& last = file->tensors().back();
  const size_t end_of_data = read_u64(full, 48) + last.offset + last.size;
  file.reset();
  for (size_t n = 0; n < end_of_data; ++n) {
    write_bytes(path, std::vector<uint8_t>(full.begin(), full.begin() + n));
    CHECK_THROWS_AS(qbin::File::open(path.string()), Error);
  }
}

TEST_CASE("every bit flip in checked bytes is rejected") {
  TempDir dir("qbin");
  const fs::path path = dir / "f.qbin";
  write_sample(path);
  const auto full = read_bytes(path);
  std::vector<size_t> checked;  // header, metadata, table, and each tensor's bytes
  const uint64_t data_offset = read_u64(full, 48);
  for (size_t i = 0; i < data_offset; ++i) checked.push_back(i);
  auto file = qbin::File::open(path.string());
  for (const auto& t : file->tensors())
    for (size_t i = 0; i < t.size; ++i) checked.push_back(data_offset + t.offset + i);
  file.reset();
  std::mt19937 rng(1234);
  for (size_t at : checked) {
    auto bad = full;
    bad[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
    write_bytes(path, bad);
    CHECK_THROWS_AS(qbin::File::open(path.string()), Error);
  }
  // Without data verification, a flipped tensor byte is accepted: that is the caller's choice.
  auto bad = full;
  bad[data_offset] ^= 1;
  write_bytes(path, bad);
  CHECK_NOTHROW(qbin::File::open(path.string(), /*verify_data=*/false));
}

TEST_CASE("crafted headers with valid checksums are rejected") {
  TempDir dir("qbin");
  const fs::path path = dir / "c.qbin";
  write_sample(path);
  const auto good = read_bytes(path);
  const uint64_t table_offset = read_u64(good, 32);

  SUBCASE("wrong magic and version") {
    auto f = good;
    f[0] = 'X';
    write_bytes(path, f);
    expect_rejected(path, "bad magic");
    for (uint32_t version : {1u, 3u}) {
      f = good;
      put_u32(f, 8, version);
      write_bytes(path, f);
      expect_rejected(path, "unsupported .qbin version " + std::to_string(version));
    }
  }
  SUBCASE("sections past the end of the file") {
    auto f = good;
    put_u64(f, 24, uint64_t{1} << 62);  // metadata size
    write_bytes(path, f);
    expect_rejected(path, "inconsistent");
    f = good;
    put_u64(f, 48, read_u64(f, 48) + 64 * 1000);  // data offset past EOF
    write_bytes(path, f);
    expect_rejected(path, "inconsistent");
  }
  SUBCASE("huge counts and lengths inside the metadata") {
    // The first entry's key length: make it claim 4 GiB.
    auto f = good;
    put_u32(f, 64 + 4, 0xFFFFFFF0u);
    reseal(f);
    write_bytes(path, f);
    expect_rejected(path, "truncated metadata");
    // A tensor count far beyond what the table holds.
    f = good;
    put_u32(f, table_offset, 0x7FFFFFFFu);
    reseal(f);
    write_bytes(path, f);
    expect_rejected(path, "truncated tensor table");
  }
  SUBCASE("tensor entries: dtype, rank, dims, size, offset") {
    // Entry: name (4 + len) | dtype | layout | ndim | dims... | offset | size | checksum.
    const size_t entry = table_offset + 4;
    const size_t name_len = 1;  // "a"
    const size_t dtype_at = entry + 4 + name_len, layout_at = dtype_at + 4, ndim_at = layout_at + 4, dims_at = ndim_at + 4;
    const size_t offset_at = dims_at + 16, size_at = offset_at + 8;
    auto craft = [&](auto&& change, const std::string& needle) {
      auto f = good;
      change(f);
      reseal(f);
      write_bytes(path, f);
      expect_rejected(path, needle);
    };
    craft([&](auto& f) { put_u32(f, dtype_at, 99); }, "unknown dtype 99");
    craft([&](auto& f) { put_u32(f, layout_at, 7); }, "unknown layout 7");
    craft([&](auto& f) { put_u32(f, layout_at, 1); }, "can be packed");  // an f32 tensor
    craft([&](auto& f) { put_u32(f, dtype_at, 2); put_u32(f, layout_at, 1); }, "");  // q8_0 [3][5]: row not of 32s
    craft([&](auto& f) { put_u32(f, ndim_at, 7); }, "7 dimensions");
    craft([&](auto& f) { put_u64(f, dims_at, 0); }, "out of range");
    craft([&](auto& f) { put_u64(f, dims_at, ~uint64_t{0}); }, "out of range");
    craft([&](auto& f) { put_u64(f, dims_at, uint64_t{1} << 40); }, "");  // size no longer matches
    craft([&](auto& f) { put_u64(f, size_at, 1); }, "does not match its shape");
    craft([&](auto& f) { put_u64(f, offset_at, 64 * 1000); }, "outside the file");
    craft([&](auto& f) { put_u64(f, offset_at, 8); }, "outside the file");  // misaligned
  }
}
