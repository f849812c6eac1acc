// The LLaMA runtime: each op against a direct reference computation, the forward pass of a small
// random model against a double-precision reference and against itself (one batch == token by
// token), load-time validation, then the acceptance tests against transformers and llama2.c goldens.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <complex>
#include <functional>
#include <map>
#include <numbers>
#include <random>

#include "convert/convert.h"
#include "engine/error.h"
#include "engine/model.h"
#include "engine/ops.h"
#include "engine/qbin.h"
#include "kernels/kernels.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"

using namespace octet;
using octet::test::error_code_of;
using octet::test::random_vector;
using octet::test::TempDir;

namespace {

// transformers' _compute_default/linear/llama3_rope_parameters, transcribed operation by
// operation (in double) as the reference for ops::rope_inverse_frequencies.
std::vector<double> transformers_inv_freq(int head_dim, double base, const ops::RopeScaling& s) {
  std::vector<double> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) inv_freq[i] = 1.0 / std::pow(base, (2.0 * i) / head_dim);
  if (s.kind == ops::RopeScaling::Kind::Linear) {
    for (double& f : inv_freq) f /= s.factor;
  } else if (s.kind == ops::RopeScaling::Kind::Llama3) {
    const double old_context_len = static_cast<double>(s.original_context);
    const double low_freq_wavelen = old_context_len / s.low_freq_factor;
    const double high_freq_wavelen = old_context_len / s.high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2 * std::numbers::pi / f;
      double inv_freq_llama = wavelen > low_freq_wavelen ? f / s.factor : f;
      const double smooth_factor =
          (old_context_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      const double smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / s.factor + smooth_factor * inv_freq_llama;
      const bool is_medium_freq = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      f = is_medium_freq ? smoothed_inv_freq : inv_freq_llama;
    }
  }
  return inv_freq;
}

}  // namespace

// ---- Ops ------------------------------------------------------------------------------------

TEST_CASE("rope inverse frequencies match transformers (none, linear, llama3)") {
  ops::RopeScaling none;
  ops::RopeScaling linear{.kind = ops::RopeScaling::Kind::Linear, .factor = 4.0f};
  // Llama 3.1's settings, and a small one whose three wavelength bands all hold frequencies.
  ops::RopeScaling llama31{.kind = ops::RopeScaling::Kind::Llama3, .factor = 8.0f, .low_freq_factor = 1.0f,
                           .high_freq_factor = 4.0f, .original_context = 8192};
  ops::RopeScaling llama3_small{.kind = ops::RopeScaling::Kind::Llama3, .factor = 8.0f, .low_freq_factor = 1.0f,
                                .high_freq_factor = 4.0f, .original_context = 256};
  struct Case {
    int head_dim;
    float theta;
    ops::RopeScaling scaling;
  };
  for (const Case& c : {Case{64, 10000.0f, none}, Case{128, 1e6f, none}, Case{16, 10000.0f, linear},
                        Case{128, 500000.0f, llama31}, Case{16, 10000.0f, llama3_small}}) {
    CAPTURE(c.head_dim);
    CAPTURE(static_cast<int>(c.scaling.kind));
    const std::vector<float> got = ops::rope_inverse_frequencies(c.head_dim, c.theta, c.scaling);
    const std::vector<double> want = transformers_inv_freq(c.head_dim, c.theta, c.scaling);
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-6));
  }
  // The small llama3 case does exercise all three bands: kept, blended and divided by factor.
  const std::vector<float> base = ops::rope_inverse_frequencies(16, 10000.0f, none);
  const std::vector<float> scaled = ops::rope_inverse_frequencies(16, 10000.0f, llama3_small);
  int kept = 0, divided = 0, blended = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    const float ratio = scaled[i] / base[i];
    if (ratio == 1.0f) ++kept;
    else if (std::fabs(ratio - 1.0f / 8) < 1e-6f) ++divided;
    else ++blended;
  }
  CHECK(kept == 3);
  CHECK(blended == 1);
  CHECK(divided == 4);
}

namespace {

void rope_at(float* x, int n_heads, int head_dim, int pos, const std::vector<float>& inv_freq) {
  std::vector<float> cos_sin(head_dim);
  ops::rope_rotation(pos, inv_freq.data(), head_dim / 2, cos_sin.data());
  ops::rope(x, n_heads, head_dim, cos_sin.data());
}

}  // namespace

TEST_CASE("rope rotates pairs (i, i + head_dim/2) by pos * inv_freq[i]") {
  std::mt19937 rng(1);
  const int n_heads = 3, head_dim = 16, half = head_dim / 2;
  const std::vector<float> inv_freq = ops::rope_inverse_frequencies(head_dim, 10000.0f, {});
  for (int pos : {0, 1, 7, 1000}) {
    const std::vector<float> x = random_vector(rng, n_heads * head_dim, 1.0f);
    std::vector<float> y = x;
    rope_at(y.data(), n_heads, head_dim, pos, inv_freq);
    for (int h = 0; h < n_heads; ++h) {
      for (int i = 0; i < half; ++i) {
        // As a complex number x_i + j x_{i+half}, rotated by the angle (a float32 product, as
        // transformers computes it: at pos 1000 that alone moves the result by ~1e-5).
        const std::complex<double> z(x[h * head_dim + i], x[h * head_dim + i + half]);
        const float angle = static_cast<float>(pos) * inv_freq[i];
        const std::complex<double> rotated = z * std::polar(1.0, static_cast<double>(angle));
        CHECK(y[h * head_dim + i] == doctest::Approx(rotated.real()).epsilon(1e-5));
        CHECK(y[h * head_dim + i + half] == doctest::Approx(rotated.imag()).epsilon(1e-5));
      }
    }
  }
  // What RoPE is for: q.k depends on the positions' difference only.
  const std::vector<float> q = random_vector(rng, head_dim, 1.0f), k = random_vector(rng, head_dim, 1.0f);
  auto rotated_dot = [&](int q_pos, int k_pos) {
    std::vector<float> qr = q, kr = k;
    rope_at(qr.data(), 1, head_dim, q_pos, inv_freq);
    rope_at(kr.data(), 1, head_dim, k_pos, inv_freq);
    double dot = 0;
    for (int i = 0; i < head_dim; ++i) dot += qr[i] * kr[i];
    return dot;
  };
  CHECK(rotated_dot(9, 4) == doctest::Approx(rotated_dot(25, 20)).epsilon(1e-4));
}

