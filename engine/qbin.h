// The .qbin file: one self-contained little-endian file holding typed metadata, the embedded
// tokenizer and every tensor, aligned so the runtime maps it with zero copies.
// docs/qbin.md is the specification; this is its one implementation, shared by the converter
// (Writer) and the runtime (File).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kernels/blocks.h"

namespace octet::qbin {

constexpr char kMagic[8] = {'O', 'C', 'T', 'E', 'T', 'Q', 'B', '1'};
constexpr uint32_t kVersion = 2;
constexpr uint64_t kAlignment = 64;  // every tensor's data starts at a multiple of this
constexpr int kMaxDims = 4;

using Bytes = std::vector<uint8_t>;
// Metadata value types. The index of each alternative is its type tag in the file: never reorder.
using Value = std::variant<uint32_t, int32_t, float, uint64_t, bool, std::string, Bytes,
                           std::vector<int32_t>, std::vector<float>, std::vector<std::string>>;

// Typed key/value metadata. Getters throw octet::Error (Format) naming the key when it is
// missing or of another type; the find_* forms return nullopt/nullptr when missing.
class Metadata {
 public:
  void set(const std::string& key, Value value) { values_[key] = std::move(value); }
  bool has(std::string_view key) const { return values_.find(key) != values_.end(); }
  const Value* find(std::string_view key) const;
  const std::map<std::string, Value, std::less<>>& all() const { return values_; }

  uint32_t u32(std::string_view key) const;
  int32_t i32(std::string_view key) const;
  float f32(std::string_view key) const;
  uint64_t u64(std::string_view key) const;
  bool boolean(std::string_view key) const;
  const std::string& str(std::string_view key) const;
  const Bytes& bytes(std::string_view key) const;
  const std::vector<int32_t>& i32_array(std::string_view key) const;
  const std::vector<float>& f32_array(std::string_view key) const;
  const std::vector<std::string>& str_array(std::string_view key) const;

  // With a default when missing (still an error when present with another type).
  uint32_t u32_or(std::string_view key, uint32_t fallback) const;
  int32_t i32_or(std::string_view key, int32_t fallback) const;
  float f32_or(std::string_view key, float fallback) const;
  bool boolean_or(std::string_view key, bool fallback) const;
  std::string str_or(std::string_view key, std::string fallback) const;

 private:
  std::map<std::string, Value, std::less<>> values_;
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Layout layout = Layout::Rows;  // Packed: a Q8_0/Q4_0 matrix interleaved for the kernels
  std::vector<int64_t> shape;  // the last dimension is contiguous (a row)
  uint64_t offset = 0;         // from the start of the data section
  uint64_t size = 0;           // bytes
  uint64_t checksum = 0;       // checksum64 of the tensor's bytes

  int64_t elements() const;
  int64_t rows() const;  // product of all but the last dimension
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
};

// Bytes a tensor of this type, shape and layout occupies; throws (Format) if the shape is invalid
// for them (non-positive dims, a row not a multiple of the block size, an overflowing size, or a
// packed tensor that is not a Q8_0/Q4_0 matrix).
uint64_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape, Layout layout = Layout::Rows);

// Fast non-cryptographic 64-bit checksum, XXH3-64 with seed 0 (detects corruption, not tampering).
uint64_t checksum64(const void* data, size_t size);

// Writes a file in one pass: the caller declares every tensor up front, then streams their data
// in the declared order. finish() seals the file (checksums); a Writer destroyed before finish()
// removes its partial file.
class Writer {
 public:
  struct Declared {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    Layout layout = Layout::Rows;
  };
  Writer(const std::string& path, const Metadata& metadata, const std::vector<Declared>& tensors);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Data for the next declared tensor, exactly tensor_bytes(dtype, shape, layout) bytes.
  void write_next(const void* data, size_t bytes);
  void finish();
  uint64_t bytes_written() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A validated, memory-mapped .qbin file. Opening checks the magic, version, every size and
// offset against the file's length and the header and table checksums; with verify_data it also
// checks each tensor's checksum. Any problem throws octet::Error with a message saying what is
// wrong; nothing is allocated in proportion to a size read from the file before that size has
// been checked against the file's length.
class File {
 public:
  static std::shared_ptr<const File> open(const std::string& path, bool verify_data = true);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const Metadata& metadata() const { return metadata_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;
  // The tensor, checked to exist and to have this shape; throws (Format) naming it otherwise.
  const TensorInfo& require(std::string_view name, const std::vector<int64_t>& shape) const;
  const void* data(const TensorInfo& t) const { return base_ + data_offset_ + t.offset; }
  uint64_t file_size() const { return size_; }

 private:
  File() = default;
  Metadata metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;
};

}  // namespace octet::qbin
