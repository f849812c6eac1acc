#include "engine/qbin.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include <xxhash.h>

#include "engine/error.h"
#include "kernels/kernels.h"

static_assert(std::endian::native == std::endian::little, ".qbin is little-endian; so is every host we build for");

namespace octet::qbin {
namespace {

constexpr uint64_t kHeaderSize = 64;

uint64_t align_up(uint64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

const char* type_name(size_t index) {
  static const char* names[] = {"u32", "i32", "f32", "u64", "bool", "string", "bytes", "i32 array", "f32 array", "string array"};
  return index < std::size(names) ? names[index] : "?";
}

template <typename T>
const T& get_as(const Metadata& m, std::string_view key, size_t tag) {
  const Value* v = m.find(key);
  if (!v) fail(ErrorCode::Format, "metadata key '" + std::string(key) + "' is missing");
  if (v->index() != tag)
    fail(ErrorCode::Format, "metadata key '" + std::string(key) + "' is " + type_name(v->index()) + ", expected " + type_name(tag));
  return *std::get_if<T>(v);
}

template <typename T>
T get_or(const Metadata& m, std::string_view key, size_t tag, T fallback) {
  return m.has(key) ? get_as<T>(m, key, tag) : fallback;
}

// ---- serialization -------------------------------------------------------------------------

class Sink {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  void str(const std::string& s) {
    if (s.size() > UINT32_MAX) fail(ErrorCode::InvalidArgument, "string too long for .qbin");
    u32(static_cast<uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  std::vector<uint8_t>& bytes() { return buf_; }

 private:
  std::vector<uint8_t> buf_;
};

void write_value(Sink& out, const Value& value) {
  out.u32(static_cast<uint32_t>(value.index()));
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          out.u8(v ? 1 : 0);
        } else if constexpr (std::is_arithmetic_v<T>) {
          out.raw(&v, sizeof v);
        } else if constexpr (std::is_same_v<T, std::string>) {
          out.str(v);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          out.u64(v.size());
          for (const auto& s : v) out.str(s);
        } else {  // byte, i32 and f32 arrays
          out.u64(v.size());
          out.raw(v.data(), v.size() * sizeof(v[0]));
        }
      },
      value);
}

std::vector<uint8_t> serialize_metadata(const Metadata& metadata) {
  Sink out;
  out.u32(static_cast<uint32_t>(metadata.all().size()));
  for (const auto& [key, value] : metadata.all()) {
    out.str(key);
    write_value(out, value);
  }
  return std::move(out.bytes());
}

std::vector<uint8_t> serialize_table(const std::vector<TensorInfo>& tensors) {
  Sink out;
  out.u32(static_cast<uint32_t>(tensors.size()));
  for (const auto& t : tensors) {
    out.str(t.name);
    out.u32(static_cast<uint32_t>(t.dtype));
    out.u32(static_cast<uint32_t>(t.layout));
    out.u32(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) out.u64(static_cast<uint64_t>(d));
    out.u64(t.offset);
    out.u64(t.size);
    out.u64(t.checksum);
  }
  return std::move(out.bytes());
}

// Bounds-checked reading: every length is checked against the bytes left before it is used.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t size, std::string section) : p_(p), left_(size), section_(std::move(section)) {}
  uint64_t left() const { return left_; }
  void need(uint64_t n, const char* what) const {
    if (n > left_) fail(ErrorCode::Format, "truncated " + section_ + ": " + what + " runs past its end");
  }
  template <typename T>
  T scalar(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    left_ -= sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint32_t n = scalar<uint32_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    left_ -= n;
    return s;
  }
  // A count of elements each at least `min_bytes` long, checked against what is left.
  uint64_t count(uint64_t min_bytes, const char* what) {
    const uint64_t n = scalar<uint64_t>(what);
    if (n > left_ / min_bytes) fail(ErrorCode::Format, std::string("corrupt ") + section_ + ": " + what + " count " + std::to_string(n) + " exceeds the data");
    return n;
  }
  template <typename T>
  std::vector<T> array(const char* what) {
    const uint64_t n = count(sizeof(T), what);
    std::vector<T> v(n);
    std::memcpy(v.data(), p_, n * sizeof(T));
    p_ += n * sizeof(T);
    left_ -= n * sizeof(T);
    return v;
  }

