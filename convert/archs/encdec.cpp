#include "convert/archs/encdec.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace octet::convert {
namespace {

const char* const kActivations[] = {"relu", "gelu", "gelu_tanh", "swish"};

}  // namespace

std::vector<EncDecTensor> encdec_tensors(const EncDecHyperParams& p) {
  std::vector<EncDecTensor> tensors;
  auto add = [&](const std::string& stack, int64_t layer, const std::string& part, std::vector<int64_t> shape,
                 TensorKind kind) {
    std::string name = stack.empty() ? part : stack + "." + part;
    if (layer >= 0) name = stack + ".layers." + std::to_string(layer) + "." + part;
    tensors.push_back({std::move(name), stack, layer, part, std::move(shape), kind});
  };
  // A linear layer [out][in] with its bias, or a LayerNorm with its bias.
  auto linear = [&](const std::string& stack, int64_t layer, const std::string& what, int64_t out, int64_t in) {
    add(stack, layer, what + ".weight", {out, in}, TensorKind::Matrix);
    add(stack, layer, what + ".bias", {out}, TensorKind::Vector);
  };
  auto norm = [&](const std::string& stack, int64_t layer, const std::string& what) {
    add(stack, layer, what + ".weight", {p.d_model}, TensorKind::Vector);
    add(stack, layer, what + ".bias", {p.d_model}, TensorKind::Vector);
  };
  auto attention = [&](const std::string& stack, int64_t layer, const std::string& prefix) {
    for (const char* projection : {"_q", "_k", "_v", "_out"}) linear(stack, layer, prefix + projection, p.d_model, p.d_model);
    norm(stack, layer, prefix + "_norm");
  };
  auto feed_forward = [&](const std::string& stack, int64_t layer) {
    linear(stack, layer, "ffn_up", p.ffn_dim, p.d_model);
    linear(stack, layer, "ffn_down", p.d_model, p.ffn_dim);
    norm(stack, layer, "ffn_norm");
  };
  // Stored as f32 like the other vectors: a small table the runtime adds, not a matrix it multiplies.
  auto embeddings = [&](const std::string& stack, int64_t vocab) {
    add(stack, -1, "embedding.weight", {vocab, p.d_model}, TensorKind::TokenEmbedding);
    add(stack, -1, "position.weight", {p.max_positions, p.d_model}, TensorKind::Vector);
    if (p.embedding_norms) norm(stack, -1, "embedding_norm");
  };

  embeddings("encoder", p.source_vocab_size);
  for (int64_t layer = 0; layer < p.encoder_layers; ++layer) {
    attention("encoder", layer, "attn");
    feed_forward("encoder", layer);
  }
  if (p.final_norms) norm("encoder", -1, "norm");

  if (p.shared_embeddings) {
    add("decoder", -1, "position.weight", {p.max_positions, p.d_model}, TensorKind::Vector);
    if (p.embedding_norms) norm("decoder", -1, "embedding_norm");
  } else {
    embeddings("decoder", p.target_vocab_size);
  }
  for (int64_t layer = 0; layer < p.decoder_layers; ++layer) {
    attention("decoder", layer, "self_attn");
    attention("decoder", layer, "cross_attn");
    feed_forward("decoder", layer);
  }
  if (p.final_norms) norm("decoder", -1, "norm");

  if (!p.tied_output) add("", -1, "output.weight", {p.target_vocab_size, p.d_model}, TensorKind::Output);
  if (p.output_bias) add("", -1, "output.bias", {p.target_vocab_size}, TensorKind::Vector);
  return tensors;
}