TEST_CASE("rmsnorm and swiglu match their formulas") {
  std::mt19937 rng(2);
  const int rows = 3, n = 37;
  const std::vector<float> x = random_vector(rng, rows * n, 2.0f), weight = random_vector(rng, n, 0.3f, 1.0f);
  std::vector<float> out(rows * n);
  ops::rmsnorm(x.data(), weight.data(), out.data(), rows, n, 1e-5f);
  for (int r = 0; r < rows; ++r) {
    double mean_square = 0;
    for (int i = 0; i < n; ++i) mean_square += double(x[r * n + i]) * x[r * n + i] / n;
    for (int i = 0; i < n; ++i) {
      CHECK(out[r * n + i] == doctest::Approx(x[r * n + i] / std::sqrt(mean_square + 1e-5) * weight[i]).epsilon(1e-5));
    }
  }

  std::vector<float> gate = {-3.0f, 0.0f, 0.5f, 4.0f}, up = {2.0f, 1.0f, -1.0f, 0.25f};
  ops::swiglu(gate.data(), up.data(), gate.size());
  const float raw[] = {-3.0f, 0.0f, 0.5f, 4.0f};
  for (int i = 0; i < 4; ++i) CHECK(gate[i] == doctest::Approx(raw[i] / (1 + std::exp(-raw[i])) * up[i]));
}

TEST_CASE("attention matches softmax(q k^T / sqrt(d)) v with GQA, causal mask and sliding window") {
  std::mt19937 rng(3);
  const int64_t n_heads = 6, n_kv_heads = 2, head_dim = 8, capacity = 20;
  const int64_t first_pos = 5, n = 7;  // queries at positions 5..11 over keys 0..11
  for (int64_t window : {0, 4}) {
    CAPTURE(window);
    const ops::AttentionShape shape{n_heads, n_kv_heads, head_dim, window};
    const std::vector<float> q = random_vector(rng, n * n_heads * head_dim, 1.0f);
    // The layer's heads follow another layer's in the cache, as in a model's second layer.
    const int64_t first_head = n_kv_heads, cache_heads = 2 * n_kv_heads;
    const std::vector<float> cache_keys = random_vector(rng, cache_heads * capacity * head_dim, 1.0f);
    const std::vector<float> cache_values = random_vector(rng, cache_heads * capacity * head_dim, 1.0f);
    const float* keys = cache_keys.data() + first_head * capacity * head_dim;
    const float* values = cache_values.data() + first_head * capacity * head_dim;
    const auto key_rows = ops::kv_rows(DType::F32, cache_keys.data(), capacity, head_dim);
    const auto value_rows = ops::kv_rows(DType::F32, cache_values.data(), capacity, head_dim);
    std::vector<float> out(n * n_heads * head_dim);
    ops::attention(q.data(), {DType::F32, key_rows.data(), value_rows.data(), capacity, first_head}, n, first_pos, shape,
                   out.data());

    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = first_pos + i;
      for (int64_t h = 0; h < n_heads; ++h) {
        const int64_t kv = h / (n_heads / n_kv_heads);
        std::vector<double> weights(pos + 1, 0.0);
        double total = 0;
        for (int64_t j = 0; j <= pos; ++j) {
          if (window > 0 && pos - j >= window) continue;  // masked out
          double dot = 0;
          for (int64_t d = 0; d < head_dim; ++d) {
            dot += double(q[(i * n_heads + h) * head_dim + d]) * keys[(kv * capacity + j) * head_dim + d];
          }
          weights[j] = std::exp(dot / std::sqrt(double(head_dim)));
          total += weights[j];
        }
        for (int64_t d = 0; d < head_dim; ++d) {
          double expected = 0;
          for (int64_t j = 0; j <= pos; ++j) expected += weights[j] / total * values[(kv * capacity + j) * head_dim + d];
          CHECK(out[(i * n_heads + h) * head_dim + d] == doctest::Approx(expected).epsilon(1e-5));
        }
      }
    }
  }
}

TEST_CASE("embedding dequantizes one row, matmul is x W^T") {
  std::mt19937 rng(4);
  const int64_t rows = 5, cols = 64, m = 3;
  const std::vector<float> w = random_vector(rng, rows * cols, 1.0f), x = random_vector(rng, m * cols, 1.0f);
  const ops::Matrix matrix{DType::F32, Layout::Rows, w.data(), rows, cols};
  std::vector<float> row(cols);
  ops::embedding(matrix, 3, row.data());
  CHECK(std::equal(row.begin(), row.end(), w.begin() + 3 * cols));

  std::vector<float> y(m * (rows + 2), -1.0f);  // ldy > rows: the padding stays untouched
  ops::matmul(matrix, x.data(), m, y.data(), rows + 2);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = 0; r < rows; ++r) {
      double dot = 0;
      for (int64_t c = 0; c < cols; ++c) dot += double(x[i * cols + c]) * w[r * cols + c];
      CHECK(y[i * (rows + 2) + r] == doctest::Approx(dot).epsilon(1e-5));
    }
    CHECK(y[i * (rows + 2) + rows] == -1.0f);
  }
}

TEST_CASE("a packed matrix: embedding rows equal those of the row-major matrix") {
  // 37 rows: two packed groups of 16 and 5 rows past them, stored row-major.
  std::mt19937 rng(5);
  const int64_t rows = 37, cols = 64;
  const std::vector<float> w = random_vector(rng, rows * cols, 1.0f);
  std::vector<uint8_t> stored(rows * kernels::row_bytes(DType::Q8_0, cols));
  kernels::quantize_row(DType::Q8_0, w.data(), stored.data(), rows * cols);
  const kernels::PackedBuffer buffer(DType::Q8_0, stored.data(), rows, cols);
  REQUIRE(buffer.view().packed_rows() == 32);
  const ops::Matrix plain{DType::Q8_0, Layout::Rows, stored.data(), rows, cols};
  const ops::Matrix packed{DType::Q8_0, Layout::Packed, buffer.bytes(), rows, cols};
  std::vector<float> from_plain(cols), from_packed(cols);
  for (int32_t id : {0, 15, 16, 31, 32, 36}) {
    CAPTURE(id);
    ops::embedding(plain, id, from_plain.data());
    ops::embedding(packed, id, from_packed.data());
    CHECK(from_plain == from_packed);
  }
}

// ---- A small random model, written as a .qbin, and a double-precision reference forward ------

