#include "convert/sources/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>

#include "convert/model_plan.h"
#include "convert/sources/shard_index.h"
#include "engine/error.h"
#include "kernels/blocks.h"

namespace octet::convert {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

using json = nlohmann::json;

// The reference implementation refuses headers over 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// No real tensor has a dimension near this; it keeps every product of dimensions far from overflow.
constexpr uint64_t kMaxDimension = 1ull << 40;

// Bytes per element of every dtype the safetensors format defines (0: not one of them).
int element_size(std::string_view dtype) {
  static const std::pair<std::string_view, int> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2},
      {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},
      {"F64", 8},  {"I64", 8}, {"U64", 8}};
  for (const auto& [name, size] : kSizes)
    if (name == dtype) return size;
  return 0;
}

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  fail(ErrorCode::Format, path + ": " + what);
}
[[noreturn]] void bad_tensor(const std::string& path, const std::string& tensor, const std::string& what) {
  fail(ErrorCode::Format, path + ": tensor \"" + tensor + "\": " + what);
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t value;
  std::memcpy(&value, p, 8);
  return value;
}

// A non-negative JSON integer no larger than limit; anything else (negative, fractional, string,
// huge) is rejected by the caller.
bool small_unsigned(const json& value, uint64_t limit, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
  } else if (value.is_number_integer()) {
    if (value.get<int64_t>() < 0) return false;
    *out = static_cast<uint64_t>(value.get<int64_t>());
  } else {
    return false;
  }
  return *out <= limit;
}

}  // namespace

