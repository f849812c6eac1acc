// What the model families share when loading a .qbin: hyper-parameters checked against their
// bounds, and weights as views into the mapped file, each checked for its exact shape and type.
// `family` ("llama", "encdec") begins every message; the errors are Format unless said otherwise.
#pragma once
#include <cstdint>
#include <string>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/qbin.h"
#include "kernels/kernels.h"

namespace octet {

// The metadata value `key`, which must lie in [1, max].
inline int64_t metadata_dimension(const qbin::Metadata& metadata, const std::string& key, int64_t max,
                                  const std::string& family) {
  const uint32_t value = metadata.u32(key);
  if (value == 0 || value > max)
    fail(ErrorCode::Format, family + ": " + key + " = " + std::to_string(value) + " is outside [1, " + std::to_string(max) + "]");
  return value;
}

// The matrix `name`, [rows][cols], in any stored type and layout the matmul kernels take (else
// Unsupported), viewed in place in the mapped file.
inline ops::Matrix weight_matrix(const qbin::File& file, const std::string& name, int64_t rows, int64_t cols,
                                 const std::string& family) {
  const qbin::TensorInfo& t = file.require(name, {rows, cols});
  switch (t.dtype) {
    case DType::F32: case DType::F16: case DType::Q8_0: case DType::Q4_0: case DType::Q4_1:
      return ops::Matrix{t.dtype, t.layout, file.data(t), rows, cols};
  }
  fail(ErrorCode::Unsupported, family + ": " + name + " has an unsupported type");
}

// The vector `name` of n floats (a norm or a bias), which must be stored as f32.
inline const float* weight_f32_vector(const qbin::File& file, const std::string& name, int64_t n,
                                      const std::string& family) {
  const qbin::TensorInfo& t = file.require(name, {n});
  if (t.dtype != DType::F32)
    fail(ErrorCode::Format, family + ": " + name + " is " + kernels::dtype_name(t.dtype) + ", norms and biases must be f32");
  return static_cast<const float*>(file.data(t));
}

}  // namespace octet