namespace {

struct TinyModel {
  int64_t vocab = 512, dim = 64, n_layers = 2, n_heads = 4, n_kv_heads = 2, head_dim = 16, ffn_dim = 96;
  int64_t context = 1100;
  float rms_eps = 1e-5f, rope_theta = 10000.0f;
  ops::RopeScaling rope;
  uint32_t sliding_window = 0;
  bool biases = false, tied = false;
  std::map<std::string, std::vector<float>> weights;  // by Octet tensor name, [out][in]
  std::map<std::string, std::vector<int64_t>> shapes;
  std::vector<std::string> order;  // tensor names in file order
};

// Fills `model`'s weights with random values of sensible scale (norm weights around 1).
void randomize(TinyModel& m, uint32_t seed) {
  std::mt19937 rng(seed);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float stddev, float mean = 0.0f) {
    int64_t size = 1;
    for (int64_t d : shape) size *= d;
    m.weights[name] = random_vector(rng, size, stddev, mean);
    m.shapes[name] = shape;
    m.order.push_back(name);
  };
  const int64_t q_dim = m.n_heads * m.head_dim, kv_dim = m.n_kv_heads * m.head_dim;
  add("token_embedding.weight", {m.vocab, m.dim}, 1.0f);
  if (!m.tied) add("output.weight", {m.vocab, m.dim}, 0.3f);
  add("norm.weight", {m.dim}, 0.1f, 1.0f);
  for (int64_t l = 0; l < m.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {m.dim}, 0.1f, 1.0f);
    add(p + "attn_q.weight", {q_dim, m.dim}, 0.3f);
    add(p + "attn_k.weight", {kv_dim, m.dim}, 0.3f);
    add(p + "attn_v.weight", {kv_dim, m.dim}, 0.3f);
    if (m.biases) {
      add(p + "attn_q.bias", {q_dim}, 0.3f);
      add(p + "attn_k.bias", {kv_dim}, 0.3f);
      add(p + "attn_v.bias", {kv_dim}, 0.3f);
    }
    add(p + "attn_out.weight", {m.dim, q_dim}, 0.15f);
    add(p + "ffn_norm.weight", {m.dim}, 0.1f, 1.0f);
    add(p + "ffn_gate.weight", {m.ffn_dim, m.dim}, 0.2f);
    add(p + "ffn_up.weight", {m.ffn_dim, m.dim}, 0.2f);
    add(p + "ffn_down.weight", {m.dim, m.ffn_dim}, 0.15f);
  }
}

qbin::Metadata tiny_metadata(const TinyModel& m) {
  qbin::Metadata md;
  md.set("general.architecture", std::string("llama"));
  md.set("general.name", std::string("tiny-random"));
  md.set("llama.vocab_size", uint32_t(m.vocab));
  md.set("llama.dim", uint32_t(m.dim));
  md.set("llama.n_layers", uint32_t(m.n_layers));
  md.set("llama.n_heads", uint32_t(m.n_heads));
  md.set("llama.n_kv_heads", uint32_t(m.n_kv_heads));
  md.set("llama.head_dim", uint32_t(m.head_dim));
  md.set("llama.ffn_dim", uint32_t(m.ffn_dim));
  md.set("llama.context_length", uint32_t(m.context));
  md.set("llama.rms_eps", m.rms_eps);
  md.set("llama.rope_theta", m.rope_theta);
  const char* scaling[] = {"none", "linear", "llama3"};
  md.set("llama.rope_scaling", std::string(scaling[static_cast<int>(m.rope.kind)]));
  md.set("llama.rope_factor", m.rope.factor);
  md.set("llama.rope_low_freq_factor", m.rope.low_freq_factor);
  md.set("llama.rope_high_freq_factor", m.rope.high_freq_factor);
  md.set("llama.rope_original_context", uint32_t(m.rope.original_context));
  md.set("llama.sliding_window", m.sliding_window);
  md.set("llama.tied_output", m.tied);
  sentencepiece_metadata(test::read_text(test::shared_data("models/stories260K/tok512.model")), md);
  return md;
}

struct WriteOptions {
  DType matrix_dtype = DType::F32;
  std::map<std::string, DType> dtype_of;  // per-tensor overrides
  std::string drop;                       // a tensor left out
  std::function<void(qbin::Metadata&)> edit_metadata;
};
WriteOptions matrices_in(DType dtype) {
  WriteOptions options;
  options.matrix_dtype = dtype;
  return options;
}
WriteOptions without(const std::string& tensor, DType matrix_dtype = DType::F32) {
  WriteOptions options = matrices_in(matrix_dtype);
  options.drop = tensor;
  return options;
}
WriteOptions with_dtype(const std::string& tensor, DType dtype) {
  WriteOptions options;
  options.dtype_of[tensor] = dtype;
  return options;
}
WriteOptions with_metadata(std::function<void(qbin::Metadata&)> edit) {
  WriteOptions options;
  options.edit_metadata = std::move(edit);
  return options;
}

// Writes the model as a .qbin: matrices in options.matrix_dtype, vectors in f32.
void write_tiny(const TinyModel& m, const std::string& path, const WriteOptions& options = {}) {
  qbin::Metadata metadata = tiny_metadata(m);
  if (options.edit_metadata) options.edit_metadata(metadata);
  std::vector<qbin::Writer::Declared> declared;
  for (const std::string& name : m.order) {
    if (name == options.drop) continue;
    const std::vector<int64_t>& shape = m.shapes.at(name);
    DType dtype = shape.size() == 2 ? options.matrix_dtype : DType::F32;
    if (auto it = options.dtype_of.find(name); it != options.dtype_of.end()) dtype = it->second;
    declared.push_back({name, dtype, shape});
  }
  qbin::Writer writer(path, metadata, declared);
  for (const qbin::Writer::Declared& t : declared) {
    const std::vector<float>& values = m.weights.at(t.name);
    const int64_t cols = t.shape.back(), rows = static_cast<int64_t>(values.size()) / cols;
    std::vector<uint8_t> bytes(kernels::row_bytes(t.dtype, cols) * rows);
    for (int64_t r = 0; r < rows; ++r) {
      kernels::quantize_row(t.dtype, values.data() + r * cols, bytes.data() + r * kernels::row_bytes(t.dtype, cols), cols);
    }
    writer.write_next(bytes.data(), bytes.size());
  }
  writer.finish();
}

