#include "convert/archs/ctranslate2.h"

#include <algorithm>
#include <memory>
#include <set>

#include "convert/archs/encdec.h"
#include "convert/sources/ctranslate2.h"
#include "convert/sources/hf_config.h"
#include "engine/error.h"
#include "tokenizer/tokenizer.h"

namespace octet::convert {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// CTranslate2 builds sinusoidal tables on demand; a .qbin stores one, this long (CTranslate2's
// default max_input_length).
constexpr int64_t kSinusoidalPositions = 1024;

// Scalar attributes this mapping reads or that do not change the computation. Any other scalar
// must hold 0 (a feature switched off), or the model is refused.
const std::set<std::string, std::less<>> kKnownAttributes = {
    "num_heads", "pre_norm", "activation", "embeddings_merge", "alignment_layer", "alignment_heads",
    "scale_embeddings", "multiply_by_sqrt_depth", "alibi_use_positive_positions"};

// CTranslate2's Activation enum -> encdec.activation.
std::string activation_name(int64_t activation, const std::string& where) {
  switch (activation) {
    case 0: return "relu";
    case 1: return "gelu_tanh";
    case 2: return "swish";
    case 3: return "gelu";
    default:
      fail(ErrorCode::Unsupported, where + ": activation " + std::to_string(activation) +
                                       " (CTranslate2's enum) is not supported (supported: ReLU, GELUTanh, Swish, GELU)");
  }
}

// Maps the layout onto the model's variables, remembering each one used so that anything left
// over (a feature the layout lacks) is refused rather than silently dropped.
class Ct2Mapping {
 public:
  explicit Ct2Mapping(std::shared_ptr<const Ct2Model> model) : model_(std::move(model)) {}

  const Ct2Model& model() const { return *model_; }
  bool has(const std::string& name) const { return model_->find(name) != nullptr; }

  // Part `part` of `parts` equal slices along the rows (a fused q,k,v or k,v projection), or of
  // the single row of a vector. Missing optional biases read as zeros.
  RowReader reader(const std::string& name, const std::vector<int64_t>& shape, int64_t part = 0, int64_t parts = 1,
                   bool zero_if_missing = false) {
    const Ct2Variable* variable = model_->find(name);
    if (variable == nullptr && zero_if_missing) return zero_rows(shape.back());
    std::vector<int64_t> stored = shape;
    stored.front() *= parts;
    const Ct2Variable* found = &model_->require(name, stored);
    used_.insert(found->name);
    used_.insert(found->name + "_scale");
    const int64_t offset = part * shape[0];
    if (shape.size() == 2) {
      return [model = model_, found, offset](int64_t first, int64_t count, float* out) {
        model->read_rows_f32(*found, offset + first, count, out);
      };
    }
    return [model = model_, found, offset, length = shape[0]](int64_t, int64_t, float* out) {
      std::vector<float> row(static_cast<size_t>(found->cols()));
      model->read_rows_f32(*found, 0, 1, row.data());
      std::copy_n(row.begin() + offset, length, out);
    };
  }

  // Throws (Unsupported) for the first variable or switched-on attribute the mapping did not use.
  void refuse_leftovers(const std::string& where) const {
    for (const auto& [name, variable] : model_->variables()) {
      if (used_.count(name)) continue;
      const std::string attribute = name.substr(name.rfind('/') + 1);
      const bool is_scalar = variable.elements() == 1 && variable.shape.size() <= 1;
      if (is_scalar && (kKnownAttributes.count(attribute) || model_->scalar(name).value_or(0) == 0)) continue;
      fail(ErrorCode::Unsupported, where + ": \"" + name + "\" is not supported by the encdec architecture");
    }
  }

