// The "encdec" architecture (docs/qbin.md): one configurable encoder-decoder Transformer for
// translation models. The families (MarianMT in marian.h, CTranslate2 in ctranslate2.h) differ
// in these hyper-parameters and in where each tensor comes from, not in the layout defined here.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "convert/model_plan.h"

namespace octet::convert {

// Sanity bounds on hyper-parameters read from any source, so that an absurd config is refused
// before anything is sized by it. Positions are generated here, not read, hence their own bound
// on the size of a table.
constexpr int64_t kEncDecMaxDim = 1 << 20;
constexpr int64_t kEncDecMaxLayers = 1000;
constexpr int64_t kEncDecMaxVocab = 1 << 24;
constexpr int64_t kEncDecMaxPositionElements = int64_t{1} << 28;  // rows x d_model of one table

struct EncDecHyperParams {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t ffn_dim = 0;
  int64_t encoder_layers = 0;
  int64_t decoder_layers = 0;
  int64_t source_vocab_size = 0;
  int64_t target_vocab_size = 0;
  int64_t max_positions = 0;
  bool pre_norm = false;
  std::string activation;  // "relu", "gelu", "gelu_tanh" or "swish"
  float embedding_scale = 1.0f;
  float norm_eps = 1e-5f;
  int32_t decoder_start_id = 0, eos_id = 0, pad_id = 0, unk_id = 0;

  // Which optional tensors the model has.
  bool shared_embeddings = false;  // the decoder reads the encoder's token embedding
  bool tied_output = false;        // the output head is the decoder's token embedding
  bool output_bias = false;
  bool embedding_norms = false;    // LayerNorm after embedding + position, in both stacks
  bool final_norms = false;        // LayerNorm after the last layer of each stack (pre-norm models)
};

// One tensor of the layout: `source` is the family's name for it, filled in by the family;
// `part` names it inside its layer ("attn_q.weight"), or is the whole name outside the layers.
struct EncDecTensor {
  std::string name;
  std::string stack;  // "encoder", "decoder" or "" (output head)
  int64_t layer = -1;
  std::string part;
  std::vector<int64_t> shape;
  TensorKind kind = TensorKind::Matrix;
};

// Every tensor the runtime expects for these hyper-parameters, in file order. The position tables
// (encoder.position.weight, decoder.position.weight) are among them.
std::vector<EncDecTensor> encdec_tensors(const EncDecHyperParams& params);

// Checks the hyper-parameters against each other and the sanity bounds (Format, naming `where`).
void validate_encdec(const EncDecHyperParams& params, const std::string& where);

// Writes general.architecture and the encdec.* keys.
void add_encdec_metadata(const EncDecHyperParams& params, qbin::Metadata& out);

// Rows of a sinusoidal position table with the sines in the first half of each row and the
// cosines in the second. Marian (transformers' MarianSinusoidalPositionalEmbedding): row p holds
// p / 10000^(2k/d_model); CTranslate2 (SinusoidalPositionEncoder): (p + 1) * exp(-k ln(10000) /
// (d_model/2 - 1)). Computed in double and rounded once, as the references' numpy / float math
// round-trips to within 1e-7.
enum class Sinusoid { Marian, CTranslate2 };
RowReader sinusoidal_positions(Sinusoid kind, int64_t d_model);

// A reader of rows that are all zeros: CTranslate2 linear layers saved without a bias.
RowReader zero_rows(int64_t cols);

// The folder's own name, also for "path/to/model/", for general.name.
std::string model_folder_name(const std::filesystem::path& folder);

}  // namespace octet::convert