// The forward pass written out plainly in double, all positions at once: the reference for the
// engine's batched, cached, float forward. Returns tokens.size() x vocab logits.
std::vector<double> reference_logits(const TinyModel& m, const std::vector<int32_t>& tokens) {
  const int64_t n = tokens.size(), dim = m.dim, q_dim = m.n_heads * m.head_dim, kv_dim = m.n_kv_heads * m.head_dim;
  const int64_t half = m.head_dim / 2;
  auto w = [&](const std::string& name) -> const std::vector<float>& { return m.weights.at(name); };
  // y[i][r] = sum_c x[i][c] W[r][c] (+ b[r])
  auto linear = [&](const std::vector<double>& x, const std::vector<float>& W, int64_t in, int64_t out,
                    const std::vector<float>* b = nullptr) {
    std::vector<double> y(n * out);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < out; ++r) {
        double sum = b ? (*b)[r] : 0.0;
        for (int64_t c = 0; c < in; ++c) sum += x[i * in + c] * W[r * in + c];
        y[i * out + r] = sum;
      }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, const std::vector<float>& weight) {
    std::vector<double> y(n * dim);
    for (int64_t i = 0; i < n; ++i) {
      double mean_square = 0;
      for (int64_t c = 0; c < dim; ++c) mean_square += x[i * dim + c] * x[i * dim + c] / dim;
      for (int64_t c = 0; c < dim; ++c) y[i * dim + c] = x[i * dim + c] / std::sqrt(mean_square + m.rms_eps) * weight[c];
    }
    return y;
  };
  const std::vector<double> inv_freq = transformers_inv_freq(m.head_dim, m.rope_theta, m.rope);
  auto rope = [&](std::vector<double>& x, int64_t heads) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t k = 0; k < half; ++k) {
          double* head = &x[(i * heads + h) * m.head_dim];
          // The angle in float32 as transformers computes it; cos and sin in double.
          const double angle = static_cast<float>(i) * static_cast<float>(inv_freq[k]);
          const double a = head[k], b = head[k + half];
          head[k] = a * std::cos(angle) - b * std::sin(angle);
          head[k + half] = b * std::cos(angle) + a * std::sin(angle);
        }
  };

  std::vector<double> x(n * dim);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < dim; ++c) x[i * dim + c] = w("token_embedding.weight")[tokens[i] * dim + c];
  for (int64_t l = 0; l < m.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    auto bias = [&](const std::string& name) { return m.biases ? &w(p + name) : nullptr; };
    std::vector<double> h = rmsnorm(x, w(p + "attn_norm.weight"));
    std::vector<double> q = linear(h, w(p + "attn_q.weight"), dim, q_dim, bias("attn_q.bias"));
    std::vector<double> k = linear(h, w(p + "attn_k.weight"), dim, kv_dim, bias("attn_k.bias"));
    std::vector<double> v = linear(h, w(p + "attn_v.weight"), dim, kv_dim, bias("attn_v.bias"));
    rope(q, m.n_heads);
    rope(k, m.n_kv_heads);
    std::vector<double> attended(n * q_dim, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t hd = 0; hd < m.n_heads; ++hd) {
        const int64_t kv = hd / (m.n_heads / m.n_kv_heads);
        std::vector<double> weights(i + 1, 0.0);
        double total = 0;
        for (int64_t j = 0; j <= i; ++j) {
          if (m.sliding_window > 0 && i - j >= m.sliding_window) continue;
          double dot = 0;
          for (int64_t d = 0; d < m.head_dim; ++d) dot += q[i * q_dim + hd * m.head_dim + d] * k[j * kv_dim + kv * m.head_dim + d];
          weights[j] = std::exp(dot / std::sqrt(double(m.head_dim)));
          total += weights[j];
        }
        for (int64_t j = 0; j <= i; ++j)
          for (int64_t d = 0; d < m.head_dim; ++d)
            attended[i * q_dim + hd * m.head_dim + d] += weights[j] / total * v[j * kv_dim + kv * m.head_dim + d];
      }
    const std::vector<double> attn_out = linear(attended, w(p + "attn_out.weight"), q_dim, dim);
    for (int64_t i = 0; i < n * dim; ++i) x[i] += attn_out[i];
    h = rmsnorm(x, w(p + "ffn_norm.weight"));
    std::vector<double> gate = linear(h, w(p + "ffn_gate.weight"), dim, m.ffn_dim);
    const std::vector<double> up = linear(h, w(p + "ffn_up.weight"), dim, m.ffn_dim);
    for (int64_t i = 0; i < n * m.ffn_dim; ++i) gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
    const std::vector<double> down = linear(gate, w(p + "ffn_down.weight"), m.ffn_dim, dim);
    for (int64_t i = 0; i < n * dim; ++i) x[i] += down[i];
  }
  const std::vector<double> h = rmsnorm(x, w("norm.weight"));
  return linear(h, w(m.tied ? "token_embedding.weight" : "output.weight"), dim, m.vocab);
}

std::vector<int32_t> random_tokens(uint32_t seed, size_t n, int32_t vocab) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = pick(rng);
  return tokens;
}

// All-position logits of `tokens` from a fresh state, as one forward call.
std::vector<float> batch_logits(const LanguageModel& model, const std::vector<int32_t>& tokens,
                                DType kv_type = DType::F32) {
  auto state = model.new_state(model.context_length(), kv_type);
  std::vector<float> logits(tokens.size() * model.vocab_size());
  state->forward(tokens, logits.data());
  return logits;
}

// Greedy decoding: the prompt as one batch, then one token per call, n_new argmax picks. A
// repetition_penalty other than 1 is applied as transformers' generate() does (it takes it from
// generation_config.json even when not sampling): the logit of every id already in the sequence
// is divided by it when positive, multiplied by it when negative.
std::vector<int32_t> greedy(const LanguageModel& model, const std::vector<int32_t>& prompt, int n_new,
                            float repetition_penalty = 1.0f, DType kv_type = DType::F32) {
  auto state = model.new_state(std::min<int32_t>(model.context_length(), prompt.size() + n_new), kv_type);
  const float* logits = state->forward(prompt);
  std::vector<int32_t> sequence = prompt;
  std::vector<float> penalized(model.vocab_size());
  for (int i = 0; i < n_new; ++i) {
    std::copy_n(logits, model.vocab_size(), penalized.begin());
    if (repetition_penalty != 1.0f) {
      for (int32_t id : sequence) {
        const float logit = logits[id];
        penalized[id] = logit < 0 ? logit * repetition_penalty : logit / repetition_penalty;
      }
    }
    sequence.push_back(test::argmax(penalized.data(), model.vocab_size()));
    if (i + 1 < n_new) logits = state->forward(std::span(&sequence.back(), 1));
  }
  return {sequence.begin() + prompt.size(), sequence.end()};
}

}  // namespace

TEST_CASE("forward matches a double-precision reference (GQA, tied; biases, llama3 rope, sliding window)") {
  TempDir dir("llama");
  TinyModel plain;
  plain.tied = true;
  TinyModel qwen_mistral_like;
  qwen_mistral_like.biases = true;
  qwen_mistral_like.sliding_window = 5;
  qwen_mistral_like.rope = {.kind = ops::RopeScaling::Kind::Llama3, .factor = 8.0f, .low_freq_factor = 1.0f,
                            .high_freq_factor = 4.0f, .original_context = 64};
  TinyModel linear_mha;
  linear_mha.n_kv_heads = linear_mha.n_heads;
  linear_mha.head_dim = 32;  // q_dim 128 != dim 64
  linear_mha.rope = {.kind = ops::RopeScaling::Kind::Linear, .factor = 2.0f};
  int seed = 10;
  for (TinyModel* m : {&plain, &qwen_mistral_like, &linear_mha}) {
    randomize(*m, ++seed);
    const std::string path = (dir / ("tiny" + std::to_string(seed) + ".qbin")).string();
    write_tiny(*m, path);
    const auto model = LanguageModel::load(path);
    CHECK(model->architecture() == "llama");
    CHECK(model->vocab_size() == m->vocab);
    CHECK(model->context_length() == m->context);
    const std::vector<int32_t> tokens = random_tokens(seed, 23, m->vocab);
    const std::vector<float> logits = batch_logits(*model, tokens);
    const std::vector<double> reference = reference_logits(*m, tokens);
    const std::vector<float> reference_f32(reference.begin(), reference.end());
    const test::LogitError e = test::compare_logits(logits.data(), reference_f32.data(), tokens.size(), m->vocab);
    MESSAGE("random model " << seed << ": max abs " << e.max_abs << ", max relative " << e.max_relative);
    CHECK(e.max_relative < 1e-5);
    CHECK(e.top1_agree == e.rows);
  }
}

