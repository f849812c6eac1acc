// Reader for PyTorch checkpoints: pytorch_model.bin, or the shards pytorch_model.bin.index.json
// lists, each as torch.save writes it since 1.6 (a zip of <prefix>/data.pkl and one
// <prefix>/data/<key> file per storage). The zip is walked by hand and data.pkl is read by a
// restricted unpickler that knows only the opcodes and the few globals a state dict needs
// (collections.OrderedDict, torch._utils._rebuild_tensor_v2 and _rebuild_parameter,
// torch.*Storage): it builds plain values and never runs anything, so a pickle naming any other
// global is refused. As with safetensors, every offset, size, stride and index is validated
// before use; a hostile file gives a clean octet::Error naming the file.
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

struct PytorchTensor {
  std::string name;
  std::string dtype;  // spelled as safetensors does: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;   // in elements, one per dimension, as torch stores them
  const uint8_t* data = nullptr;  // the element at index [0, 0, ...], inside the mapped file
  std::string storage;            // the storage's key: tensors of one file with the same key share bytes (tied weights)
  std::string file;               // for messages

  int64_t elements() const;
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  int64_t rows() const { return cols() == 0 ? 0 : elements() / cols(); }
  // Row-major without gaps: data then holds elements() values in order, as in safetensors.
  bool contiguous() const;
};

class PytorchFile {
 public:
  // Maps and validates one torch.save zip; throws Io, Format or Unsupported naming it.
  explicit PytorchFile(const std::string& path);
  const std::map<std::string, PytorchTensor, std::less<>>& tensors() const { return tensors_; }
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  std::map<std::string, PytorchTensor, std::less<>> tensors_;
};

// Every tensor of a checkpoint folder, across its shards.
class PytorchCheckpoint {
 public:
  // Uses pytorch_model.bin when present, else pytorch_model.bin.index.json and its shards.
  explicit PytorchCheckpoint(const std::filesystem::path& folder);
  const PytorchTensor* find(std::string_view name) const;
  // The tensor, checked to exist with this shape; throws (Format) naming it otherwise.
  const PytorchTensor& require(std::string_view name, const std::vector<int64_t>& shape) const;

 private:
  std::string folder_;  // for messages
  std::vector<std::unique_ptr<PytorchFile>> files_;
  std::map<std::string, const PytorchTensor*, std::less<>> by_name_;
};

// Rows [first, first + count) of an F32, F16 or BF16 tensor, as f32 (row i being the elements whose
// leading indices flatten to i), following the strides of non-contiguous views. Throws
// (Unsupported) for other dtypes, naming the tensor.
void read_rows_f32(const PytorchTensor& tensor, int64_t first, int64_t count, float* out);

}  // namespace octet::convert
