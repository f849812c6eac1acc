// A whole input file mapped read-only. Checkpoints are read in place: nothing is copied until a
// tensor is converted, and only the pages actually used are ever loaded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace octet::convert {

class MappedFile {
 public:
  // Throws octet::Error (Io) naming the file when it cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace octet::convert
