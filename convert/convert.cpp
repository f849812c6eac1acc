#include "convert/convert.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <regex>

#include "convert/archs/ctranslate2.h"
#include "convert/archs/llama.h"
#include "convert/archs/marian.h"
#include "convert/hub.h"
#include "convert/model_plan.h"
#include "convert/sources/hf_config.h"
#include "convert/sources/llama2c.h"
#include "engine/error.h"
#include "engine/qbin.h"
#include "kernels/kernels.h"

namespace octet::convert {
namespace {

namespace fs = std::filesystem;

constexpr const char* kConverterName = "octet-convert " OCTET_VERSION;
// f32 values read from the source at a time (16 MiB): bounds the scratch memory per tensor.
constexpr int64_t kChunkFloats = int64_t{4} << 20;

bool is_block_type(DType type) { return type != DType::F32 && type != DType::F16; }

ModelPlan plan_hugging_face(const fs::path& folder, const Options& options) {
  if (!options.tokenizer_path.empty())
    fail(ErrorCode::InvalidArgument, "a tokenizer path applies to llama2.c checkpoints; a Hugging Face folder's "
                                     "tokenizer is read from the folder");
  if (!fs::exists(folder / "config.json"))
    fail(ErrorCode::Io, folder.string() + " has no config.json (expected a Hugging Face model folder)");
  const HfConfig config = HfConfig::load(folder / "config.json");
  const nlohmann::json* architectures = config.find("architectures");
  if (architectures == nullptr) fail(ErrorCode::Format, config.where() + ": missing key \"architectures\"");
  if (!architectures->is_array() || architectures->empty() || !(*architectures)[0].is_string())
    fail(ErrorCode::Format, config.where() + ": \"architectures\" is not a list of names");
  const std::string architecture = (*architectures)[0].get<std::string>();

  const std::vector<std::string>& llama = hf_llama_architectures();
  if (std::find(llama.begin(), llama.end(), architecture) != llama.end())
    return plan_hf_llama(folder, config, architecture);
  if (architecture == "MarianMTModel") return plan_marian(folder, config);
  std::string supported;
  for (const std::string& name : llama) supported += (supported.empty() ? "" : ", ") + name;
  supported += ", MarianMTModel";
  fail(ErrorCode::Unsupported, "architecture \"" + architecture + "\" is not supported; supported: " + supported);
}

// A folder (or a file inside one) is a Hugging Face model; a .bin file is a llama2.c checkpoint.
ModelPlan plan_source(const std::string& input, const Options& options) {
  const fs::path path = input;
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (!fs::exists(status)) fail(ErrorCode::Io, "cannot open " + input + ": no such file or folder");
  if (fs::is_directory(status) && fs::exists(path / "model.bin")) return plan_ctranslate2(path, options);
  if (fs::is_directory(status)) return plan_hugging_face(path, options);
  if (path.extension() == ".bin") return plan_llama2c(path, options.tokenizer_path);
  if (path.extension() == ".safetensors" || path.extension() == ".json")
    return plan_hugging_face(path.parent_path().empty() ? fs::path(".") : path.parent_path(), options);
  fail(ErrorCode::Unsupported, "unrecognised input " + input +
                                   ": expected a Hugging Face model folder or a llama2.c .bin checkpoint");
}

struct TypeChoice {
  DType type;
  bool fell_back;  // a block type was asked for but the rows are not a multiple of the block
  Layout layout = Layout::Rows;
};

TypeChoice choose_type(const PlannedTensor& tensor, const Options& options) {
  DType wanted = options.quant;
  if (tensor.kind == TensorKind::Vector) return {DType::F32, false};
  if (tensor.kind == TensorKind::TokenEmbedding) wanted = options.embedding_type.value_or(options.quant);
  if (tensor.kind == TensorKind::Output) wanted = options.output_type.value_or(options.quant);
  if (is_block_type(wanted) && tensor.shape.back() % kBlockSize != 0) return {DType::F16, true};
  // Q8_0 and Q4_0 matrices are stored in the kernels' interleaved form, so the runtime maps them
  // as they are instead of repacking them at every load.
  const bool packed = kernels::packable(wanted) && tensor.shape.size() == 2;
  return {wanted, false, packed ? Layout::Packed : Layout::Rows};
}

// The recipe: the base type, then every matrix stored otherwise, with per-layer tensors named
// once ("layers.*.ffn_down"), e.g. "q4_0 (token_embedding q8_0)".
std::string describe_quantization(const ModelPlan& plan, const std::vector<TypeChoice>& choices, DType base) {
  static const std::regex kLayerNumber("^layers\\.[0-9]+\\.");
  std::vector<std::string> notes;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& tensor = plan.tensors[i];
    if (tensor.kind == TensorKind::Vector || choices[i].type == base) continue;
    std::string name = std::regex_replace(tensor.name, kLayerNumber, "layers.*.");
    name = name.substr(0, name.rfind(".weight"));
    std::string note = name + " " + kernels::dtype_name(choices[i].type);
    if (choices[i].fell_back)
      note += " fallback: rows of " + std::to_string(tensor.shape.back()) + " are not a multiple of 32";
    if (std::find(notes.begin(), notes.end(), note) == notes.end()) notes.push_back(note);
  }
  std::string recipe = kernels::dtype_name(base);
  for (size_t i = 0; i < notes.size(); ++i) recipe += (i == 0 ? " (" : ", ") + notes[i];
  return notes.empty() ? recipe : recipe + ")";
}

// Reads a tensor a block of rows at a time and stores it as `type` into `out`.
void convert_tensor(const PlannedTensor& tensor, DType type, std::vector<uint8_t>& out, std::vector<float>& scratch) {
  const int64_t cols = tensor.shape.back();
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < tensor.shape.size(); ++d) rows *= tensor.shape[d];
  const size_t row_size = kernels::row_bytes(type, cols);
  out.resize(static_cast<size_t>(rows) * row_size);
  const int64_t chunk_rows = std::max<int64_t>(1, kChunkFloats / cols);
  for (int64_t first = 0; first < rows; first += chunk_rows) {
    const int64_t count = std::min(chunk_rows, rows - first);
    uint8_t* dst = out.data() + static_cast<size_t>(first) * row_size;
    if (type == DType::F32) {  // vector storage is suitably aligned for floats
      tensor.read_rows(first, count, reinterpret_cast<float*>(dst));
      continue;
    }
    scratch.resize(static_cast<size_t>(count * cols));
    tensor.read_rows(first, count, scratch.data());
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < count; ++row)
      kernels::quantize_row(type, scratch.data() + row * cols, dst + static_cast<size_t>(row) * row_size, cols);
  }
}

}  // namespace

