// Reader for Hugging Face safetensors checkpoints: one model.safetensors, or the shards that
// model.safetensors.index.json lists. Files are mapped, and each header is validated in full
// (sizes, offsets, shapes, dtypes) before any tensor is used: a hostile file gives a clean
// octet::Error (Format) naming the file and tensor, never a crash or an allocation sized by it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "convert/mapped_file.h"

namespace octet::convert {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // as the header spells it: "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapped file
  uint64_t size = 0;              // bytes
  std::string file;               // for messages

  int64_t elements() const;
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  int64_t rows() const { return cols() == 0 ? 0 : elements() / cols(); }
};

class SafetensorsFile {
 public:
  // Maps and validates one .safetensors file; throws Io or Format naming it.
  explicit SafetensorsFile(const std::string& path);
  const std::map<std::string, SafetensorsTensor, std::less<>>& tensors() const { return tensors_; }
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  std::map<std::string, SafetensorsTensor, std::less<>> tensors_;
};

// Every tensor of a checkpoint folder, across its shards.
class SafetensorsCheckpoint {
 public:
  // Uses model.safetensors.index.json when present, else model.safetensors.
  explicit SafetensorsCheckpoint(const std::filesystem::path& folder);
  const SafetensorsTensor* find(std::string_view name) const;
  // The tensor, checked to exist with this shape; throws (Format) naming it otherwise.
  const SafetensorsTensor& require(std::string_view name, const std::vector<int64_t>& shape) const;

 private:
  std::string folder_;  // for messages
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsTensor*, std::less<>> by_name_;
};

// Rows [first, first + count) of an F32, F16 or BF16 tensor, as f32 (BF16 and F16 widen exactly).
// Throws (Unsupported) for other dtypes, naming the tensor.
void read_rows_f32(const SafetensorsTensor& tensor, int64_t first, int64_t count, float* out);

}  // namespace octet::convert