TEST_CASE("one batch == token by token == uneven calls, across the internal 512-token chunks") {
  TempDir dir("llama");
  TinyModel m;
  m.biases = true;
  m.sliding_window = 300;
  randomize(m, 20);
  const std::vector<int32_t> tokens = random_tokens(21, 600, m.vocab);
  for (auto [dtype, kv_type] : {std::pair{DType::F32, DType::F32}, {DType::Q8_0, DType::F32}, {DType::Q4_0, DType::F32},
                                {DType::Q8_0, DType::F16}}) {
    const std::string type = std::string(kernels::dtype_name(dtype)) + ", kv " + kernels::dtype_name(kv_type);
    CAPTURE(type);
    const std::string path = (dir / (std::string("tiny_") + kernels::dtype_name(dtype) + ".qbin")).string();
    write_tiny(m, path, matrices_in(dtype));
    const auto model = LanguageModel::load(path);
    const int64_t vocab = m.vocab;
    const std::vector<float> batch = batch_logits(*model, tokens, kv_type);

    auto state = model->new_state(model->context_length(), kv_type);
    std::vector<float> one_by_one(tokens.size() * vocab);
    for (size_t i = 0; i < tokens.size(); ++i) {
      const float* last = state->forward(std::span(&tokens[i], 1));
      std::copy_n(last, vocab, one_by_one.begin() + i * vocab);
    }
    CHECK(state->used() == static_cast<int32_t>(tokens.size()));

    state->reset();
    CHECK(state->used() == 0);
    std::vector<float> uneven(tokens.size() * vocab);
    size_t done = 0;
    for (size_t n : {1, 299, 250, 50}) {
      const float* last = state->forward(std::span(tokens.data() + done, n), uneven.data() + done * vocab);
      CHECK(std::equal(last, last + vocab, uneven.begin() + (done + n - 1) * vocab));
      done += n;
    }
    REQUIRE(done == tokens.size());

    const test::LogitError sequential = test::compare_logits(one_by_one.data(), batch.data(), tokens.size(), vocab);
    const test::LogitError chunked = test::compare_logits(uneven.data(), batch.data(), tokens.size(), vocab);
    MESSAGE(type << ": token by token vs batch max relative " << sequential.max_relative
                                       << ", uneven calls vs batch " << chunked.max_relative);
    // Quantized paths are bit-identical (activations are quantized per row). f32 weights differ
    // by summation order only: the kernel tiles several rows of X at once for M > 1, a single
    // row for M = 1; over 600 positions that reached 1.02e-5 of the largest logit.
    CHECK(sequential.max_relative < 3e-5);
    CHECK(chunked.max_relative < 3e-5);
  }
}

