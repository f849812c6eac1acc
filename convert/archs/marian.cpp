#include "convert/archs/marian.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <optional>

#include "convert/archs/encdec.h"
#include "convert/sources/pytorch.h"
#include "convert/sources/safetensors.h"
#include "engine/error.h"
#include "tokenizer/tokenizer.h"

namespace octet::convert {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Octet's layer sub-modules -> transformers' Marian ones.
const std::map<std::string, std::string, std::less<>> kHfModules = {
    {"attn_q", "self_attn.q_proj"},           {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},           {"attn_out", "self_attn.out_proj"},
    {"attn_norm", "self_attn_layer_norm"},    {"self_attn_q", "self_attn.q_proj"},
    {"self_attn_k", "self_attn.k_proj"},      {"self_attn_v", "self_attn.v_proj"},
    {"self_attn_out", "self_attn.out_proj"},  {"self_attn_norm", "self_attn_layer_norm"},
    {"cross_attn_q", "encoder_attn.q_proj"},  {"cross_attn_k", "encoder_attn.k_proj"},
    {"cross_attn_v", "encoder_attn.v_proj"},  {"cross_attn_out", "encoder_attn.out_proj"},
    {"cross_attn_norm", "encoder_attn_layer_norm"}, {"ffn_up", "fc1"},
    {"ffn_down", "fc2"},                      {"ffn_norm", "final_layer_norm"},
};

// The checkpoint: model.safetensors (what transformers prefers too) or else pytorch_model.bin,
// each alone or as the shards of an index.
// Both expose the same names, and every tensor is read as f32 rows.
class MarianWeights {
 public:
  explicit MarianWeights(const fs::path& folder) {
    if (fs::exists(folder / "model.safetensors") || fs::exists(folder / "model.safetensors.index.json"))
      safetensors_ = std::make_shared<SafetensorsCheckpoint>(folder);
    else if (fs::exists(folder / "pytorch_model.bin") || fs::exists(folder / "pytorch_model.bin.index.json"))
      pytorch_ = std::make_shared<PytorchCheckpoint>(folder);
    else
      fail(ErrorCode::Io, folder.string() + " has no weights: expected model.safetensors or pytorch_model.bin");
  }

  bool has(std::string_view name) const {
    return safetensors_ ? safetensors_->find(name) != nullptr : pytorch_->find(name) != nullptr;
  }

  // The first of `names` present (the others are spellings of older exports), checked to have `shape`.
  RowReader reader(std::initializer_list<std::string_view> names, const std::vector<int64_t>& shape) const {
    std::string_view name = *names.begin();
    for (std::string_view candidate : names)
      if (has(candidate)) {
        name = candidate;
        break;
      }
    if (safetensors_) {
      const SafetensorsTensor* tensor = &safetensors_->require(name, shape);
      return [keep = safetensors_, tensor](int64_t first, int64_t count, float* out) {
        read_rows_f32(*tensor, first, count, out);
      };
    }
    const PytorchTensor* tensor = &pytorch_->require(name, shape);
    return [keep = pytorch_, tensor](int64_t first, int64_t count, float* out) { read_rows_f32(*tensor, first, count, out); };
  }

 private:
  std::shared_ptr<SafetensorsCheckpoint> safetensors_;
  std::shared_ptr<PytorchCheckpoint> pytorch_;
};

EncDecHyperParams read_hyper_params(const HfConfig& config) {
  // Defaults are MarianConfig's, for configs that leave a key out.
  EncDecHyperParams p;
  p.d_model = config.integer_or("d_model", 1024, 1, kEncDecMaxDim);
  p.encoder_layers = config.integer_or("encoder_layers", 12, 1, kEncDecMaxLayers);
  p.decoder_layers = config.integer_or("decoder_layers", 12, 1, kEncDecMaxLayers);
  p.n_heads = config.integer_or("encoder_attention_heads", 16, 1, kEncDecMaxDim);
  p.ffn_dim = config.integer_or("encoder_ffn_dim", 4096, 1, kEncDecMaxDim);
  if (config.integer_or("decoder_attention_heads", 16, 1, kEncDecMaxDim) != p.n_heads ||
      config.integer_or("decoder_ffn_dim", 4096, 1, kEncDecMaxDim) != p.ffn_dim)
    fail(ErrorCode::Unsupported, config.where() + ": encoder and decoder with different attention heads or FFN sizes are not supported");
  p.source_vocab_size = config.integer_or("vocab_size", 58101, 1, kEncDecMaxVocab);
  p.shared_embeddings = config.boolean_or("share_encoder_decoder_embeddings", true);
  p.target_vocab_size = p.shared_embeddings ? p.source_vocab_size
                                            : config.integer_or("decoder_vocab_size", p.source_vocab_size, 1, kEncDecMaxVocab);
  p.tied_output = config.boolean_or("tie_word_embeddings", true);
  p.max_positions = config.integer_or("max_position_embeddings", 1024, 1, kEncDecMaxPositionElements);

  const std::string activation = config.has("activation_function") ? config.string("activation_function") : "gelu";
  static const std::map<std::string, std::string, std::less<>> kActivations = {
      {"relu", "relu"},           {"gelu", "gelu"},           {"gelu_new", "gelu_tanh"}, {"gelu_fast", "gelu_tanh"},
      {"gelu_pytorch_tanh", "gelu_tanh"}, {"swish", "swish"}, {"silu", "swish"}};
  const auto found = kActivations.find(activation);
  if (found == kActivations.end())
    fail(ErrorCode::Unsupported, config.where() + ": activation_function \"" + activation +
                                     "\" is not supported (supported: relu, gelu, gelu_new, gelu_fast, gelu_pytorch_tanh, swish, silu)");
  p.activation = found->second;
  // Marian is post-norm whatever normalize_before says (transformers ignores it too), with
  // torch.nn.LayerNorm's epsilon and no embedding or final norms.
  p.pre_norm = false;
  p.norm_eps = 1e-5f;
  p.embedding_scale = config.boolean_or("scale_embedding", false) ? std::sqrt(static_cast<float>(p.d_model)) : 1.0f;

  auto id = [&](const char* key, int64_t fallback) {
    return static_cast<int32_t>(config.integer_or(key, fallback, 0, kEncDecMaxVocab));
  };
  p.pad_id = id("pad_token_id", 58100);
  p.eos_id = id("eos_token_id", 0);
  p.decoder_start_id = id("decoder_start_token_id", 58100);
  return p;
}

// tokenizer_config.json spells a special token as a string or as {"content": "..."}.
std::string special_token(const std::optional<HfConfig>& tokenizer_config, const char* key, const char* fallback) {
  if (!tokenizer_config || !tokenizer_config->has(key)) return fallback;
  const json& value = *tokenizer_config->find(key);
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) return value["content"].get<std::string>();
  fail(ErrorCode::Format, tokenizer_config->where() + ": \"" + key + "\" is neither a string nor a token object");
}