int64_t SafetensorsTensor::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // bounded: validated against the file's size when read
  return n;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  const uint64_t file_size = file_.size();
  if (file_size < 8) bad_file(path, "too short for a safetensors header (" + std::to_string(file_size) + " bytes)");
  const uint64_t header_size = read_u64_le(file_.data());
  if (header_size > file_size - 8)
    bad_file(path, "header length " + std::to_string(header_size) + " runs past the end of the file (" +
                       std::to_string(file_size) + " bytes)");
  if (header_size > kMaxHeaderBytes)
    bad_file(path, "header length " + std::to_string(header_size) + " exceeds the 100 MB limit");

  const char* header_text = reinterpret_cast<const char*>(file_.data() + 8);
  const json header = json::parse(header_text, header_text + header_size, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) bad_file(path, "the header is not valid JSON");
  if (!header.is_object()) bad_file(path, "the header is not a JSON object");

  const uint8_t* data = file_.data() + 8 + header_size;
  const uint64_t data_size = file_size - 8 - header_size;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;  // free-form string map
    if (!entry.is_object()) bad_tensor(path, name, "entry is not an object");
    const auto dtype = entry.find("dtype");
    const auto shape = entry.find("shape");
    const auto offsets = entry.find("data_offsets");
    if (dtype == entry.end() || !dtype->is_string()) bad_tensor(path, name, "missing or invalid \"dtype\"");
    if (shape == entry.end() || !shape->is_array()) bad_tensor(path, name, "missing or invalid \"shape\"");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2)
      bad_tensor(path, name, "missing or invalid \"data_offsets\" (expected [begin, end])");

    SafetensorsTensor tensor;
    tensor.name = name;
    tensor.file = path;
    tensor.dtype = dtype->get<std::string>();
    const int elem_size = element_size(tensor.dtype);
    if (elem_size == 0) bad_tensor(path, name, "unknown dtype \"" + tensor.dtype + "\"");

    uint64_t elements = 1;
    for (const json& dim : *shape) {
      uint64_t d = 0;
      if (!small_unsigned(dim, kMaxDimension, &d))
        bad_tensor(path, name, "invalid dimension " + dim.dump() + " in shape " + shape->dump());
      if (__builtin_mul_overflow(elements, d, &elements))
        bad_tensor(path, name, "shape " + shape->dump() + " overflows");
      tensor.shape.push_back(static_cast<int64_t>(d));
    }
    uint64_t expected_bytes = 0;
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(elem_size), &expected_bytes))
      bad_tensor(path, name, "shape " + shape->dump() + " overflows");

    uint64_t begin = 0, end = 0;
    if (!small_unsigned((*offsets)[0], UINT64_MAX, &begin) || !small_unsigned((*offsets)[1], UINT64_MAX, &end))
      bad_tensor(path, name, "data_offsets " + offsets->dump() + " are not non-negative integers");
    if (begin > end || end > data_size)
      bad_tensor(path, name, "data_offsets " + offsets->dump() + " lie outside the data section (" +
                                 std::to_string(data_size) + " bytes)");
    if (end - begin != expected_bytes)
      bad_tensor(path, name, "data_offsets span " + std::to_string(end - begin) + " bytes but shape " +
                                 shape->dump() + " of " + tensor.dtype + " needs " + std::to_string(expected_bytes));
    tensor.data = data + begin;
    tensor.size = end - begin;
    tensors_.emplace(name, std::move(tensor));
  }

  // Tensors must not share bytes: sort by start and check each ends before the next begins.
  std::vector<const SafetensorsTensor*> by_offset;
  for (const auto& [name, tensor] : tensors_)
    if (tensor.size > 0) by_offset.push_back(&tensor);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->data + by_offset[i - 1]->size > by_offset[i]->data)
      bad_tensor(path, by_offset[i]->name, "its data overlaps tensor \"" + by_offset[i - 1]->name + "\"");
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::filesystem::path& folder) : folder_(folder.string()) {
  const auto index_path = folder / "model.safetensors.index.json";
  const auto single_path = folder / "model.safetensors";
  if (std::filesystem::exists(index_path)) {
    open_shards(index_path, files_, by_name_);
  } else if (std::filesystem::exists(single_path)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single_path.string()));
    for (const auto& [name, tensor] : files_.back()->tensors()) by_name_.emplace(name, &tensor);
  } else if (std::filesystem::exists(folder / "pytorch_model.bin") ||
             std::filesystem::exists(folder / "pytorch_model.bin.index.json")) {
    fail(ErrorCode::Unsupported, folder.string() + " holds PyTorch .bin weights; only safetensors checkpoints are supported");
  } else {
    fail(ErrorCode::Io, folder.string() + " has neither model.safetensors nor model.safetensors.index.json");
  }
}

const SafetensorsTensor* SafetensorsCheckpoint::find(std::string_view name) const {
  const auto found = by_name_.find(name);
  return found == by_name_.end() ? nullptr : found->second;
}

const SafetensorsTensor& SafetensorsCheckpoint::require(std::string_view name, const std::vector<int64_t>& shape) const {
  return require_tensor(find(name), folder_, name, shape);
}

void read_rows_f32(const SafetensorsTensor& tensor, int64_t first, int64_t count, float* out) {
  const int64_t cols = tensor.cols();
  if (first < 0 || count < 0 || first + count > tensor.rows())
    fail(ErrorCode::Internal, "rows out of range reading " + tensor.name);
  const size_t n = static_cast<size_t>(count * cols);
  const size_t start = static_cast<size_t>(first * cols);
  if (tensor.dtype == "F32") {
    std::memcpy(out, tensor.data + start * 4, n * 4);
  } else if (tensor.dtype == "F16" || tensor.dtype == "BF16") {
    const bool is_bf16 = tensor.dtype == "BF16";
    const uint8_t* src = tensor.data + start * 2;
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);  // the data section need not be 2-byte aligned
      out[i] = is_bf16 ? bf16_to_fp32(h) : fp16_to_fp32(h);
    }
  } else {
    fail(ErrorCode::Unsupported, tensor.file + ": tensor \"" + tensor.name + "\" has dtype " + tensor.dtype +
                                     "; only F32, F16 and BF16 can be converted");
  }
}

}  // namespace octet::convert