void validate_encdec(const EncDecHyperParams& p, const std::string& where) {
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) fail(ErrorCode::Format, where + ": " + what);
  };
  check(p.d_model >= 1 && p.d_model <= kEncDecMaxDim, "d_model " + std::to_string(p.d_model) + " is out of range");
  check(p.ffn_dim >= 1 && p.ffn_dim <= kEncDecMaxDim, "ffn_dim " + std::to_string(p.ffn_dim) + " is out of range");
  check(p.n_heads >= 1 && p.d_model % p.n_heads == 0,
        std::to_string(p.n_heads) + " attention heads do not divide d_model " + std::to_string(p.d_model));
  check(p.encoder_layers >= 1 && p.encoder_layers <= kEncDecMaxLayers && p.decoder_layers >= 1 &&
            p.decoder_layers <= kEncDecMaxLayers,
        std::to_string(p.encoder_layers) + " encoder / " + std::to_string(p.decoder_layers) + " decoder layers is out of range");
  for (int64_t vocab : {p.source_vocab_size, p.target_vocab_size})
    check(vocab >= 1 && vocab <= kEncDecMaxVocab, "vocabulary size " + std::to_string(vocab) + " is out of range");
  check(!p.shared_embeddings || p.source_vocab_size == p.target_vocab_size,
        "shared embeddings need one vocabulary size, not " + std::to_string(p.source_vocab_size) + " and " +
            std::to_string(p.target_vocab_size));
  check(p.max_positions >= 1 && p.max_positions <= kEncDecMaxPositionElements / p.d_model,
        std::to_string(p.max_positions) + " positions of " + std::to_string(p.d_model) + " is too large a position table");
  check(std::find(std::begin(kActivations), std::end(kActivations), p.activation) != std::end(kActivations),
        "activation \"" + p.activation + "\" is not supported");
  check(std::isfinite(p.embedding_scale) && p.embedding_scale > 0, "embedding scale is not a positive number");
  check(std::isfinite(p.norm_eps) && p.norm_eps >= 0 && p.norm_eps < 1, "norm epsilon is out of range");
  for (const auto& [id, what] :
       {std::pair{p.decoder_start_id, "decoder start"}, {p.eos_id, "EOS"}, {p.pad_id, "pad"}, {p.unk_id, "unknown"}})
    check(id >= 0 && id < p.target_vocab_size, std::string(what) + " token id " + std::to_string(id) +
                                                   " is outside the target vocabulary of " + std::to_string(p.target_vocab_size));
}

void add_encdec_metadata(const EncDecHyperParams& p, qbin::Metadata& out) {
  auto u32 = [](int64_t value) { return static_cast<uint32_t>(value); };  // validated far below 2^32
  out.set("general.architecture", std::string("encdec"));
  out.set("encdec.d_model", u32(p.d_model));
  out.set("encdec.n_heads", u32(p.n_heads));
  out.set("encdec.ffn_dim", u32(p.ffn_dim));
  out.set("encdec.encoder_layers", u32(p.encoder_layers));
  out.set("encdec.decoder_layers", u32(p.decoder_layers));
  out.set("encdec.source_vocab_size", u32(p.source_vocab_size));
  out.set("encdec.target_vocab_size", u32(p.target_vocab_size));
  out.set("encdec.max_positions", u32(p.max_positions));
  out.set("encdec.pre_norm", p.pre_norm);
  out.set("encdec.activation", p.activation);
  out.set("encdec.embedding_scale", p.embedding_scale);
  out.set("encdec.norm_eps", p.norm_eps);
  out.set("encdec.decoder_start_id", p.decoder_start_id);
  out.set("encdec.eos_id", p.eos_id);
  out.set("encdec.pad_id", p.pad_id);
  out.set("encdec.unk_id", p.unk_id);
}

RowReader sinusoidal_positions(Sinusoid kind, int64_t d_model) {
  return [kind, d_model](int64_t first, int64_t count, float* out) {
    // Marian gives an odd width one more sine than cosines; CTranslate2 needs an even width.
    const int64_t sines = (d_model + 1) / 2, cosines = d_model / 2;
    const float ct2_increment = std::log(10000.0f) / static_cast<float>(std::max<int64_t>(1, d_model / 2 - 1));
    auto angle = [&](int64_t position, int64_t k) -> double {
      if (kind == Sinusoid::Marian)
        return static_cast<double>(position) / std::pow(10000.0, 2.0 * static_cast<double>(k) / static_cast<double>(d_model));
      // CTranslate2 computes the angle in float; reproduce that rounding before taking sin/cos.
      const float timescale = std::exp(-ct2_increment * static_cast<float>(k));
      return static_cast<double>(static_cast<float>(position + 1) * timescale);
    };
    for (int64_t row = 0; row < count; ++row) {
      float* values = out + row * d_model;
      for (int64_t k = 0; k < sines; ++k) values[k] = static_cast<float>(std::sin(angle(first + row, k)));
      for (int64_t k = 0; k < cosines; ++k) values[sines + k] = static_cast<float>(std::cos(angle(first + row, k)));
    }
  };
}

RowReader zero_rows(int64_t cols) {
  return [cols](int64_t, int64_t count, float* out) { std::fill(out, out + count * cols, 0.0f); };
}

std::string model_folder_name(const std::filesystem::path& folder) {
  std::filesystem::path normal = std::filesystem::absolute(folder).lexically_normal();
  if (normal.filename().empty()) normal = normal.parent_path();
  return normal.filename().string();
}

}  // namespace octet::convert
