#include "convert/sources/ctranslate2.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "convert/model_plan.h"
#include "convert/sources/hf_config.h"
#include "engine/error.h"
#include "kernels/blocks.h"

namespace octet::convert {
namespace {

static_assert(std::endian::native == std::endian::little, "model.bin is little-endian");

using json = nlohmann::json;

// Binary versions this reader knows: 2 added the spec name and revision, 3 aliases, 4 explicit
// dtypes, 5 round-to-nearest quantization and config.json, 6 the current writer.
constexpr uint32_t kFirstVersion = 2;
constexpr uint32_t kLastVersion = 6;
// CTranslate2's variables have rank <= 4; a bound keeps every product of dimensions checkable.
constexpr uint32_t kMaxRank = 8;
// What CTranslate2 assumes for int16 weights saved without a scale (ops::Quantize::global_int16_scale).
constexpr float kDefaultInt16Scale = 1000;

int dtype_size(Ct2DataType dtype) {
  switch (dtype) {
    case Ct2DataType::Float32:
    case Ct2DataType::Int32: return 4;
    case Ct2DataType::Int16:
    case Ct2DataType::Float16:
    case Ct2DataType::BFloat16: return 2;
    case Ct2DataType::Int8: return 1;
  }
  return 0;
}

// Before version 4 the dtype was guessed from the item size ("the old (and flawed) logic" in
// CTranslate2's model.cc: a float16 variable read as int16); so do we, for the same files.
bool dtype_from_item_size(uint8_t item_size, Ct2DataType* dtype) {
  switch (item_size) {
    case 4: *dtype = Ct2DataType::Float32; return true;
    case 2: *dtype = Ct2DataType::Int16; return true;
    case 1: *dtype = Ct2DataType::Int8; return true;
    default: return false;
  }
}

// Bounds-checked reads through model.bin; every failure names the file and the byte offset.
class Cursor {
 public:
  explicit Cursor(const MappedFile& file) : file_(file) {}

  [[noreturn]] void bad(const std::string& what) const {
    fail(ErrorCode::Format, file_.path() + " at byte " + std::to_string(at_) + ": " + what);
  }
  const uint8_t* take(uint64_t n, const char* what) {
    if (file_.size() - at_ < n)
      bad(std::string("truncated: ") + what + " needs " + std::to_string(n) + " bytes, " +
          std::to_string(file_.size() - at_) + " remain");
    const uint8_t* p = file_.data() + at_;
    at_ += n;
    return p;
  }
  template <class T>
  T value(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string string(const char* what) {
    const uint16_t length = value<uint16_t>(what);
    const char* text = reinterpret_cast<const char*>(take(length, what));
    if (length == 0 || text[length - 1] != '\0') bad(std::string(what) + " is not NUL-terminated");
    if (std::memchr(text, '\0', length - 1) != nullptr) bad(std::string(what) + " has a NUL inside");
    return std::string(text, length - 1);
  }
  uint64_t remaining() const { return file_.size() - at_; }

 private:
  const MappedFile& file_;
  uint64_t at_ = 0;
};

float load_f32(const uint8_t* p, Ct2DataType dtype, int64_t index) {
  switch (dtype) {
    case Ct2DataType::Float32: {
      float v;
      std::memcpy(&v, p + 4 * index, 4);
      return v;
    }
    case Ct2DataType::Float16:
    case Ct2DataType::BFloat16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * index, 2);
      return dtype == Ct2DataType::BFloat16 ? bf16_to_fp32(h) : fp16_to_fp32(h);
    }
    case Ct2DataType::Int16: {
      int16_t v;
      std::memcpy(&v, p + 2 * index, 2);
      return v;
    }
    case Ct2DataType::Int8: return static_cast<int8_t>(p[index]);
    case Ct2DataType::Int32: {
      int32_t v;
      std::memcpy(&v, p + 4 * index, 4);
      return static_cast<float>(v);
    }
  }
  return 0;
}

// A scalar attribute's value: flags and enums are int8, counts int16 or int32, scales float.
double scalar_value(const Ct2Variable& variable) {
  if (!variable.shape.empty())
    fail(ErrorCode::Format, variable.file + ": attribute \"" + variable.name + "\" is not a scalar (shape " +
                                shape_string(variable.shape) + ")");
  if (variable.dtype == Ct2DataType::Int32) {  // wider than a float holds exactly
    int32_t value;
    std::memcpy(&value, variable.data, 4);
    return value;
  }
  return load_f32(variable.data, variable.dtype, 0);
}

// A text vocabulary as CTranslate2 reads it: one token per line; a trailing carriage return is
// dropped only when every line has one (some tokens genuinely end with '\r').
std::vector<std::string> text_tokens(const std::string& text) {
  std::vector<std::string> tokens;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    tokens.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  const bool all_crlf = !tokens.empty() && std::all_of(tokens.begin(), tokens.end(), [](const std::string& token) {
    return !token.empty() && token.back() == '\r';
  });
  if (all_crlf)
    for (std::string& token : tokens) token.pop_back();
  return tokens;
}

std::vector<std::string> json_tokens(const std::filesystem::path& path) {
  const json tokens = json::parse(read_text_file(path), nullptr, /*allow_exceptions=*/false);
  if (tokens.is_discarded() || !tokens.is_array()) fail(ErrorCode::Format, path.string() + ": not a JSON array of tokens");
  std::vector<std::string> out;
  for (const json& token : tokens) {
    if (!token.is_string()) fail(ErrorCode::Format, path.string() + ": token " + std::to_string(out.size()) + " is not a string");
    out.push_back(token.get<std::string>());
  }
  return out;
}

// <stem>.json (binary version 5 and later) or <stem>.txt; nothing when neither exists.
std::optional<std::vector<std::string>> load_vocabulary(const std::filesystem::path& folder, const std::string& stem) {
  const auto json_path = folder / (stem + ".json");
  const auto text_path = folder / (stem + ".txt");
  if (std::filesystem::exists(json_path)) return json_tokens(json_path);
  if (std::filesystem::exists(text_path)) return text_tokens(read_text_file(text_path));
  return std::nullopt;
}

}  // namespace