 private:
  std::shared_ptr<const Ct2Model> model_;
  std::set<std::string, std::less<>> used_;  // stored names
};

// The vocabulary id of `token`, which the model must have.
int32_t token_id(const std::vector<std::string>& vocabulary, const std::string& token, const std::string& what) {
  const auto found = std::find(vocabulary.begin(), vocabulary.end(), token);
  if (found == vocabulary.end()) fail(ErrorCode::Format, what + " has no token \"" + token + "\"");
  return static_cast<int32_t>(found - vocabulary.begin());
}

std::string config_string(const json& config, const char* key, const char* fallback) {
  const auto found = config.find(key);
  if (found == config.end() || found->is_null()) return fallback;
  if (!found->is_string()) fail(ErrorCode::Format, std::string("config.json: \"") + key + "\" is not a string");
  return found->get<std::string>();
}

bool config_flag(const json& config, const char* key) {
  const auto found = config.find(key);
  if (found == config.end() || found->is_null()) return false;
  if (!found->is_boolean()) fail(ErrorCode::Format, std::string("config.json: \"") + key + "\" is not a boolean");
  return found->get<bool>();
}

// A SentencePiece model beside the model (CTranslate2 conversions of OPUS-MT) or in the package
// folder above it (Argos Translate: package/model/model.bin, package/sentencepiece.model).
std::optional<fs::path> sentencepiece_model(const fs::path& folder, const char* side) {
  const fs::path absolute = fs::absolute(folder).lexically_normal();
  for (const fs::path& candidate : {absolute / (std::string(side) + ".spm"), absolute / "sentencepiece.model",
                                    absolute.parent_path() / "sentencepiece.model"})
    if (fs::exists(candidate)) return candidate;
  return std::nullopt;
}

// One side's tokenizer (docs/qbin.md): the vocabulary, with CTranslate2's special tokens.
void add_tokenizer(const fs::path& folder, const std::vector<std::string>& vocabulary, const char* side, bool add_bos,
                   bool add_eos, const json& config, const std::string& prefix, qbin::Metadata& out) {
  const std::string what = std::string("the ") + side + " vocabulary";
  if (const auto model_file = sentencepiece_model(folder, side)) {
    sentencepiece_metadata(read_text_file(*model_file), out, prefix);
  } else {
    out.set(prefix + ".kind", std::string("whitespace"));
  }
  const int32_t unk = token_id(vocabulary, config_string(config, "unk_token", "<unk>"), what);
  const int32_t bos = token_id(vocabulary, config_string(config, "bos_token", "<s>"), what);
  const int32_t eos = token_id(vocabulary, config_string(config, "eos_token", "</s>"), what);
  // OpenNMT's padding token: invisible in output like BOS and EOS.
  std::vector<int32_t> special = {bos, eos};
  if (const auto blank = std::find(vocabulary.begin(), vocabulary.end(), "<blank>"); blank != vocabulary.end())
    special.insert(special.begin(), static_cast<int32_t>(blank - vocabulary.begin()));
  out.set(prefix + ".vocab", vocabulary);
  out.set(prefix + ".unk_id", unk);
  out.set(prefix + ".special_ids", special);
  out.set(prefix + ".bos_id", bos);
  out.set(prefix + ".eos_ids", std::vector<int32_t>{eos});
  out.set(prefix + ".add_bos", add_bos);
  out.set(prefix + ".add_eos", add_eos);
}

// A LayerNorm: gamma/beta -> weight/bias. CTranslate2 reads a norm without beta as RMSNorm.
RowReader norm_reader(Ct2Mapping& mapping, const std::string& scope, const std::string& part, int64_t d_model) {
  if (mapping.has(scope + "/gamma") && !mapping.has(scope + "/beta"))
    fail(ErrorCode::Unsupported, scope + " is an RMSNorm; the encdec architecture has LayerNorms");
  return mapping.reader(scope + (part == "weight" ? "/gamma" : "/beta"), {d_model});
}

// The CTranslate2 variable (and slice of it) that holds one tensor of the layout.
RowReader tensor_reader(Ct2Mapping& mapping, const EncDecTensor& tensor, const EncDecHyperParams& p) {
  const size_t dot = tensor.part.rfind('.');
  const std::string module = tensor.part.substr(0, dot), kind = tensor.part.substr(dot + 1);
  const bool is_bias = kind == "bias";
  // A linear layer: weight, or a bias that CTranslate2 may leave out.
  auto linear = [&](const std::string& scope, int64_t part = 0, int64_t parts = 1) {
    return mapping.reader(scope + "/" + kind, tensor.shape, part, parts, is_bias);
  };
  if (tensor.stack.empty()) return linear("decoder/projection");  // output.weight, output.bias

  const std::string& stack = tensor.stack;
  if (tensor.layer < 0) {
    if (module == "embedding") {
      const std::string name = stack + (mapping.has(stack + "/embeddings/weight") ? "/embeddings/weight" : "/embeddings_0/weight");
      return mapping.reader(name, tensor.shape);
    }
    if (module == "position") {
      if (mapping.has(stack + "/position_encodings/encodings"))
        return mapping.reader(stack + "/position_encodings/encodings", tensor.shape);
      return sinusoidal_positions(Sinusoid::CTranslate2, p.d_model);
    }
    if (module == "embedding_norm") return norm_reader(mapping, stack + "/layernorm_embedding", kind, p.d_model);
    return norm_reader(mapping, stack + "/layer_norm", kind, p.d_model);  // the final norm
  }

  const std::string layer = stack + "/layer_" + std::to_string(tensor.layer) + "/";
  // Self-attention fuses q, k, v into linear_0 (out: linear_1); cross-attention has q in
  // linear_0, k and v fused in linear_1 and its output in linear_2.
  const bool cross = module.starts_with("cross_attn");
  const std::string attention = layer + (cross ? "attention" : "self_attention");
  const std::string projection = module.substr(module.rfind('_') + 1);  // q, k, v, out or norm
  if (module.starts_with("ffn")) {
    if (projection == "norm") return norm_reader(mapping, layer + "ffn/layer_norm", kind, p.d_model);
    return linear(layer + (projection == "up" ? "ffn/linear_0" : "ffn/linear_1"));
  }
  if (projection == "norm") return norm_reader(mapping, attention + "/layer_norm", kind, p.d_model);
  if (projection == "out") return linear(attention + (cross ? "/linear_2" : "/linear_1"));
  const int64_t index = projection == "q" ? 0 : projection == "k" ? 1 : 2;
  if (!cross) return linear(attention + "/linear_0", index, 3);
  if (index == 0) return linear(attention + "/linear_0");
  return linear(attention + "/linear_1", index - 1, 2);
}

EncDecHyperParams read_hyper_params(const Ct2Mapping& mapping, const std::string& where) {
  const Ct2Model& model = mapping.model();
  const Ct2StackAttributes encoder = model.stack_attributes("encoder"), decoder = model.stack_attributes("decoder");
  if (encoder.num_heads != decoder.num_heads || encoder.pre_norm != decoder.pre_norm ||
      encoder.activation != decoder.activation || encoder.embeddings_scale != decoder.embeddings_scale)
    fail(ErrorCode::Unsupported, where + ": an encoder and decoder that differ in heads, norm placement, activation or "
                                         "embedding scale are not supported");
  if (mapping.has("encoder/embeddings_1/weight"))
    fail(ErrorCode::Unsupported, where + ": several source embeddings (factors) are not supported");

  EncDecHyperParams p;
  const Ct2Variable* source = model.find("encoder/embeddings/weight");
  if (source == nullptr) source = model.find("encoder/embeddings_0/weight");
  const Ct2Variable* target = model.find("decoder/embeddings/weight");
  const Ct2Variable* ffn = model.find("encoder/layer_0/ffn/linear_0/weight");
  if (source == nullptr || target == nullptr || ffn == nullptr || source->shape.size() != 2 ||
      target->shape.size() != 2 || ffn->shape.size() != 2)
    fail(ErrorCode::Format, where + ": not a Transformer (no 2-D encoder/decoder embeddings and encoder/layer_0/ffn)");
  p.d_model = source->shape[1];
  p.source_vocab_size = source->shape[0];
  p.target_vocab_size = target->shape[0];
  p.ffn_dim = ffn->shape[0];
  p.n_heads = encoder.num_heads;
  for (const auto& [stack, layers] : {std::pair{"encoder", &p.encoder_layers}, {"decoder", &p.decoder_layers}})
    while (*layers <= kEncDecMaxLayers &&
           mapping.has(std::string(stack) + "/layer_" + std::to_string(*layers) + "/ffn/linear_0/weight"))
      ++*layers;
  p.pre_norm = encoder.pre_norm;
  p.activation = activation_name(encoder.activation, where);
  p.embedding_scale = encoder.embeddings_scale;
  const json& config = model.config();
  const auto epsilon = config.find("layer_norm_epsilon");
  if (epsilon != config.end() && !epsilon->is_null() && !epsilon->is_number())
    fail(ErrorCode::Format, where + ": config.json \"layer_norm_epsilon\" is not a number");
  // CTranslate2's LayerNorm default when config.json does not say.
  p.norm_eps = epsilon != config.end() && epsilon->is_number() ? epsilon->get<float>() : 1e-5f;

  // Learned tables fix the length (both stacks alike); sinusoidal ones get a generous one.
  p.max_positions = kSinusoidalPositions;
  for (const char* stack : {"encoder", "decoder"})
    if (const Ct2Variable* table = model.find(std::string(stack) + "/position_encodings/encodings")) {
      if (table->shape.size() != 2) fail(ErrorCode::Format, where + ": " + table->name + " is not a 2-D table");
      p.max_positions = table->shape[0];
    }

  // Shared and tied weights are aliases of one stored variable (binary version 3 and later).
  p.shared_embeddings = source == target;
  p.tied_output = model.find("decoder/projection/weight") == target;
  p.output_bias = mapping.has("decoder/projection/bias");
  p.embedding_norms = mapping.has("encoder/layernorm_embedding/gamma");
  p.final_norms = mapping.has("encoder/layer_norm/gamma");
  if (p.embedding_norms != mapping.has("decoder/layernorm_embedding/gamma") ||
      p.final_norms != mapping.has("decoder/layer_norm/gamma"))
    fail(ErrorCode::Unsupported, where + ": embedding or final norms in only one of the encoder and decoder are not supported");
  return p;
}

}  // namespace