TEST_CASE("load validates metadata, tensor shapes and types with clean errors") {
  TempDir dir("llama");
  TinyModel m;
  m.biases = true;
  randomize(m, 30);
  const std::string path = (dir / "bad.qbin").string();
  auto load_error = [&](const WriteOptions& options) {
    write_tiny(m, path, options);
    return error_code_of([&] { LanguageModel::load(path); });
  };

  CHECK(load_error(with_metadata([](qbin::Metadata& md) { md.set("general.architecture", std::string("gpt-j")); })) ==
        ErrorCode::Unsupported);
  CHECK(load_error(without("layers.1.ffn_up.weight")) == ErrorCode::Format);
  CHECK(load_error(without("output.weight")) == ErrorCode::Format);  // untied: the head is required
  CHECK(load_error(with_dtype("layers.0.ffn_norm.weight", DType::F16)) == ErrorCode::Format);
  CHECK(load_error(with_dtype("layers.0.attn_k.bias", DType::F16)) == ErrorCode::Format);
  CHECK(load_error(with_metadata([](qbin::Metadata& md) { md.set("llama.ffn_dim", uint32_t{128}); })) == ErrorCode::Format);
  CHECK(load_error(with_metadata([](qbin::Metadata& md) { md.set("llama.n_kv_heads", uint32_t{3}); })) == ErrorCode::Format);
  CHECK(load_error(with_metadata([](qbin::Metadata& md) { md.set("llama.n_heads", uint32_t{0}); })) == ErrorCode::Format);
  CHECK(load_error(with_metadata([](qbin::Metadata& md) { md.set("llama.head_dim", uint32_t{15}); })) == ErrorCode::Format);
  CHECK(load_error(with_metadata([](qbin::Metadata& md) { md.set("llama.rms_eps", -1.0f); })) == ErrorCode::Format);
  CHECK(load_error(with_metadata([](qbin::Metadata& md) { md.set("llama.dim", int32_t{64}); })) == ErrorCode::Format);
  CHECK(load_error(with_metadata([](qbin::Metadata& md) { md.set("llama.rope_scaling", std::string("yarn")); })) ==
        ErrorCode::Unsupported);
  CHECK(load_error(with_metadata([](qbin::Metadata& md) {
          qbin::Metadata without_dim;
          for (const auto& [key, value] : md.all())
            if (key != "llama.dim") without_dim.set(key, value);
          md = without_dim;
        })) == ErrorCode::Format);

  // Biases are optional; quantized matrices of every type load.
  for (DType dtype : {DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    write_tiny(m, path, without("layers.0.attn_q.bias", dtype));
    CHECK_NOTHROW(LanguageModel::load(path)->new_state(16)->forward(std::vector<int32_t>{1, 2, 3}));
  }
}

TEST_CASE("forward and new_state reject what does not fit; a state keeps its model alive") {
  TempDir dir("llama");
  TinyModel m;
  randomize(m, 40);
  const std::string path = (dir / "tiny.qbin").string();
  write_tiny(m, path);
  auto model = LanguageModel::load(path);
  CHECK(error_code_of([&] { model->new_state(0); }) == ErrorCode::InvalidArgument);
  CHECK(error_code_of([&] { model->new_state(m.context + 1); }) == ErrorCode::InvalidArgument);

  auto state = model->new_state(8);
  CHECK(state->capacity() == 8);
  const std::vector<int32_t> five = {1, 2, 3, 4, 5};
  state->forward(five);
  CHECK(error_code_of([&] { state->forward(std::vector<int32_t>{}); }) == ErrorCode::InvalidArgument);
  CHECK(error_code_of([&] { state->forward(five); }) == ErrorCode::InvalidArgument);  // 10 > 8
  CHECK(error_code_of([&] { state->forward(std::vector<int32_t>{7, int32_t(m.vocab)}); }) == ErrorCode::InvalidArgument);
  CHECK(error_code_of([&] { state->forward(std::vector<int32_t>{-1}); }) == ErrorCode::InvalidArgument);
  CHECK(state->used() == 5);  // failed calls change nothing

  std::vector<float> expected = batch_logits(*model, {1, 2, 3, 4, 5, 6});
  model.reset();  // the state still works on its own
  const float* logits = state->forward(std::vector<int32_t>{6});
  const test::LogitError e = test::compare_logits(logits, expected.data() + 5 * m.vocab, 1, m.vocab);
  CHECK(e.max_relative < 1e-5);
  CHECK(state->used() == 6);
}

TEST_CASE("the scalar kernels give the same greedy tokens as the default backend") {
  TempDir dir("llama");
  TinyModel m;
  randomize(m, 50);
  const std::vector<int32_t> prompt = random_tokens(51, 9, m.vocab);
  const std::string best = kernels::backend_name();
  for (DType dtype : {DType::F32, DType::Q8_0, DType::Q4_0}) {
    const std::string path = (dir / (std::string("tiny_") + kernels::dtype_name(dtype) + ".qbin")).string();
    write_tiny(m, path, matrices_in(dtype));
    const auto model = LanguageModel::load(path);
    const std::string type = kernels::dtype_name(dtype);
    REQUIRE(kernels::force_backend(best.c_str()));
    const std::vector<int32_t> with_best = greedy(*model, prompt, 40);
    REQUIRE(kernels::force_backend("scalar"));
    const std::vector<int32_t> with_scalar = greedy(*model, prompt, 40);
    REQUIRE(kernels::force_backend(best.c_str()));
    MESSAGE(type << ": " << best << " vs scalar");
    CHECK(with_scalar == with_best);
  }
}

// ---- Acceptance: tiny Hugging Face models against transformers (tests/tools/make_models.py) -----

namespace {

// One prompt of a goldens.json: its ids, transformers' float32 logits at every position and its
// greedy continuation (shorter than max_new_tokens when it reached an EOS).
// The goldens of one model folder: its cases and the repetition penalty generate() applied.
struct GoldenCase {
  std::vector<int32_t> input_ids;
  std::vector<float> logits;  // input_ids.size() x vocab
  std::vector<int32_t> generated_ids;
};

struct Goldens {
  std::vector<GoldenCase> cases;
  float repetition_penalty = 1.0f;
};

Goldens read_goldens(const test::fs::path& folder) {
  const nlohmann::json goldens = test::read_json(folder / "goldens.json");
  Goldens result;
  const nlohmann::json generation_config = test::read_json(folder / "generation_config.json");
  result.repetition_penalty = generation_config.value("repetition_penalty", 1.0f);
  for (const nlohmann::json& c : goldens.at("cases")) {
    GoldenCase golden;
    golden.input_ids = c.at("input_ids").get<std::vector<int32_t>>();
    golden.generated_ids = c.at("generated_ids").get<std::vector<int32_t>>();
    for (const nlohmann::json& row : c.at("logits")) {
      for (const nlohmann::json& value : row) golden.logits.push_back(value.get<float>());
    }
    result.cases.push_back(std::move(golden));
  }
  return result;
}

std::string convert_to(const test::fs::path& input, const TempDir& dir, DType quant) {
  const std::string output = (dir / (input.filename().string() + "." + kernels::dtype_name(quant) + ".qbin")).string();
  convert::Options options;
  options.quant = quant;
  convert::convert(input.string(), output, options, nullptr);
  return output;
}

// How a converted model does on every case of its goldens.
struct GoldenResult {
  double max_relative = 0;  // worst position of any case, test::compare_logits's metric
  double max_abs = 0;
  int top1_agree = 0, positions = 0;
  int greedy_identical_cases = 0, cases = 0;
  int min_greedy_prefix = 1 << 30;  // fewest leading generated ids identical, over the cases
};

GoldenResult run_goldens(const LanguageModel& model, const Goldens& goldens) {
  GoldenResult result;
  for (const GoldenCase& golden : goldens.cases) {
    const std::vector<float> logits = batch_logits(model, golden.input_ids);
    REQUIRE(golden.logits.size() == logits.size());
    const test::LogitError e = test::compare_logits(logits.data(), golden.logits.data(), golden.input_ids.size(),
                                                    model.vocab_size());
    result.max_relative = std::max(result.max_relative, e.max_relative);
    result.max_abs = std::max(result.max_abs, e.max_abs);
    result.top1_agree += e.top1_agree;
    result.positions += e.rows;

    const std::vector<int32_t> generated =
        greedy(model, golden.input_ids, golden.generated_ids.size(), goldens.repetition_penalty);
    const auto mismatch = std::mismatch(generated.begin(), generated.end(), golden.generated_ids.begin());
    const int prefix = static_cast<int>(mismatch.first - generated.begin());
    result.min_greedy_prefix = std::min(result.min_greedy_prefix, prefix);
    result.greedy_identical_cases += generated == golden.generated_ids;
    ++result.cases;
  }
  return result;
}

const char* const kTinyModels[] = {"llama_gqa_tied", "llama_untied_bf16", "qwen2_bias", "mistral", "smollm_like"};

}  // namespace

// f32: all-position logits within 1e-4 of transformers', measured per position as
// max|a-b| / max|b| (test::compare_logits): logits near zero make a per-element ratio
// meaningless, and a row's largest logit is the scale its softmax sees. The goldens keep 6
// significant digits (about 5e-7 relative), far below the bound.
TEST_CASE("tiny Hugging Face models, converted to f32, match transformers' logits and greedy ids") {
  TempDir dir("llama_hf");
  for (const std::string name : kTinyModels) {
    CAPTURE(name);
    const test::fs::path folder = test::test_data("models/" + name);
    const Goldens goldens = read_goldens(folder);
    const auto model = LanguageModel::load(convert_to(folder, dir, DType::F32));
    const GoldenResult r = run_goldens(*model, goldens);
    MESSAGE(name << " f32: max relative " << r.max_relative << ", max abs " << r.max_abs << ", top-1 "
                 << r.top1_agree << "/" << r.positions << ", greedy identical " << r.greedy_identical_cases << "/"
                 << r.cases);
    CHECK(r.max_relative < 1e-4);
    CHECK(r.top1_agree == r.positions);
    CHECK(r.greedy_identical_cases == r.cases);
  }
}

// Quantized, the same comparison (against transformers' f32 logits) measured:
//   q8_0: max relative 0.053 .. 0.074, top-1 agreement 88 .. 97% of positions;
//   q4_0: max relative 0.59 .. 0.83,  top-1 agreement 33 .. 50%.
// These models have random weights: their logits are nearly flat (top-2 gaps ~0.05) and they are
// chaotic (perturbing the weights by q8_0's ~0.5% moves the logits by ~6%), so the bounds are
// loose; they still catch a broken path, which would agree on ~1/vocab of the argmaxes. The
// bounds leave 1.5-2x margin for other kernels' summation order and quantizer rounding.
// stories260K, a trained model, is the meaningful quantized check (below).
TEST_CASE("tiny Hugging Face models, quantized: logit error and top-1 agreement within measured bounds") {
  TempDir dir("llama_hf_quant");
  for (DType quant : {DType::Q8_0, DType::Q4_0}) {
    const std::string type = kernels::dtype_name(quant);
    CAPTURE(type);
    for (const std::string name : kTinyModels) {
      CAPTURE(name);
      const test::fs::path folder = test::test_data("models/" + name);
      const auto model = LanguageModel::load(convert_to(folder, dir, quant));
      const GoldenResult r = run_goldens(*model, read_goldens(folder));
      MESSAGE(name << " " << type << ": max relative " << r.max_relative << ", max abs " << r.max_abs << ", top-1 "
                   << r.top1_agree << "/" << r.positions << ", greedy identical " << r.greedy_identical_cases << "/"
                   << r.cases << ", shortest identical greedy prefix " << r.min_greedy_prefix);
      const double top1 = static_cast<double>(r.top1_agree) / r.positions;
      if (quant == DType::Q8_0) {
        CHECK(r.max_relative < 0.15);
        CHECK(top1 >= 0.8);
      } else {
        CHECK(r.max_relative < 1.25);
        CHECK(top1 >= 0.2);
      }
    }
  }
}

// ---- Acceptance: stories260K (a trained llama2.c model) against a numpy llama2.c forward ------

namespace {

// tests/data/stories260K/goldens.json (tests/tools/README.md): per prompt, 64 greedy ids and the
// logits that chose the first 21 of them (the prompt's last position, then 20 generated steps).
struct StoryCase {
  std::string prompt;
  std::vector<int32_t> input_ids, generated_ids;
  std::string generated_text;
  std::vector<float> logits;  // 21 x 512
  int64_t logit_rows = 0;
};

std::vector<StoryCase> read_story_goldens() {
  const nlohmann::json goldens = test::read_json(test::test_data("stories260K/goldens.json"));
  std::vector<StoryCase> cases;
  for (const nlohmann::json& c : goldens.at("cases")) {
    StoryCase story;
    story.prompt = c.at("prompt").get<std::string>();
    story.input_ids = c.at("input_ids").get<std::vector<int32_t>>();
    story.generated_ids = c.at("generated_ids").get<std::vector<int32_t>>();
    story.generated_text = c.at("generated_text").get<std::string>();
    for (const nlohmann::json& row : c.at("logits")) {
      for (const nlohmann::json& value : row) story.logits.push_back(value.get<float>());
      ++story.logit_rows;
    }
    cases.push_back(std::move(story));
  }
  return cases;
}

std::string convert_stories(const TempDir& dir, DType quant) {
  const std::string output = (dir / (std::string("stories260K.") + kernels::dtype_name(quant) + ".qbin")).string();
  convert::Options options;
  options.quant = quant;
  options.tokenizer_path = test::shared_data("models/stories260K/tok512.model").string();
  convert::convert(test::shared_data("models/stories260K/stories260K.bin").string(), output, options, nullptr);
  return output;
}

// The logits at the golden's 21 positions: prompt + the first 20 generated ids as one batch.
test::LogitError story_logit_error(const LanguageModel& model, const StoryCase& story) {
  std::vector<int32_t> sequence = story.input_ids;
  sequence.insert(sequence.end(), story.generated_ids.begin(), story.generated_ids.begin() + story.logit_rows - 1);
  const std::vector<float> logits = batch_logits(model, sequence);
  const int64_t first_row = story.input_ids.size() - 1;
  return test::compare_logits(logits.data() + first_row * model.vocab_size(), story.logits.data(), story.logit_rows,
                              model.vocab_size());
}

int identical_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  return static_cast<int>(std::mismatch(a.begin(), a.end(), b.begin(), b.end()).first - a.begin());
}

}  // namespace

