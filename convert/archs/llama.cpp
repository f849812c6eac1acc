#include "convert/archs/llama.h"

#include <algorithm>
#include <map>
#include <memory>

#include "convert/sources/safetensors.h"
#include "convert/sources/tokenizer_files.h"
#include "engine/error.h"

namespace octet::convert {
namespace {

// Octet's in-layer tensor names -> the Hugging Face ones.
const std::map<std::string, std::string, std::less<>> kHfLayerNames = {
    {"attn_norm.weight", "input_layernorm.weight"},   {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},         {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_k.bias", "self_attn.k_proj.bias"},         {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_v.bias", "self_attn.v_proj.bias"},         {"attn_out.weight", "self_attn.o_proj.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"}, {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},          {"ffn_down.weight", "mlp.down_proj.weight"},
};

std::string hf_name(const LlamaTensor& tensor) {
  if (tensor.layer >= 0)
    return "model.layers." + std::to_string(tensor.layer) + "." + kHfLayerNames.at(tensor.part);
  if (tensor.part == "token_embedding.weight") return "model.embed_tokens.weight";
  if (tensor.part == "norm.weight") return "model.norm.weight";
  return "lm_head.weight";  // output.weight
}

// The folder's own name, also for "path/to/model/".
std::string folder_name(const std::filesystem::path& folder) {
  std::filesystem::path normal = std::filesystem::absolute(folder).lexically_normal();
  if (normal.filename().empty()) normal = normal.parent_path();
  return normal.filename().string();
}

// A rope_scaling (transformers 4) or rope_parameters (transformers 5) object.
void read_rope_scaling(const HfConfig& scaling, LlamaHyperParams& params) {
  const std::string type = scaling.has("rope_type") ? scaling.string("rope_type") : scaling.string("type");
  if (type == "default") return;
  if (type != "linear" && type != "llama3")
    fail(ErrorCode::Unsupported, scaling.where() + ": RoPE type \"" + type + "\" is not supported (supported: default, linear, llama3)");
  params.rope_scaling = type;
  params.rope_factor = static_cast<float>(scaling.number("factor", 1e-3, 1e6));
  if (type == "llama3") {
    params.rope_low_freq_factor = static_cast<float>(scaling.number("low_freq_factor", 1e-3, 1e6));
    params.rope_high_freq_factor = static_cast<float>(scaling.number("high_freq_factor", 1e-3, 1e6));
    params.rope_original_context = scaling.integer("original_max_position_embeddings", 1, kLlamaMaxContext);
  }
}

// transformers 5 keeps theta and scaling together in rope_parameters; 4.x wrote rope_theta and
// rope_scaling.
void read_rope(const HfConfig& config, LlamaHyperParams& params) {
  constexpr double kMinTheta = 1.0, kMaxTheta = 1e12;
  if (config.has("rope_parameters")) {
    const HfConfig rope = config.object("rope_parameters");
    params.rope_theta = static_cast<float>(rope.number_or("rope_theta", 10000.0, kMinTheta, kMaxTheta));
    read_rope_scaling(rope, params);
    return;
  }
  params.rope_theta = static_cast<float>(config.number_or("rope_theta", 10000.0, kMinTheta, kMaxTheta));
  if (config.has("rope_scaling")) read_rope_scaling(config.object("rope_scaling"), params);
}

// Octet applies one sliding window to every layer, or none. transformers 5 lists each layer's
// kind in layer_types; before that, Mistral used sliding_window whenever set, and Qwen2 only with
// use_sliding_window, on the layers from max_window_layers on.
int64_t read_sliding_window(const HfConfig& config, const std::string& architecture, int64_t n_layers) {
  int64_t sliding_layers = 0;
  if (const nlohmann::json* layer_types = config.find("layer_types")) {
    if (!layer_types->is_array()) fail(ErrorCode::Format, config.where() + ": \"layer_types\" is not a list");
    sliding_layers = std::count(layer_types->begin(), layer_types->end(), "sliding_attention");
  } else if (architecture == "MistralForCausalLM") {
    sliding_layers = config.has("sliding_window") ? n_layers : 0;
  } else if (architecture == "Qwen2ForCausalLM" && config.boolean_or("use_sliding_window", false)) {
    sliding_layers = n_layers - std::min(n_layers, config.integer_or("max_window_layers", n_layers, 0, kLlamaMaxLayers));
  }
  if (sliding_layers == 0) return 0;
  if (sliding_layers != n_layers)
    fail(ErrorCode::Unsupported, config.where() + ": sliding-window attention on " + std::to_string(sliding_layers) +
                                     " of " + std::to_string(n_layers) + " layers is not supported (all or none)");
  return config.integer("sliding_window", 1, kLlamaMaxContext);
}

LlamaHyperParams read_hf_hyper_params(const HfConfig& config, const std::string& architecture) {
  LlamaHyperParams params;
  params.dim = config.integer("hidden_size", 1, kLlamaMaxDim);
  params.n_layers = config.integer("num_hidden_layers", 1, kLlamaMaxLayers);
  params.n_heads = config.integer("num_attention_heads", 1, kLlamaMaxDim);
  params.n_kv_heads = config.integer_or("num_key_value_heads", params.n_heads, 1, params.n_heads);
  if (params.n_heads % params.n_kv_heads != 0)
    fail(ErrorCode::Format, config.where() + ": num_attention_heads " + std::to_string(params.n_heads) +
                                " is not a multiple of num_key_value_heads " + std::to_string(params.n_kv_heads));
  params.ffn_dim = config.integer("intermediate_size", 1, kLlamaMaxDim);
  params.vocab_size = config.integer("vocab_size", 1, kLlamaMaxDim);
  if (config.has("head_dim")) {
    params.head_dim = config.integer("head_dim", 1, kLlamaMaxDim);
  } else {
    if (params.dim % params.n_heads != 0)
      fail(ErrorCode::Format, config.where() + ": hidden_size " + std::to_string(params.dim) +
                                  " is not a multiple of num_attention_heads " + std::to_string(params.n_heads));
    params.head_dim = params.dim / params.n_heads;
  }
  if (params.head_dim % 2 != 0 || params.n_heads * params.head_dim > kLlamaMaxDim)
    fail(ErrorCode::Format, config.where() + ": head_dim " + std::to_string(params.head_dim) + " with " +
                                std::to_string(params.n_heads) + " heads is not a valid attention shape");

  // The transformers defaults, for configs that leave it out.
  const int64_t default_context = architecture == "LlamaForCausalLM" ? 2048 : architecture == "Qwen2ForCausalLM" ? 32768 : 131072;
  params.context_length = config.integer_or("max_position_embeddings", default_context, 1, kLlamaMaxContext);
  params.rms_eps = static_cast<float>(config.number_or("rms_norm_eps", 1e-6, 0.0, 1.0));
  read_rope(config, params);
  params.sliding_window = read_sliding_window(config, architecture, params.n_layers);
  params.tied_output = config.boolean_or("tie_word_embeddings", false);
  params.qkv_bias = architecture == "Qwen2ForCausalLM";
  // Octet's llama layer has q/k/v biases only; refuse checkpoints whose other biases would be dropped.
  if (config.boolean_or("attention_bias", false) && !params.qkv_bias)
    fail(ErrorCode::Unsupported, config.where() + ": attention_bias (biases on q/k/v and o_proj) is not supported");
  if (config.boolean_or("mlp_bias", false)) fail(ErrorCode::Unsupported, config.where() + ": mlp_bias is not supported");
  return params;
}

}  // namespace

std::vector<LlamaTensor> llama_tensors(const LlamaHyperParams& p) {
  const int64_t q_dim = p.n_heads * p.head_dim, kv_dim = p.n_kv_heads * p.head_dim;
  std::vector<LlamaTensor> tensors;
  auto add = [&](int64_t layer, std::string part, std::vector<int64_t> shape, TensorKind kind) {
    std::string name = layer < 0 ? part : "layers." + std::to_string(layer) + "." + part;
    tensors.push_back({std::move(name), std::move(part), layer, std::move(shape), kind});
  };
  add(-1, "token_embedding.weight", {p.vocab_size, p.dim}, TensorKind::TokenEmbedding);
  for (int64_t layer = 0; layer < p.n_layers; ++layer) {
    add(layer, "attn_norm.weight", {p.dim}, TensorKind::Vector);
    add(layer, "attn_q.weight", {q_dim, p.dim}, TensorKind::Matrix);
    add(layer, "attn_k.weight", {kv_dim, p.dim}, TensorKind::Matrix);
    add(layer, "attn_v.weight", {kv_dim, p.dim}, TensorKind::Matrix);
    if (p.qkv_bias) {
      add(layer, "attn_q.bias", {q_dim}, TensorKind::Vector);
      add(layer, "attn_k.bias", {kv_dim}, TensorKind::Vector);
      add(layer, "attn_v.bias", {kv_dim}, TensorKind::Vector);
    }
    add(layer, "attn_out.weight", {p.dim, q_dim}, TensorKind::Matrix);
    add(layer, "ffn_norm.weight", {p.dim}, TensorKind::Vector);
    add(layer, "ffn_gate.weight", {p.ffn_dim, p.dim}, TensorKind::Matrix);
    add(layer, "ffn_up.weight", {p.ffn_dim, p.dim}, TensorKind::Matrix);
    add(layer, "ffn_down.weight", {p.dim, p.ffn_dim}, TensorKind::Matrix);
  }
  add(-1, "norm.weight", {p.dim}, TensorKind::Vector);
  if (!p.tied_output) add(-1, "output.weight", {p.vocab_size, p.dim}, TensorKind::Output);
  return tensors;
}

void add_llama_metadata(const LlamaHyperParams& p, qbin::Metadata& out) {
  // The runtime indexes the vocabulary with these ids: refuse any the model does not have.
  auto check_in_vocabulary = [&](int32_t id, const char* what) {
    if (id < 0 || id >= p.vocab_size)
      fail(ErrorCode::Format, std::string(what) + " token id " + std::to_string(id) + " is outside the vocabulary of " +
                                  std::to_string(p.vocab_size) + " tokens");
  };
  if (const int32_t bos = out.i32_or("tokenizer.bos_id", -1); bos != -1) check_in_vocabulary(bos, "BOS");
  if (out.has("tokenizer.eos_ids"))
    for (int32_t eos : out.i32_array("tokenizer.eos_ids")) check_in_vocabulary(eos, "EOS");

  auto u32 = [](int64_t value) { return static_cast<uint32_t>(value); };  // all bounded far below 2^32
  out.set("general.architecture", std::string("llama"));
  out.set("llama.vocab_size", u32(p.vocab_size));
  out.set("llama.dim", u32(p.dim));
  out.set("llama.n_layers", u32(p.n_layers));
  out.set("llama.n_heads", u32(p.n_heads));
  out.set("llama.n_kv_heads", u32(p.n_kv_heads));
  out.set("llama.head_dim", u32(p.head_dim));
  out.set("llama.ffn_dim", u32(p.ffn_dim));
  out.set("llama.context_length", u32(p.context_length));
  out.set("llama.rms_eps", p.rms_eps);
  out.set("llama.rope_theta", p.rope_theta);
  out.set("llama.rope_scaling", p.rope_scaling);
  if (p.rope_scaling != "none") out.set("llama.rope_factor", p.rope_factor);
  if (p.rope_scaling == "llama3") {
    out.set("llama.rope_low_freq_factor", p.rope_low_freq_factor);
    out.set("llama.rope_high_freq_factor", p.rope_high_freq_factor);
    out.set("llama.rope_original_context", u32(p.rope_original_context));
  }
  out.set("llama.sliding_window", u32(p.sliding_window));
  out.set("llama.tied_output", p.tied_output);
}

const std::vector<std::string>& hf_llama_architectures() {
  static const std::vector<std::string> kArchitectures = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};
  return kArchitectures;
}

ModelPlan plan_hf_llama(const std::filesystem::path& folder, const HfConfig& config, const std::string& architecture) {
  LlamaHyperParams params = read_hf_hyper_params(config, architecture);

  auto weights = std::make_shared<SafetensorsCheckpoint>(folder);
  // Tied when the config says so or when the checkpoint simply has no separate head.
  params.tied_output = params.tied_output || weights->find("lm_head.weight") == nullptr;

  ModelPlan plan;
  for (const LlamaTensor& tensor : llama_tensors(params)) {
    const SafetensorsTensor* source = &weights->require(hf_name(tensor), tensor.shape);
    plan.tensors.push_back({tensor.name, tensor.shape, tensor.kind,
                            [weights, source](int64_t first, int64_t count, float* out) {
                              read_rows_f32(*source, first, count, out);
                            }});
  }
  plan.metadata.set("general.name", folder_name(folder));
  plan.metadata.set("general.source", std::string("huggingface"));
  add_hf_tokenizer(folder, config, plan.metadata);
  add_llama_metadata(params, plan.metadata);
  return plan;
}

}  // namespace octet::convert