const char* ct2_dtype_name(Ct2DataType dtype) {
  switch (dtype) {
    case Ct2DataType::Float32: return "float32";
    case Ct2DataType::Int8: return "int8";
    case Ct2DataType::Int16: return "int16";
    case Ct2DataType::Int32: return "int32";
    case Ct2DataType::Float16: return "float16";
    case Ct2DataType::BFloat16: return "bfloat16";
  }
  return "?";
}

int64_t Ct2Variable::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // bounded: checked against the byte count when read
  return n;
}

Ct2Model::Ct2Model(const std::filesystem::path& folder) : file_((folder / "model.bin").string()) {
  read_model_bin();
  const auto config_path = folder / "config.json";
  if (std::filesystem::exists(config_path)) {
    config_ = json::parse(read_text_file(config_path), nullptr, /*allow_exceptions=*/false);
    if (config_.is_discarded() || !config_.is_object()) fail(ErrorCode::Format, config_path.string() + ": not a JSON object");
  }
  read_vocabularies(folder);
}

void Ct2Model::read_model_bin() {
  const std::string& path = file_.path();
  Cursor in(file_);
  binary_version_ = in.value<uint32_t>("the binary version");
  if (binary_version_ < kFirstVersion || binary_version_ > kLastVersion)
    fail(ErrorCode::Unsupported, path + ": binary version " + std::to_string(binary_version_) + " is not one this reader knows (" +
                                     std::to_string(kFirstVersion) + " to " + std::to_string(kLastVersion) + ")");
  spec_name_ = in.string("the spec name");
  spec_revision_ = in.value<uint32_t>("the spec revision");
  // Revision 1 used OpenNMT-tf V1 variable names, which CTranslate2 renames on load.
  if (spec_revision_ < 2) fail(ErrorCode::Unsupported, path + ": spec revision 1 (OpenNMT-tf V1 names) is not supported");

  const uint32_t count = in.value<uint32_t>("the variable count");
  for (uint32_t i = 0; i < count; ++i) {  // each step checks its bytes, so a huge count just fails
    Ct2Variable variable;
    variable.name = in.string("a variable name");
    variable.file = path;
    const uint8_t rank = in.value<uint8_t>("a rank");
    if (rank > kMaxRank) in.bad("variable \"" + variable.name + "\" has rank " + std::to_string(rank));
    uint64_t elements = 1;
    for (uint8_t d = 0; d < rank; ++d) {
      const uint32_t dim = in.value<uint32_t>("a dimension");
      if (__builtin_mul_overflow(elements, uint64_t{dim}, &elements))
        in.bad("variable \"" + variable.name + "\": its shape overflows");
      variable.shape.push_back(dim);
    }
    uint64_t expected_bytes = 0;
    if (binary_version_ >= 4) {
      const uint8_t type_id = in.value<uint8_t>("a dtype");
      if (type_id > static_cast<uint8_t>(Ct2DataType::BFloat16))
        in.bad("variable \"" + variable.name + "\" has unknown dtype " + std::to_string(type_id));
      variable.dtype = static_cast<Ct2DataType>(type_id);
      variable.size = in.value<uint32_t>("a byte count");
      if (__builtin_mul_overflow(elements, uint64_t(dtype_size(variable.dtype)), &expected_bytes))
        in.bad("variable \"" + variable.name + "\": its shape overflows");
      if (variable.size != expected_bytes)
        in.bad("variable \"" + variable.name + "\" holds " + std::to_string(variable.size) + " bytes but shape " +
               shape_string(variable.shape) + " of " + ct2_dtype_name(variable.dtype) + " needs " + std::to_string(expected_bytes));
    } else {
      const uint8_t item_size = in.value<uint8_t>("an item size");
      if (!dtype_from_item_size(item_size, &variable.dtype))
        in.bad("variable \"" + variable.name + "\" has unknown item size " + std::to_string(item_size));
      const uint32_t stored_elements = in.value<uint32_t>("an element count");
      if (stored_elements != elements)
        in.bad("variable \"" + variable.name + "\" holds " + std::to_string(stored_elements) + " elements but shape " +
               shape_string(variable.shape) + " has " + std::to_string(elements));
      variable.size = uint64_t{stored_elements} * item_size;
    }
    variable.data = in.take(variable.size, "variable data");
    const std::string name = variable.name;
    if (!variables_.emplace(name, std::move(variable)).second) in.bad("variable \"" + name + "\" appears twice");
  }
  for (const auto& [name, variable] : variables_) by_name_.emplace(name, &variable);

  if (binary_version_ >= 3) {
    const uint32_t alias_count = in.value<uint32_t>("the alias count");
    for (uint32_t i = 0; i < alias_count; ++i) {
      std::string alias = in.string("an alias");
      std::string target = in.string("an alias target");
      const auto found = variables_.find(target);
      if (found == variables_.end()) in.bad("alias \"" + alias + "\" names no variable (\"" + target + "\")");
      if (!by_name_.emplace(alias, &found->second).second) in.bad("alias \"" + alias + "\" reuses a name");
      // As CTranslate2 does: the alias of a quantized weight also shares its scale.
      const auto scale = variables_.find(target + "_scale");
      if (scale != variables_.end()) by_name_.emplace(alias + "_scale", &scale->second);
      aliases_.emplace(std::move(alias), std::move(target));
    }
  }
  if (in.remaining() != 0) in.bad(std::to_string(in.remaining()) + " bytes follow the last record");
}