Stats convert(const std::string& input, const std::string& output, const Options& options, const Progress& progress) {
  const auto start = std::chrono::steady_clock::now();
  for (const std::optional<DType> type : {std::optional<DType>(options.quant), options.embedding_type, options.output_type})
    if (type && !kernels::dtype_is_valid(static_cast<uint32_t>(*type)))
      fail(ErrorCode::InvalidArgument, "unknown tensor type " + std::to_string(static_cast<uint32_t>(*type)));
  std::error_code same_error;
  if (fs::equivalent(input, output, same_error))
    fail(ErrorCode::InvalidArgument, "the output " + output + " would overwrite the input");

  ModelPlan plan = plan_source(hub::resolve(input), options);  // a hub id (owner/name): download it first

  std::vector<TypeChoice> choices;
  std::vector<qbin::Writer::Declared> declared;
  uint64_t total_bytes = 0;
  for (const PlannedTensor& tensor : plan.tensors) {
    choices.push_back(choose_type(tensor, options));
    declared.push_back({tensor.name, choices.back().type, tensor.shape, choices.back().layout});
    total_bytes += qbin::tensor_bytes(choices.back().type, tensor.shape, choices.back().layout);
  }
  plan.metadata.set("general.quantization", describe_quantization(plan, choices, options.quant));
  plan.metadata.set("general.converter", std::string(kConverterName));

  qbin::Writer writer(output, plan.metadata, declared);
  Stats stats;
  uint64_t done_bytes = 0, matrix_bits = 0;
  int64_t matrix_elements = 0;
  std::vector<uint8_t> data;
  std::vector<float> scratch;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& tensor = plan.tensors[i];
    convert_tensor(tensor, choices[i].type, data, scratch);
    uint64_t stored_bytes = data.size();
    if (choices[i].layout == Layout::Packed) {
      const kernels::PackedBuffer packed(choices[i].type, data.data(), tensor.shape[0], tensor.shape[1]);
      writer.write_next(packed.bytes(), packed.size());
      stored_bytes = packed.size();
    } else {
      writer.write_next(data.data(), data.size());
    }

    int64_t elements = 1;
    for (int64_t d : tensor.shape) elements *= d;
    stats.parameters += elements;
    if (tensor.kind != TensorKind::Vector) {
      matrix_bits += 8 * stored_bytes;
      matrix_elements += elements;
    }
    done_bytes += stored_bytes;
    if (progress) progress(done_bytes, total_bytes, tensor.name);
  }
  writer.finish();

  stats.tensors = static_cast<int64_t>(plan.tensors.size());
  stats.bytes = writer.bytes_written();
  stats.bits_per_weight = matrix_elements > 0 ? static_cast<double>(matrix_bits) / static_cast<double>(matrix_elements) : 0;
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace octet::convert
