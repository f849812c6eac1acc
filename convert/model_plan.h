// What a source (one checkpoint format, one architecture family) hands the converter: the
// metadata to write and every tensor under its Octet name, each readable as f32 a block of rows
// at a time, so a tensor never has to exist in f32 in full.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/error.h"
#include "engine/qbin.h"

namespace octet::convert {

// Decides the stored type: matrices are quantized, vectors (norms, biases) always stay f32.
enum class TensorKind { TokenEmbedding, Output, Matrix, Vector };

// Reads rows [first, first + count) as f32 into out (count x row-length floats).
using RowReader = std::function<void(int64_t first, int64_t count, float* out)>;

struct PlannedTensor {
  std::string name;            // Octet name, e.g. "layers.0.attn_q.weight"
  std::vector<int64_t> shape;  // [out][in] for matrices, [n] for vectors
  TensorKind kind = TensorKind::Matrix;
  RowReader read_rows;
};

struct ModelPlan {
  // Everything but general.quantization and general.converter, which convert() adds.
  qbin::Metadata metadata;
  std::vector<PlannedTensor> tensors;
};

// "[4096, 11008]", for messages.
inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// A checkpoint's require(name, shape): `tensor` is what its find(name) gave, `checkpoint` names the
// checkpoint in the message when that is null. Tensor has the file, name and shape of a tensor
// in a checkpoint (SafetensorsTensor, PytorchTensor).
template <class Tensor>
const Tensor& require_tensor(const Tensor* tensor, const std::string& checkpoint, std::string_view name,
                             const std::vector<int64_t>& shape) {
  if (tensor == nullptr) fail(ErrorCode::Format, checkpoint + ": the checkpoint has no tensor \"" + std::string(name) + "\"");
  if (tensor->shape != shape)
    fail(ErrorCode::Format, tensor->file + ": tensor \"" + tensor->name + "\" has shape " + shape_string(tensor->shape) +
                                ", the config implies " + shape_string(shape));
  return *tensor;
}

}  // namespace octet::convert