void Ct2Model::read_vocabularies(const std::filesystem::path& folder) {
  // A sequence-to-sequence model has shared_vocabulary or source_ and target_vocabulary; a
  // language model has vocabulary.
  if (auto shared = load_vocabulary(folder, "shared_vocabulary")) {
    source_vocabulary_ = target_vocabulary_ = std::move(*shared);
  } else if (auto single = load_vocabulary(folder, "vocabulary")) {
    source_vocabulary_ = target_vocabulary_ = std::move(*single);
  } else {
    auto source = load_vocabulary(folder, "source_vocabulary");
    auto target = load_vocabulary(folder, "target_vocabulary");
    if (!source && load_vocabulary(folder, "source_1_vocabulary"))
      fail(ErrorCode::Unsupported, folder.string() + ": models with several source vocabularies (factors) are not supported");
    if (!source || !target)
      fail(ErrorCode::Io, folder.string() + " has no shared_vocabulary, vocabulary, or source_ and target_vocabulary (.json or .txt)");
    source_vocabulary_ = std::move(*source);
    target_vocabulary_ = std::move(*target);
  }
  const auto unk = config_.find("unk_token");
  const std::string unk_token = unk != config_.end() && unk->is_string() ? unk->get<std::string>() : "<unk>";
  for (auto* vocabulary : {&source_vocabulary_, &target_vocabulary_})
    if (std::find(vocabulary->begin(), vocabulary->end(), unk_token) == vocabulary->end()) vocabulary->push_back(unk_token);
}

const Ct2Variable* Ct2Model::find(std::string_view name) const {
  const auto found = by_name_.find(name);
  return found == by_name_.end() ? nullptr : found->second;
}

const Ct2Variable& Ct2Model::require(std::string_view name, const std::vector<int64_t>& shape) const {
  const Ct2Variable* variable = find(name);
  if (variable == nullptr) fail(ErrorCode::Format, file_.path() + ": the model has no variable \"" + std::string(name) + "\"");
  if (variable->shape != shape)
    fail(ErrorCode::Format, file_.path() + ": variable \"" + std::string(name) + "\" has shape " + shape_string(variable->shape) +
                                ", the model implies " + shape_string(shape));
  return *variable;
}

std::optional<double> Ct2Model::scalar(std::string_view name) const {
  const Ct2Variable* variable = find(name);
  if (variable == nullptr) return std::nullopt;
  return scalar_value(*variable);
}