 private:
  const uint8_t* p_;
  uint64_t left_;
  std::string section_;
};

Value read_value(Cursor& in, uint32_t tag, const std::string& key) {
  const char* what = "a metadata value";
  switch (tag) {
    case 0: return in.scalar<uint32_t>(what);
    case 1: return in.scalar<int32_t>(what);
    case 2: return in.scalar<float>(what);
    case 3: return in.scalar<uint64_t>(what);
    case 4: {
      const uint8_t b = in.scalar<uint8_t>(what);
      if (b > 1) fail(ErrorCode::Format, "metadata key '" + key + "': bool value " + std::to_string(b));
      return b == 1;
    }
    case 5: return in.str(what);
    case 6: return in.array<uint8_t>(what);
    case 7: return in.array<int32_t>(what);
    case 8: return in.array<float>(what);
    case 9: {
      const uint64_t n = in.count(4, what);
      std::vector<std::string> v;
      v.reserve(n);
      for (uint64_t i = 0; i < n; ++i) v.push_back(in.str(what));
      return v;
    }
  }
  fail(ErrorCode::Format, "metadata key '" + key + "' has unknown type tag " + std::to_string(tag));
}

void write_all(int fd, const void* data, size_t size, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(ErrorCode::Io, "cannot write " + path + ": " + std::strerror(errno));
    p += n;
    size -= static_cast<size_t>(n);
  }
}

}  // namespace

// ---- Metadata ----------------------------------------------------------------------------------

const Value* Metadata::find(std::string_view key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}
uint32_t Metadata::u32(std::string_view k) const { return get_as<uint32_t>(*this, k, 0); }
int32_t Metadata::i32(std::string_view k) const { return get_as<int32_t>(*this, k, 1); }
float Metadata::f32(std::string_view k) const { return get_as<float>(*this, k, 2); }
uint64_t Metadata::u64(std::string_view k) const { return get_as<uint64_t>(*this, k, 3); }
bool Metadata::boolean(std::string_view k) const { return get_as<bool>(*this, k, 4); }
const std::string& Metadata::str(std::string_view k) const { return get_as<std::string>(*this, k, 5); }
const Bytes& Metadata::bytes(std::string_view k) const { return get_as<Bytes>(*this, k, 6); }
const std::vector<int32_t>& Metadata::i32_array(std::string_view k) const { return get_as<std::vector<int32_t>>(*this, k, 7); }
const std::vector<float>& Metadata::f32_array(std::string_view k) const { return get_as<std::vector<float>>(*this, k, 8); }
const std::vector<std::string>& Metadata::str_array(std::string_view k) const {
  return get_as<std::vector<std::string>>(*this, k, 9);
}
uint32_t Metadata::u32_or(std::string_view k, uint32_t f) const { return get_or<uint32_t>(*this, k, 0, f); }
int32_t Metadata::i32_or(std::string_view k, int32_t f) const { return get_or<int32_t>(*this, k, 1, f); }
float Metadata::f32_or(std::string_view k, float f) const { return get_or<float>(*this, k, 2, f); }
bool Metadata::boolean_or(std::string_view k, bool f) const { return get_or<bool>(*this, k, 4, f); }
std::string Metadata::str_or(std::string_view k, std::string f) const { return get_or<std::string>(*this, k, 5, std::move(f)); }

// ---- tensors -----------------------------------------------------------------------------------

int64_t TensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
int64_t TensorInfo::rows() const { return shape.empty() ? 1 : elements() / shape.back(); }

