// Helpers shared by the test programs: fixture paths, temporary folders, files and JSON goldens,
// expected octet::Errors, random inputs and logit comparisons.
#pragma once
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace octet::test {

namespace fs = std::filesystem;

#ifdef OCTET_BIN_DIR
// The shell command that runs one of the built apps: through the emulator in a cross build.
inline std::string app_command(const std::string& name) { return OCTET_RUN_APP + std::string(OCTET_BIN_DIR) + "/" + name; }
#endif

// tests/data/<relative> and ../shared/<relative> (see tests/CMakeLists.txt).
inline fs::path test_data(const std::string& relative) { return fs::path(OCTET_TEST_DATA) / relative; }
inline fs::path shared_data(const std::string& relative) { return fs::path(OCTET_SHARED) / relative; }

// A fresh, empty folder under the system's temporary directory, removed with its contents when
// the object goes out of scope. Names are unique per process and per instance.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "test") {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("octet_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline std::vector<uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return {std::istreambuf_iterator<char>(in), {}};
}

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return {std::istreambuf_iterator<char>(in), {}};
}

inline void write_bytes(const fs::path& path, const void* data, size_t size) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

inline void write_bytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
  write_bytes(path, bytes.data(), bytes.size());
}

inline nlohmann::json read_json(const fs::path& path) { return nlohmann::json::parse(read_text(path)); }

// The code of the octet::Error that f throws; fails the test case when f throws none.
template <class F>
ErrorCode error_code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  FAIL("no octet::Error thrown");
  return ErrorCode::Internal;
}

// Checks that f throws octet::Error with this code and a message holding every part; fails the
// test case when f throws none.
template <class F>
void check_error(F&& f, ErrorCode expected, std::initializer_list<std::string> parts) {
  try {
    f();
  } catch (const Error& e) {
    const std::string message = e.what();
    CHECK_MESSAGE(e.code() == expected, message);
    for (const std::string& part : parts)
      CHECK_MESSAGE(message.find(part) != std::string::npos, "\"", part, "\" not in: ", message);
    return;
  }
  std::string wanted;
  for (const std::string& part : parts) wanted += " \"" + part + "\"";
  FAIL("no octet::Error; expected one containing" << wanted);
}
template <class F>
void check_error(F&& f, ErrorCode expected, const std::string& part) {
  check_error(std::forward<F>(f), expected, {part});
}

// n draws from a normal distribution.
inline std::vector<float> random_vector(std::mt19937& rng, size_t n, float stddev, float mean = 0.0f) {
  std::normal_distribution<float> normal(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

inline int32_t argmax(const float* x, int64_t n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

// How far logits a are from reference logits b, one row (position) at a time.
struct LogitError {
  double max_abs = 0;       // max |a - b| over every element
  double max_relative = 0;  // max over rows of max|a - b| / max(1e-6, max|b|)
  int top1_agree = 0;       // rows whose argmax is the same
  int rows = 0;
};

// a, b: rows x n. The relative error is taken against each row's largest reference logit
// rather than per element, since logits near zero would make an elementwise ratio meaningless.
inline LogitError compare_logits(const float* a, const float* b, int64_t rows, int64_t n) {
  LogitError e;
  e.rows = static_cast<int>(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a + r * n;
    const float* br = b + r * n;
    double row_abs = 0, row_scale = 0;
    for (int64_t i = 0; i < n; ++i) {
      row_abs = std::max(row_abs, std::fabs(static_cast<double>(ar[i]) - br[i]));
      row_scale = std::max(row_scale, std::fabs(static_cast<double>(br[i])));
    }
    e.max_abs = std::max(e.max_abs, row_abs);
    e.max_relative = std::max(e.max_relative, row_abs / std::max(1e-6, row_scale));
    e.top1_agree += argmax(ar, n) == argmax(br, n);
  }
  return e;
}

}  // namespace octet::test