// vocab.json ({"piece": id, ...}) as the list of pieces by id; ids nobody uses stay "".
std::vector<std::string> read_vocab_json(const fs::path& path) {
  const json vocab = json::parse(read_text_file(path), nullptr, /*allow_exceptions=*/false);
  if (!vocab.is_object()) fail(ErrorCode::Format, path.string() + ": not a JSON object of token ids");
  int64_t size = 0;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kEncDecMaxVocab)
      fail(ErrorCode::Format, path.string() + ": token \"" + token + "\" has id " + id.dump() + ", not a valid id");
    size = std::max(size, id.get<int64_t>() + 1);
  }
  std::vector<std::string> tokens(static_cast<size_t>(size));
  std::vector<bool> used(tokens.size(), false);
  for (const auto& [token, id] : vocab.items()) {
    const size_t at = static_cast<size_t>(id.get<int64_t>());
    if (used[at]) fail(ErrorCode::Format, path.string() + ": id " + std::to_string(at) + " is given to two tokens");
    used[at] = true;
    tokens[at] = token;
  }
  return tokens;
}

struct MarianSpecials {
  std::string unk, eos, pad;
};

// One side's tokenizer: its SentencePiece model, with the ids of its vocabulary file.
// MarianTokenizer appends </s> to every text and splits a leading ">>lang<<" code off.
int32_t add_marian_tokenizer(const fs::path& spm_file, const fs::path& vocab_file, const MarianSpecials& specials,
                             int64_t model_vocab_size, const std::string& prefix, qbin::Metadata& out) {
  if (!fs::exists(spm_file)) fail(ErrorCode::Io, spm_file.string() + " is missing (MarianMT ships source.spm and target.spm)");
  if (!fs::exists(vocab_file)) fail(ErrorCode::Io, vocab_file.string() + " is missing");
  sentencepiece_metadata(read_text_file(spm_file), out, prefix);
  const std::vector<std::string> vocab = read_vocab_json(vocab_file);
  if (static_cast<int64_t>(vocab.size()) > model_vocab_size)
    fail(ErrorCode::Format, vocab_file.string() + ": " + std::to_string(vocab.size()) + " tokens, more than the model's " +
                                std::to_string(model_vocab_size));
  auto id_of = [&](const std::string& token) {
    const auto found = std::find(vocab.begin(), vocab.end(), token);
    if (token.empty() || found == vocab.end())
      fail(ErrorCode::Format, vocab_file.string() + ": the special token \"" + token + "\" is not in the vocabulary");
    return static_cast<int32_t>(found - vocab.begin());
  };
  const int32_t unk = id_of(specials.unk), eos = id_of(specials.eos), pad = id_of(specials.pad);
  out.set(prefix + ".vocab", vocab);
  out.set(prefix + ".unk_id", unk);
  out.set(prefix + ".special_ids", std::vector<int32_t>{eos, unk, pad});
  out.set(prefix + ".bos_id", int32_t{-1});
  out.set(prefix + ".eos_ids", std::vector<int32_t>{eos});
  out.set(prefix + ".add_bos", false);
  out.set(prefix + ".add_eos", true);
  out.set(prefix + ".split_language_code", true);
  return unk;
}