uint64_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape, Layout layout) {
  if (shape.empty() || shape.size() > static_cast<size_t>(kMaxDims))
    fail(ErrorCode::Format, "a tensor must have 1 to " + std::to_string(kMaxDims) + " dimensions, not " + std::to_string(shape.size()));
  constexpr uint64_t kLimit = uint64_t{1} << 48;  // no real tensor comes near 256 TiB
  uint64_t rows = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] <= 0 || static_cast<uint64_t>(shape[i]) > kLimit)
      fail(ErrorCode::Format, "tensor dimension " + std::to_string(shape[i]) + " is out of range");
    if (i + 1 < shape.size()) {
      rows *= static_cast<uint64_t>(shape[i]);
      if (rows > kLimit) fail(ErrorCode::Format, "tensor shape is too large");
    }
  }
  const uint64_t row = kernels::row_bytes(dtype, shape.back());
  if (row == 0)
    fail(ErrorCode::Format, std::string("a row of ") + std::to_string(shape.back()) + " elements is not valid for " + kernels::dtype_name(dtype));
  if (row > kLimit / rows) fail(ErrorCode::Format, "tensor shape is too large");
  if (layout == Layout::Rows) return rows * row;
  if (shape.size() != 2 || !kernels::packable(dtype))
    fail(ErrorCode::Format, std::string("only q8_0 and q4_0 matrices can be packed, not ") + std::to_string(shape.size()) +
                                "-d " + kernels::dtype_name(dtype));
  // The packed form adds at most 64 bytes of padding per 16 rows, so it stays far from overflow.
  return kernels::packed_bytes(dtype, shape[0], shape[1]);
}

uint64_t checksum64(const void* data, size_t size) { return XXH3_64bits(data, size); }

// ---- Writer ------------------------------------------------------------------------------------

struct Writer::Impl {
  std::string path, part_path;
  int fd = -1;
  bool finished = false;
  std::vector<TensorInfo> tensors;
  std::vector<uint8_t> metadata_bytes;
  uint64_t table_offset = 0, table_size = 0, data_offset = 0;
  size_t next = 0;
  uint64_t position = 0;  // bytes written after the data offset
};

Writer::Writer(const std::string& path, const Metadata& metadata, const std::vector<Declared>& declared)
    : impl_(std::make_unique<Impl>()) {
  Impl& w = *impl_;
  w.path = path;
  w.part_path = path + ".part";
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& d : declared) {
    if (!names.insert(d.name).second) fail(ErrorCode::InvalidArgument, "tensor '" + d.name + "' declared twice");
    TensorInfo t{d.name, d.dtype, d.layout, d.shape, offset, tensor_bytes(d.dtype, d.shape, d.layout), 0};
    offset = align_up(offset + t.size);
    w.tensors.push_back(std::move(t));
  }
  w.metadata_bytes = serialize_metadata(metadata);
  w.table_offset = kHeaderSize + w.metadata_bytes.size();
  w.table_size = serialize_table(w.tensors).size();
  w.data_offset = align_up(w.table_offset + w.table_size);

  w.fd = ::open(w.part_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w.fd < 0) fail(ErrorCode::Io, "cannot create " + w.part_path + ": " + std::strerror(errno));
  // Header and table are rewritten by finish(); reserve their space now.
  const std::vector<uint8_t> zeros(w.data_offset, 0);
  write_all(w.fd, zeros.data(), zeros.size(), w.part_path);
}

Writer::~Writer() {
  if (impl_->fd >= 0) ::close(impl_->fd);
  if (!impl_->finished) ::unlink(impl_->part_path.c_str());
}

uint64_t Writer::bytes_written() const { return impl_->data_offset + impl_->position; }

void Writer::write_next(const void* data, size_t bytes) {
  Impl& w = *impl_;
  if (w.next >= w.tensors.size()) fail(ErrorCode::InvalidArgument, "more tensors written than declared");
  TensorInfo& t = w.tensors[w.next];
  if (bytes != t.size)
    fail(ErrorCode::InvalidArgument, "tensor '" + t.name + "' is " + std::to_string(t.size) + " bytes, got " + std::to_string(bytes));
  static const uint8_t kZeros[kAlignment] = {};
  write_all(w.fd, kZeros, t.offset - w.position, w.part_path);
  write_all(w.fd, data, bytes, w.part_path);
  t.checksum = checksum64(data, bytes);
  w.position = t.offset + bytes;
  ++w.next;
}

