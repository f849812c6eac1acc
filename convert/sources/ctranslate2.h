// Reader for CTranslate2 model directories: model.bin (binary versions 2 to 6), config.json when
// present, and the vocabularies. model.bin is mapped and validated in full before any variable is
// used, as safetensors files are: a hostile file gives octet::Error (Format) naming it, never a
// crash or an allocation sized by it.
//
// model.bin, little-endian; a string is a u16 byte count (the trailing NUL included), the bytes,
// then the NUL:
//   u32 binary_version
//   [v >= 2] string spec_name ("TransformerBase", "TransformerSpec", ...), u32 spec_revision
//   u32 variable_count, then per variable:
//     string name, u8 rank, u32 dims[rank],
//     [v >= 4] u8 dtype (CTranslate2's DataType order, Ct2DataType below), u32 byte_count
//     [v <  4] u8 item_size (4: float32, 2: int16, 1: int8), u32 element_count
//     the data, row-major
//   [v >= 3] u32 alias_count, then per alias: string alias, string name of the variable it shares
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "convert/mapped_file.h"

namespace octet::convert {

enum class Ct2DataType : uint8_t { Float32 = 0, Int8 = 1, Int16 = 2, Int32 = 3, Float16 = 4, BFloat16 = 5 };
const char* ct2_dtype_name(Ct2DataType dtype);

struct Ct2Variable {
  std::string name;
  Ct2DataType dtype = Ct2DataType::Float32;
  std::vector<int64_t> shape;     // empty for a scalar attribute (num_heads, pre_norm, ...)
  const uint8_t* data = nullptr;  // inside the mapped model.bin, not aligned
  uint64_t size = 0;              // bytes
  std::string file;               // for messages

  int64_t elements() const;
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  int64_t rows() const { return cols() == 0 ? 0 : elements() / cols(); }
};

// One encoder or decoder stack's settings, derived as CTranslate2 does: from the stack's scalar
// variables, else the model-wide ones of older revisions, else the defaults of the spec name.
struct Ct2StackAttributes {
  int64_t num_heads = 8;
  bool pre_norm = true;
  // CTranslate2's Activation enum: 0 ReLU, 1 GELUTanh, 2 Swish, 3 GELU, 4 GELUSigmoid, 5 Tanh, 6 Sigmoid.
  int64_t activation = 0;
  float embeddings_scale = 1;      // multiplies the looked-up embeddings: sqrt(d_model) by default
  bool learned_positions = false;  // <scope>/position_encodings/encodings; else sinusoidal
};

class Ct2Model {
 public:
  // Reads folder/model.bin, config.json and the vocabularies; throws Io, Format or Unsupported.
  explicit Ct2Model(const std::filesystem::path& folder);

  uint32_t binary_version() const { return binary_version_; }
  const std::string& spec_name() const { return spec_name_; }
  uint32_t spec_revision() const { return spec_revision_; }
  // The variables as stored, and the aliases (alias -> stored name) of binary version 3 and later.
  const std::map<std::string, Ct2Variable, std::less<>>& variables() const { return variables_; }
  const std::map<std::string, std::string, std::less<>>& aliases() const { return aliases_; }

  // By stored name or alias (an alias also covers its "_scale", as in CTranslate2).
  const Ct2Variable* find(std::string_view name) const;
  // The variable, checked to exist with this shape; throws (Format) naming it otherwise.
  const Ct2Variable& require(std::string_view name, const std::vector<int64_t>& shape) const;
  // A scalar variable's value (any numeric dtype), or nothing when absent.
  std::optional<double> scalar(std::string_view name) const;
  Ct2StackAttributes stack_attributes(std::string_view scope) const;  // "encoder" or "decoder"

  // config.json (binary version 5 and later write it), or an empty object.
  const nlohmann::json& config() const { return config_; }
  // Tokens by id as CTranslate2 builds them: the file's tokens, then the unknown token
  // (config.json "unk_token", default "<unk>") appended when the file lacks it.
  const std::vector<std::string>& source_vocabulary() const { return source_vocabulary_; }
  const std::vector<std::string>& target_vocabulary() const { return target_vocabulary_; }

  // Rows [first, first + count) as f32. Float types widen exactly; int8 and int16 are dequantized
  // as q / scale with the scale from "<name>_scale" (one per row, or one for the whole variable;
  // int16 without one uses CTranslate2's fixed 1000). Throws (Unsupported) for int32.
  void read_rows_f32(const Ct2Variable& variable, int64_t first, int64_t count, float* out) const;

 private:
  void read_model_bin();
  void read_vocabularies(const std::filesystem::path& folder);

  MappedFile file_;
  uint32_t binary_version_ = 0;
  std::string spec_name_;
  uint32_t spec_revision_ = 0;
  std::map<std::string, Ct2Variable, std::less<>> variables_;
  std::map<std::string, std::string, std::less<>> aliases_;
  std::map<std::string, const Ct2Variable*, std::less<>> by_name_;  // variables, aliases, alias scales
  nlohmann::json config_ = nlohmann::json::object();
  std::vector<std::string> source_vocabulary_, target_vocabulary_;
};

}  // namespace octet::convert
