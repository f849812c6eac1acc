// What the model families share when loading a .qbin: hyper-parameters checked against their
// bounds, and weights as views into the mapped file, each checked for its exact shape and type.
// `family` ("llama", "encdec") begins every message; the errors are Format unless said otherwise.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>
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

// How a family uses a matrix: multiplied (ops::matmul), looked up row by row (ops::embedding),
// or both (a token embedding that is also the tied output head).
enum class WeightUse { Multiplied, LookedUp, Both };

// The matrix `name`, [rows][cols], in any stored type the matmul kernels take (else Unsupported).
// A matrix that is multiplied is repacked for the kernels when the active backend gains from it
// (kernels::packing_pays), and the mapped pages of its packed rows are released: matmul and
// embedding read the packed copy, so the process holds about one copy of the weights.
inline ops::Matrix weight_matrix(const qbin::File& file, const std::string& name, int64_t rows, int64_t cols,
                                 const std::string& family, WeightUse use = WeightUse::Multiplied) {
  const qbin::TensorInfo& t = file.require(name, {rows, cols});
  switch (t.dtype) {
    case DType::F32: case DType::F16: case DType::Q8_0: case DType::Q4_0: case DType::Q4_1: {
      ops::Matrix m{t.dtype, file.data(t), rows, cols, nullptr};
      if (use != WeightUse::LookedUp && kernels::packing_pays(t.dtype) && rows >= kernels::kPackRows) {
        std::shared_ptr<kernels::PackedWeights> packed;
        try {
          packed = std::make_shared<kernels::PackedWeights>(kernels::allocate_packed(t.dtype, rows, cols));
        } catch (const std::bad_alloc&) {
          fail(ErrorCode::OutOfMemory, family + ": cannot allocate the packed copy of " + name);
        }
        // In slices of about 16 MiB, each released once packed: the process holds the file plus one
        // slice at most, not two copies of the largest matrix.
        const uint64_t group_bytes = kernels::kPackRows * kernels::row_bytes(t.dtype, cols);
        const int64_t step = std::max<int64_t>(1, (int64_t)((uint64_t{16} << 20) / group_bytes));
        const auto* base = static_cast<const uint8_t*>(m.data);
        for (int64_t g0 = 0; g0 < packed->groups; g0 += step) {
          const int64_t g1 = std::min(packed->groups, g0 + step);
          kernels::pack_groups(*packed, m.data, g0, g1);
          file.release(base + g0 * group_bytes, (g1 - g0) * group_bytes);
        }
        m.packed = std::move(packed);
      }
      return m;
    }
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