void Writer::finish() {
  Impl& w = *impl_;
  if (w.next != w.tensors.size())
    fail(ErrorCode::InvalidArgument, std::to_string(w.tensors.size() - w.next) + " declared tensors were not written");
  static const uint8_t kZeros[kAlignment] = {};
  write_all(w.fd, kZeros, align_up(w.position) - w.position, w.part_path);

  std::vector<uint8_t> region = w.metadata_bytes;  // bytes [64, data_offset)
  const std::vector<uint8_t> table = serialize_table(w.tensors);
  region.insert(region.end(), table.begin(), table.end());
  region.resize(w.data_offset - kHeaderSize, 0);

  Sink header;
  header.raw(kMagic, sizeof kMagic);
  header.u32(kVersion);
  header.u32(0);
  header.u64(kHeaderSize);
  header.u64(w.metadata_bytes.size());
  header.u64(w.table_offset);
  header.u64(w.table_size);
  header.u64(w.data_offset);
  header.u64(checksum64(region.data(), region.size()));

  if (::lseek(w.fd, 0, SEEK_SET) != 0) fail(ErrorCode::Io, "cannot seek in " + w.part_path);
  write_all(w.fd, header.bytes().data(), header.bytes().size(), w.part_path);
  write_all(w.fd, region.data(), region.size(), w.part_path);
  if (::close(w.fd) != 0) {
    w.fd = -1;
    fail(ErrorCode::Io, "cannot write " + w.part_path + ": " + std::strerror(errno));
  }
  w.fd = -1;
  if (std::rename(w.part_path.c_str(), w.path.c_str()) != 0)
    fail(ErrorCode::Io, "cannot rename " + w.part_path + " to " + w.path + ": " + std::strerror(errno));
  w.finished = true;
}

// ---- File --------------------------------------------------------------------------------------

File::~File() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

