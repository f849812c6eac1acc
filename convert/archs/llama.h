// The "llama" architecture (docs/qbin.md): LLaMA 1/2/3, Mistral, Qwen2, SmolLM and llama2.c models,
// all one decoder layout stored under Octet's tensor names. The llama2.c reader shares the layout
// and metadata defined here.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "convert/model_plan.h"
#include "convert/sources/hf_config.h"

namespace octet::convert {

// Sanity bounds on hyper-parameters read from any source: generous for every real model, small
// enough that products of them cannot overflow, so an absurd header is refused before any
// allocation.
constexpr int64_t kLlamaMaxDim = 1'000'000;
constexpr int64_t kLlamaMaxLayers = 1000;
constexpr int64_t kLlamaMaxContext = 1 << 24;

struct LlamaHyperParams {
  int64_t vocab_size = 0;
  int64_t dim = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t ffn_dim = 0;
  int64_t context_length = 0;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  std::string rope_scaling = "none";  // "none", "linear" or "llama3"
  float rope_factor = 1.0f;           // linear and llama3
  float rope_low_freq_factor = 1.0f;  // llama3
  float rope_high_freq_factor = 4.0f;
  int64_t rope_original_context = 0;
  int64_t sliding_window = 0;  // 0: full attention
  bool tied_output = false;
  bool qkv_bias = false;  // Qwen2
};

// One tensor of the layout. `part` names it inside its layer ("attn_q.weight"), or is the whole
// name outside the layers (layer -1).
struct LlamaTensor {
  std::string name;
  std::string part;
  int64_t layer = -1;
  std::vector<int64_t> shape;
  TensorKind kind = TensorKind::Matrix;
};

// Every tensor the runtime expects for these hyper-parameters, in file order.
std::vector<LlamaTensor> llama_tensors(const LlamaHyperParams& params);

// Writes general.architecture and the llama.* keys, after checking the tokenizer's special ids
// (already in `out`) against the vocabulary.
void add_llama_metadata(const LlamaHyperParams& params, qbin::Metadata& out);

// The Hugging Face architectures ("architectures" in config.json) handled here.
const std::vector<std::string>& hf_llama_architectures();
// A Hugging Face folder of one of those architectures: config.json (already loaded as `config`),
// safetensors weights and tokenizer files. The config is validated before any other file is read.
ModelPlan plan_hf_llama(const std::filesystem::path& folder, const HfConfig& config, const std::string& architecture);

}  // namespace octet::convert