// f32: the 64 greedy ids of each prompt identical; logits within 1e-4 (same metric as above;
// the goldens keep 7 significant digits).
TEST_CASE("stories260K f32: 64 greedy tokens and logits match the numpy llama2.c reference") {
  TempDir dir("llama_stories");
  const auto model = LanguageModel::load(convert_stories(dir, DType::F32));
  for (const StoryCase& story : read_story_goldens()) {
    CAPTURE(story.prompt);
    CHECK(model->tokenizer().encode(story.prompt, true, false) == story.input_ids);
    const std::vector<int32_t> generated = greedy(*model, story.input_ids, story.generated_ids.size());
    CHECK(generated == story.generated_ids);
    CHECK(model->tokenizer().decode(generated) == story.generated_text);
    const test::LogitError e = story_logit_error(*model, story);
    MESSAGE("stories260K f32 '" << story.prompt << "': max relative " << e.max_relative << ", max abs " << e.max_abs);
    CHECK(e.max_relative < 1e-4);
  }
}

// Quantized, measured over the 21 golden positions of each prompt, and the greedy ids identical
// before the first divergence (every matrix quantized, ffn_down (172 wide) falls back to f16):
//   q8_0: max relative 0.019 / 0.029 / 0.025 (max abs 0.46 on logits up to ~17), top-1 21/21,
//         all 64 greedy ids identical for the three prompts;
//   q4_0: max relative 0.45 / 0.28 / 0.23 (max abs 8.6), top-1 21, 19, 17 of 21, identical
//         prefixes 23, 6 and 2 of 64.
// Asserted with ~1.5-2x margin on the errors: q8_0 at least the first 20 greedy ids identical
// (the requirement; measured 64) and every top-1 equal; q4_0 the first id, and 2/3 of the top-1s.
TEST_CASE("stories260K quantized: greedy prefix and logit error within measured bounds") {
  TempDir dir("llama_stories_quant");
  for (DType quant : {DType::Q8_0, DType::Q4_0}) {
    const std::string type = kernels::dtype_name(quant);
    CAPTURE(type);
    const auto model = LanguageModel::load(convert_stories(dir, quant));
    for (const StoryCase& story : read_story_goldens()) {
      CAPTURE(story.prompt);
      const std::vector<int32_t> generated = greedy(*model, story.input_ids, story.generated_ids.size());
      const int prefix = identical_prefix(generated, story.generated_ids);
      const test::LogitError e = story_logit_error(*model, story);
      MESSAGE("stories260K " << type << " '" << story.prompt << "': max relative " << e.max_relative << ", max abs "
                             << e.max_abs << ", top-1 " << e.top1_agree << "/" << e.rows
                             << ", identical greedy prefix " << prefix << "/" << story.generated_ids.size());
      if (quant == DType::Q8_0) {
        CHECK(e.max_relative < 0.06);
        CHECK(e.top1_agree == e.rows);
        CHECK(prefix >= 20);
      } else {
        CHECK(e.max_relative < 0.7);
        CHECK(e.top1_agree >= 14);
        CHECK(prefix >= 1);
      }
    }
  }
}