// generation_config.json (or, in older exports, config.json): the decoding defaults.
void add_generation_defaults(const HfConfig& generation, int64_t target_vocab_size, qbin::Metadata& out) {
  auto u32 = [&](const char* key, int64_t min, int64_t max) {
    if (generation.has(key)) out.set(std::string("generation.") + key, static_cast<uint32_t>(generation.integer(key, min, max)));
  };
  u32("num_beams", 1, 1000);
  u32("max_length", 1, kEncDecMaxVocab);
  u32("no_repeat_ngram_size", 0, 1000);
  if (generation.has("forced_eos_token_id"))
    out.set("generation.forced_eos_token_id",
            static_cast<int32_t>(generation.integer("forced_eos_token_id", 0, target_vocab_size - 1)));
  if (generation.has("renormalize_logits"))
    out.set("generation.renormalize_logits", generation.boolean_or("renormalize_logits", false));
  if (generation.has("length_penalty"))
    out.set("generation.length_penalty", static_cast<float>(generation.number("length_penalty", -1000.0, 1000.0)));
  if (const json* bad_words = generation.find("bad_words_ids")) {
    std::vector<int32_t> flat;
    if (!bad_words->is_array()) fail(ErrorCode::Format, generation.where() + ": \"bad_words_ids\" is not a list of id lists");
    for (const json& sequence : *bad_words) {
      if (!sequence.is_array() || sequence.empty())
        fail(ErrorCode::Format, generation.where() + ": \"bad_words_ids\" holds " + sequence.dump() + ", not a list of ids");
      if (!flat.empty()) flat.push_back(-1);
      for (const json& id : sequence) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= target_vocab_size)
          fail(ErrorCode::Format, generation.where() + ": \"bad_words_ids\" holds " + id.dump() + ", not a target token id");
        flat.push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
    }
    out.set("generation.bad_words_ids", flat);
  }
}

}  // namespace

ModelPlan plan_marian(const fs::path& folder, const HfConfig& config) {
  EncDecHyperParams params = read_hyper_params(config);

  ModelPlan plan;
  plan.metadata.set("general.name", model_folder_name(folder));
  plan.metadata.set("general.source", std::string("huggingface"));

  // Tokenizers first: cheap to check, and they give the unknown-token id.
  std::optional<HfConfig> tokenizer_config;
  if (fs::exists(folder / "tokenizer_config.json")) tokenizer_config = HfConfig::load(folder / "tokenizer_config.json");
  const MarianSpecials specials{special_token(tokenizer_config, "unk_token", "<unk>"),
                                special_token(tokenizer_config, "eos_token", "</s>"),
                                special_token(tokenizer_config, "pad_token", "<pad>")};
  const bool separate_vocabs = tokenizer_config && tokenizer_config->boolean_or("separate_vocabs", false);
  add_marian_tokenizer(folder / "source.spm", folder / "vocab.json", specials, params.source_vocab_size, "source_tokenizer",
                       plan.metadata);
  params.unk_id = add_marian_tokenizer(folder / "target.spm", folder / (separate_vocabs ? "target_vocab.json" : "vocab.json"),
                                       specials, params.target_vocab_size, "target_tokenizer", plan.metadata);
  validate_encdec(params, config.where());

  const MarianWeights weights(folder);
  params.output_bias = weights.has("final_logits_bias");  // a buffer every export has had so far
  for (const EncDecTensor& tensor : encdec_tensors(params)) {
    RowReader reader;
    if (tensor.part == "position.weight") {
      reader = sinusoidal_positions(Sinusoid::Marian, params.d_model);  // not stored by recent exports
    } else if (tensor.name == "encoder.embedding.weight" && params.shared_embeddings) {
      reader = weights.reader({"model.shared.weight", "model.encoder.embed_tokens.weight"}, tensor.shape);
    } else if (tensor.name == "encoder.embedding.weight") {
      reader = weights.reader({"model.encoder.embed_tokens.weight"}, tensor.shape);
    } else if (tensor.name == "decoder.embedding.weight") {
      reader = weights.reader({"model.decoder.embed_tokens.weight"}, tensor.shape);
    } else if (tensor.name == "output.weight") {
      reader = weights.reader({"lm_head.weight"}, tensor.shape);
    } else if (tensor.name == "output.bias") {
      reader = weights.reader({"final_logits_bias"}, {1, params.target_vocab_size});
    } else {
      const size_t dot = tensor.part.rfind('.');
      const std::string name = "model." + tensor.stack + ".layers." + std::to_string(tensor.layer) + "." +
                               kHfModules.at(tensor.part.substr(0, dot)) + tensor.part.substr(dot);
      reader = weights.reader({name}, tensor.shape);
    }
    plan.tensors.push_back({tensor.name, tensor.shape, tensor.kind, std::move(reader)});
  }

  const fs::path generation_file = folder / "generation_config.json";
  add_generation_defaults(fs::exists(generation_file) ? HfConfig::load(generation_file) : config, params.target_vocab_size,
                          plan.metadata);
  add_encdec_metadata(params, plan.metadata);
  return plan;
}

}  // namespace octet::convert