Ct2StackAttributes Ct2Model::stack_attributes(std::string_view scope) const {
  const std::string prefix = std::string(scope) + "/";
  // Revisions before 5 kept one model-wide value at the root; CTranslate2 aliases it per stack.
  const auto attribute = [&](const std::string& name) {
    auto value = scalar(prefix + name);
    return value ? value : scalar(name);
  };
  Ct2StackAttributes attributes;
  // Revisions before 3 stored no num_heads: the spec name implied it.
  attributes.num_heads = static_cast<int64_t>(attribute("num_heads").value_or(spec_name_ == "TransformerBig" ? 16 : 8));
  attributes.pre_norm = attribute("pre_norm").value_or(1) != 0;
  attributes.activation = static_cast<int64_t>(attribute("activation").value_or(0));
  if (attributes.num_heads <= 0) fail(ErrorCode::Format, file_.path() + ": " + prefix + "num_heads is not positive");

  const Ct2Variable* embeddings = find(prefix + "embeddings/weight");
  if (embeddings == nullptr) embeddings = find(prefix + "embeddings_0/weight");  // newer encoders: a list
  if (embeddings == nullptr || embeddings->shape.size() != 2)
    fail(ErrorCode::Format, file_.path() + ": no 2-D " + prefix + "embeddings/weight");
  // A flag (int8: scale by sqrt(d_model) or not) or the scale itself; absent means the flag is set.
  const Ct2Variable* scale = find(prefix + "scale_embeddings");
  if (scale == nullptr) scale = find(prefix + "embeddings/multiply_by_sqrt_depth");
  const float sqrt_depth = std::sqrt(static_cast<float>(embeddings->cols()));
  if (scale == nullptr) {
    attributes.embeddings_scale = sqrt_depth;
  } else {
    const double value = scalar_value(*scale);
    if (scale->dtype == Ct2DataType::Int8) attributes.embeddings_scale = value != 0 ? sqrt_depth : 1.0f;
    else attributes.embeddings_scale = static_cast<float>(value);
  }
  attributes.learned_positions = find(prefix + "position_encodings/encodings") != nullptr;
  return attributes;
}

void Ct2Model::read_rows_f32(const Ct2Variable& variable, int64_t first, int64_t count, float* out) const {
  const int64_t cols = variable.cols();
  if (first < 0 || count < 0 || first + count > variable.rows())
    fail(ErrorCode::Internal, "rows out of range reading " + variable.name);
  const bool quantized = variable.dtype == Ct2DataType::Int8 || variable.dtype == Ct2DataType::Int16;
  if (variable.dtype == Ct2DataType::Int32)
    fail(ErrorCode::Unsupported, file_.path() + ": variable \"" + variable.name + "\" is int32; only float and quantized weights convert");
  if (!quantized) {
    for (int64_t i = 0; i < count * cols; ++i) out[i] = load_f32(variable.data, variable.dtype, first * cols + i);
    return;
  }
  // CTranslate2 quantizes q = w * scale (scale = 127 / max|row| for int8), so w = q / scale.
  const Ct2Variable* scale = find(variable.name + "_scale");
  if (scale == nullptr && variable.dtype == Ct2DataType::Int8)
    fail(ErrorCode::Format, file_.path() + ": int8 variable \"" + variable.name + "\" has no \"" + variable.name + "_scale\"");
  const bool per_row = scale != nullptr && scale->elements() != 1;
  if (scale != nullptr) {
    const bool float_scale = scale->dtype == Ct2DataType::Float32 || scale->dtype == Ct2DataType::Float16 ||
                             scale->dtype == Ct2DataType::BFloat16;
    if (!float_scale || (per_row && (scale->shape.size() != 1 || scale->shape[0] != variable.rows())))
      fail(ErrorCode::Format, file_.path() + ": \"" + scale->name + "\" (" + ct2_dtype_name(scale->dtype) + " " +
                                  shape_string(scale->shape) + ") is not a float scale per row of " + variable.name + " " +
                                  shape_string(variable.shape));
  }
  for (int64_t r = 0; r < count; ++r) {
    const int64_t row = first + r;
    const float row_scale = scale == nullptr ? kDefaultInt16Scale : load_f32(scale->data, scale->dtype, per_row ? row : 0);
    if (!(row_scale > 0) || !std::isfinite(row_scale))
      fail(ErrorCode::Format, file_.path() + ": \"" + variable.name + "_scale\" row " + std::to_string(row) +
                                  " is not a positive finite number");
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = load_f32(variable.data, variable.dtype, row * cols + c) / row_scale;
  }
}

}  // namespace octet::convert