ModelPlan plan_ctranslate2(const fs::path& folder, const Options& options) {
  if (!options.tokenizer_path.empty())
    fail(ErrorCode::InvalidArgument, "a tokenizer path applies to llama2.c checkpoints; a CTranslate2 model's "
                                     "vocabularies are read from its folder");
  auto model = std::make_shared<const Ct2Model>(folder);
  const std::string where = (folder / "model.bin").string();
  const std::string& spec = model->spec_name();
  if (spec != "TransformerSpec" && spec != "TransformerBase" && spec != "TransformerBig" && !spec.empty())
    fail(ErrorCode::Unsupported, where + ": a " + spec + " is not a Transformer translation model (supported: TransformerSpec)");

  Ct2Mapping mapping(model);
  EncDecHyperParams params = read_hyper_params(mapping, where);

  const json& config = model->config();
  const std::vector<std::string>& source_vocabulary = model->source_vocabulary();
  const std::vector<std::string>& target_vocabulary = model->target_vocabulary();
  if (static_cast<int64_t>(source_vocabulary.size()) != params.source_vocab_size ||
      static_cast<int64_t>(target_vocabulary.size()) != params.target_vocab_size)
    fail(ErrorCode::Format, where + ": vocabularies of " + std::to_string(source_vocabulary.size()) + " and " +
                                std::to_string(target_vocabulary.size()) + " tokens do not match the embeddings' " +
                                std::to_string(params.source_vocab_size) + " and " + std::to_string(params.target_vocab_size));
  params.decoder_start_id =
      token_id(target_vocabulary, config_string(config, "decoder_start_token", "<s>"), "the target vocabulary");
  params.eos_id = token_id(target_vocabulary, config_string(config, "eos_token", "</s>"), "the target vocabulary");
  params.unk_id = token_id(target_vocabulary, config_string(config, "unk_token", "<unk>"), "the target vocabulary");
  params.pad_id = 0;  // CTranslate2 pads batches with id 0
  validate_encdec(params, where);

  ModelPlan plan;
  for (const EncDecTensor& tensor : encdec_tensors(params))
    plan.tensors.push_back({tensor.name, tensor.shape, tensor.kind, tensor_reader(mapping, tensor, params)});
  mapping.refuse_leftovers(where);

  plan.metadata.set("general.name", model_folder_name(folder));
  plan.metadata.set("general.source", std::string("ctranslate2"));
  add_tokenizer(folder, source_vocabulary, "source", config_flag(config, "add_source_bos"),
                config_flag(config, "add_source_eos"), config, "source_tokenizer", plan.metadata);
  add_tokenizer(folder, target_vocabulary, "target", false, false, config, "target_tokenizer", plan.metadata);
  add_encdec_metadata(params, plan.metadata);
  return plan;
}

}  // namespace octet::convert