// An f16 KV cache rounds each cached key and value to 11 significant bits (relative 2^-12):
// measured over the golden positions, max relative logit error 8.1e-4, 8.8e-4 and 7.8e-4 against
// the f32 cache for the three prompts; asserted < 2e-3.
TEST_CASE("stories260K with an f16 KV cache: the 64 greedy tokens, logits close to the f32 cache's") {
  TempDir dir("llama_stories_kv");
  const auto model = LanguageModel::load(convert_stories(dir, DType::F32));
  for (const StoryCase& story : read_story_goldens()) {
    CAPTURE(story.prompt);
    CHECK(greedy(*model, story.input_ids, story.generated_ids.size(), 1.0f, DType::F16) == story.generated_ids);
    std::vector<int32_t> sequence = story.input_ids;
    sequence.insert(sequence.end(), story.generated_ids.begin(), story.generated_ids.begin() + story.logit_rows - 1);
    const std::vector<float> f32 = batch_logits(*model, sequence, DType::F32);
    const std::vector<float> f16 = batch_logits(*model, sequence, DType::F16);
    const test::LogitError e = test::compare_logits(f16.data(), f32.data(), sequence.size(), model->vocab_size());
    MESSAGE("stories260K f16 KV '" << story.prompt << "': max relative " << e.max_relative);
    CHECK(e.max_relative < 2e-3);
    CHECK(e.top1_agree == e.rows);
  }
}

// A q8_0 KV cache stores each cached key and value as int8 times its block's f16 scale: within half
// a step (1/254) of the block's largest magnitude, ~0.4%; for normal-like values that is ~20x the
// absolute error of f16 (2^-12 relative). stories260K's heads are 8 wide, less than a block, so it
// refuses one; a random model with 64-wide heads (SmolLM2's and TinyLlama's size) stands in, over
// a 300-token prompt and 64 greedy tokens (364 logit rows). Random models amplify any perturbation
// (~20x here, as for their weights above). Measured against the f32 cache, the same on the scalar,
// avx2 and avx512 kernels: q8_0 max relative 0.129 (max abs 1.04), top-1 347-348/364, identical
// greedy prefix 13/64; f16 0.0052, top-1 364/364. stories260K's f16 error (8e-4, above) suggests a
// trained model moves ~7x less. Asserted with ~2x margin: q8_0 under 0.25 and 90% of the top-1s, at
// least 6 identical greedy ids, and well above f16's error (the cache really is 8-bit). A broken
// path would give errors ~1 and ~1/512 agreement.
TEST_CASE("q8_0 KV cache: logits close to the f32 cache's on 64-wide heads; heads of 8 refused") {
  TempDir dir("llama_kv_q8");
  TinyModel m;
  m.head_dim = 64;  // q_dim 256, kv_dim 128
  randomize(m, 50);
  const std::string path = (dir / "tiny_head64.qbin").string();
  write_tiny(m, path);
  const auto model = LanguageModel::load(path);
  const std::vector<int32_t> prompt = random_tokens(51, 300, m.vocab);
  const std::vector<int32_t> with_f32 = greedy(*model, prompt, 64, 1.0f, DType::F32);
  const std::vector<int32_t> with_q8 = greedy(*model, prompt, 64, 1.0f, DType::Q8_0);
  std::vector<int32_t> sequence = prompt;
  sequence.insert(sequence.end(), with_f32.begin(), with_f32.end());
  const std::vector<float> f32 = batch_logits(*model, sequence, DType::F32);
  const test::LogitError f16 =
      test::compare_logits(batch_logits(*model, sequence, DType::F16).data(), f32.data(), sequence.size(), m.vocab);
  const test::LogitError q8 =
      test::compare_logits(batch_logits(*model, sequence, DType::Q8_0).data(), f32.data(), sequence.size(), m.vocab);
  const int prefix = identical_prefix(with_q8, with_f32);
  MESSAGE("random model, 64-wide heads, against the f32 cache: q8_0 KV max relative " << q8.max_relative << ", max abs "
          << q8.max_abs << ", top-1 " << q8.top1_agree << "/" << q8.rows << ", identical greedy prefix " << prefix
          << "/64; f16 KV max relative " << f16.max_relative << ", top-1 " << f16.top1_agree << "/" << f16.rows);
  CHECK(q8.max_relative < 0.25);
  CHECK(q8.top1_agree >= 0.9 * q8.rows);
  CHECK(prefix >= 6);
  CHECK(q8.max_relative > 5 * f16.max_relative);

  const auto stories = LanguageModel::load(convert_stories(dir, DType::F32));
  test::check_error([&] { stories->new_state(64, DType::Q8_0); }, ErrorCode::InvalidArgument,
                    {"q8_0", "head_dim", "multiple of 32", "is 8"});
  test::check_error([&] { stories->new_state(64, DType::Q4_0); }, ErrorCode::InvalidArgument, "not supported");
}

TEST_CASE("stories260K: the scalar kernels give the same greedy tokens as the default backend") {
  TempDir dir("llama_stories_scalar");
  const std::string best = kernels::backend_name();
  for (DType quant : {DType::F32, DType::Q8_0, DType::Q4_0}) {
    const std::string type = kernels::dtype_name(quant);
    CAPTURE(type);
    const auto model = LanguageModel::load(convert_stories(dir, quant));
    for (const StoryCase& story : read_story_goldens()) {
      REQUIRE(kernels::force_backend(best.c_str()));
      const std::vector<int32_t> with_best = greedy(*model, story.input_ids, story.generated_ids.size());
      REQUIRE(kernels::force_backend("scalar"));
      const std::vector<int32_t> with_scalar = greedy(*model, story.input_ids, story.generated_ids.size());
      REQUIRE(kernels::force_backend(best.c_str()));
      CHECK(with_scalar == with_best);
    }
  }
}