std::shared_ptr<const File> File::open(const std::string& path, bool verify_data) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ErrorCode::Io, "cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorCode::Io, path + " is not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderSize) {
    ::close(fd);
    fail(ErrorCode::Format, path + " is too short to be a .qbin file (" + std::to_string(size) + " bytes)");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) fail(ErrorCode::Io, "cannot map " + path + ": " + std::strerror(errno));

  std::shared_ptr<File> file(new File());
  file->base_ = static_cast<const uint8_t*>(map);
  file->size_ = size;
  const std::string where = path + ": ";
  try {
    Cursor header(file->base_, kHeaderSize, "header");
    if (std::memcmp(file->base_, kMagic, sizeof kMagic) != 0) fail(ErrorCode::Format, "not a .qbin file (bad magic)");
    header.scalar<uint64_t>("magic");
    const uint32_t version = header.scalar<uint32_t>("version");
    if (version != kVersion)
      fail(ErrorCode::Format, "unsupported .qbin version " + std::to_string(version) + " (this build reads version " +
                                  std::to_string(kVersion) + "; convert the model again with this octet-convert)");
    if (header.scalar<uint32_t>("reserved") != 0) fail(ErrorCode::Format, "corrupt header: reserved field is not zero");
    const uint64_t meta_offset = header.scalar<uint64_t>("metadata offset");
    const uint64_t meta_size = header.scalar<uint64_t>("metadata size");
    const uint64_t table_offset = header.scalar<uint64_t>("table offset");
    const uint64_t table_size = header.scalar<uint64_t>("table size");
    const uint64_t data_offset = header.scalar<uint64_t>("data offset");
    const uint64_t header_checksum = header.scalar<uint64_t>("checksum");
    if (meta_offset != kHeaderSize || meta_size > size - kHeaderSize || table_offset != meta_offset + meta_size ||
        table_size > size - table_offset || data_offset < table_offset + table_size || data_offset > size ||
        data_offset % kAlignment != 0)
      fail(ErrorCode::Format, "corrupt header: section offsets are inconsistent with the file size " + std::to_string(size));
    if (checksum64(file->base_ + kHeaderSize, data_offset - kHeaderSize) != header_checksum)
      fail(ErrorCode::Format, "metadata or tensor table checksum mismatch (the file is corrupt)");

    Cursor meta(file->base_ + meta_offset, meta_size, "metadata");
    const uint32_t n_keys = meta.scalar<uint32_t>("key count");
    for (uint32_t i = 0; i < n_keys; ++i) {
      std::string key = meta.str("a key");
      const uint32_t tag = meta.scalar<uint32_t>("a type tag");
      if (file->metadata_.has(key)) fail(ErrorCode::Format, "metadata key '" + key + "' appears twice");
      Value value = read_value(meta, tag, key);
      file->metadata_.set(key, std::move(value));
    }

    Cursor table(file->base_ + table_offset, table_size, "tensor table");
    const uint32_t n_tensors = table.scalar<uint32_t>("tensor count");
    const uint64_t data_size = size - data_offset;
    for (uint32_t i = 0; i < n_tensors; ++i) {
      TensorInfo t;
      t.name = table.str("a tensor name");
      const uint32_t dtype = table.scalar<uint32_t>("a dtype");
      if (!kernels::dtype_is_valid(dtype)) fail(ErrorCode::Format, "tensor '" + t.name + "' has unknown dtype " + std::to_string(dtype));
      t.dtype = static_cast<DType>(dtype);
      const uint32_t layout = table.scalar<uint32_t>("a layout");
      if (layout > static_cast<uint32_t>(Layout::Packed))
        fail(ErrorCode::Format, "tensor '" + t.name + "' has unknown layout " + std::to_string(layout));
      t.layout = static_cast<Layout>(layout);
      const uint32_t ndim = table.scalar<uint32_t>("a rank");
      if (ndim < 1 || ndim > static_cast<uint32_t>(kMaxDims))
        fail(ErrorCode::Format, "tensor '" + t.name + "' has " + std::to_string(ndim) + " dimensions");
      for (uint32_t d = 0; d < ndim; ++d) t.shape.push_back(static_cast<int64_t>(std::min<uint64_t>(table.scalar<uint64_t>("a dimension"), INT64_MAX)));
      t.offset = table.scalar<uint64_t>("an offset");
      t.size = table.scalar<uint64_t>("a size");
      t.checksum = table.scalar<uint64_t>("a checksum");
      uint64_t expected;
      try {
        expected = tensor_bytes(t.dtype, t.shape, t.layout);
      } catch (const Error& e) {
        fail(ErrorCode::Format, "tensor '" + t.name + "': " + e.what());
      }
      if (t.size != expected) fail(ErrorCode::Format, "tensor '" + t.name + "' size " + std::to_string(t.size) + " does not match its shape");
      if (t.offset % kAlignment != 0 || t.offset > data_size || t.size > data_size - t.offset)
        fail(ErrorCode::Format, "tensor '" + t.name + "' data lies outside the file (truncated?)");
      if (!file->index_.emplace(t.name, file->tensors_.size()).second)
        fail(ErrorCode::Format, "tensor '" + t.name + "' appears twice");
      file->tensors_.push_back(std::move(t));
    }
    file->data_offset_ = data_offset;

    if (verify_data) {
      const auto& tensors = file->tensors_;
      long bad = -1;
#pragma omp parallel for schedule(dynamic, 1)
      for (long i = 0; i < static_cast<long>(tensors.size()); ++i) {
        if (checksum64(file->data(tensors[i]), tensors[i].size) != tensors[i].checksum) {
#pragma omp critical
          bad = (bad < 0 || i < bad) ? i : bad;
        }
      }
      if (bad >= 0) fail(ErrorCode::Format, "tensor '" + tensors[bad].name + "' checksum mismatch (the file is corrupt)");
    }
  } catch (const Error& e) {
    throw Error(e.code(), where + e.what());
  }
  return file;
}

const TensorInfo* File::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::require(std::string_view name, const std::vector<int64_t>& shape) const {
  const TensorInfo* t = find(name);
  if (!t) fail(ErrorCode::Format, "tensor '" + std::string(name) + "' is missing");
  if (t->shape != shape) {
    auto show = [](const std::vector<int64_t>& s) {
      std::string out = "[";
      for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
      return out + "]";
    };
    fail(ErrorCode::Format, "tensor '" + std::string(name) + "' has shape " + show(t->shape) + ", expected " + show(shape));
  }
  return *t;
}

}  // namespace octet::qbin
