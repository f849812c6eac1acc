#include "convert/sources/pytorch.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <iterator>

#include "convert/model_plan.h"
#include "convert/sources/shard_index.h"
#include "engine/error.h"
#include "kernels/blocks.h"

namespace octet::convert {
namespace {

static_assert(std::endian::native == std::endian::little, "torch.save data is read as little-endian");

// No real tensor has a dimension or stride near this; it keeps sums of products far from overflow.
constexpr uint64_t kMaxDimension = 1ull << 40;
constexpr size_t kMaxRank = 16;
// A state dict nests three levels deep (dict -> args tuple -> size tuple); 64 is generous and
// keeps every recursive walk (and destructor chain) shallow.
constexpr int kMaxNesting = 64;
// A state dict needs about 20 pickle objects per tensor; this allows ~100k tensors while bounding
// the memory a hostile pickle of one-byte opcodes (each making an object) can claim.
constexpr uint64_t kMaxPickleObjects = 1ull << 21;

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  fail(ErrorCode::Format, path + ": " + what);
}

template <class T>
T load_le(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

// ---- The zip container -------------------------------------------------------------------------

struct ZipEntry {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

constexpr uint32_t kEndOfCentralDirectory = 0x06054b50;
constexpr uint32_t kZip64EndLocator = 0x07064b50;
constexpr uint32_t kZip64End = 0x06064b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kLocalHeader = 0x04034b50;

// Every entry of a stored (uncompressed) zip, by name, each checked to lie inside the file.
std::map<std::string, ZipEntry, std::less<>> read_zip(const MappedFile& file) {
  const std::string& path = file.path();
  const uint8_t* bytes = file.data();
  const uint64_t size = file.size();
  if (size >= 1 && bytes[0] == 0x80)
    fail(ErrorCode::Unsupported, path + " is a legacy (pre-1.6) torch.save pickle, not the zip format; "
                                        "re-save it with a current torch");
  if (size < 22) bad_file(path, "too short for a zip archive (" + std::to_string(size) + " bytes)");

  // The end record sits in the last 22 + 65535 bytes (its comment is at most 65535 long).
  uint64_t end = size - 22;
  const uint64_t lowest = size > 22 + 65535 ? size - 22 - 65535 : 0;
  while (load_le<uint32_t>(bytes + end) != kEndOfCentralDirectory) {
    if (end == lowest) bad_file(path, "no zip end of central directory record: truncated, or not a zip archive");
    --end;
  }
  const uint16_t disk = load_le<uint16_t>(bytes + end + 4);
  const uint16_t directory_disk = load_le<uint16_t>(bytes + end + 6);
  uint64_t count = load_le<uint16_t>(bytes + end + 10);
  uint64_t directory_size = load_le<uint32_t>(bytes + end + 12);
  uint64_t directory_offset = load_le<uint32_t>(bytes + end + 16);
  if (disk != 0 || directory_disk != 0) fail(ErrorCode::Unsupported, path + ": multi-part zip archives are not supported");
  if (count == 0xFFFF || directory_size == 0xFFFFFFFF || directory_offset == 0xFFFFFFFF) {
    // Zip64: the real values are in the zip64 end record, found through the locator just before.
    if (end < 20 || load_le<uint32_t>(bytes + end - 20) != kZip64EndLocator)
      bad_file(path, "zip64 sizes are flagged but the zip64 end locator is missing");
    const uint64_t zip64_end = load_le<uint64_t>(bytes + end - 20 + 8);
    if (zip64_end > end - 20 || end - 20 - zip64_end < 56 || load_le<uint32_t>(bytes + zip64_end) != kZip64End)
      bad_file(path, "the zip64 end record is missing or misplaced");
    count = load_le<uint64_t>(bytes + zip64_end + 32);
    directory_size = load_le<uint64_t>(bytes + zip64_end + 40);
    directory_offset = load_le<uint64_t>(bytes + zip64_end + 48);
  }
  if (directory_offset > end || directory_size > end - directory_offset)
    bad_file(path, "the zip central directory lies outside the file");

  std::map<std::string, ZipEntry, std::less<>> entries;
  uint64_t at = directory_offset;
  const uint64_t directory_end = directory_offset + directory_size;
  for (uint64_t i = 0; i < count; ++i) {  // each step checks its bytes, so a huge count just fails
    if (directory_end - at < 46 || load_le<uint32_t>(bytes + at) != kCentralHeader)
      bad_file(path, "zip central directory entry " + std::to_string(i) + " is truncated or corrupt");
    const uint16_t flags = load_le<uint16_t>(bytes + at + 8);
    const uint16_t method = load_le<uint16_t>(bytes + at + 10);
    uint64_t stored_size = load_le<uint32_t>(bytes + at + 20);
    uint64_t plain_size = load_le<uint32_t>(bytes + at + 24);
    const uint16_t name_length = load_le<uint16_t>(bytes + at + 28);
    const uint16_t extra_length = load_le<uint16_t>(bytes + at + 30);
    const uint16_t comment_length = load_le<uint16_t>(bytes + at + 32);
    uint64_t local_offset = load_le<uint32_t>(bytes + at + 42);
    if (directory_end - at - 46 < uint64_t{name_length} + extra_length + comment_length)
      bad_file(path, "zip central directory entry " + std::to_string(i) + " runs past the directory");
    const std::string name(reinterpret_cast<const char*>(bytes + at + 46), name_length);

    // Zip64 extended information: 8-byte values for exactly the fields saturated above, in order.
    const uint8_t* extra = bytes + at + 46 + name_length;
    for (uint32_t e = 0; e + 4 <= extra_length;) {
      const uint16_t id = load_le<uint16_t>(extra + e);
      const uint16_t length = load_le<uint16_t>(extra + e + 2);
      if (length > extra_length - e - 4) bad_file(path, "zip entry \"" + name + "\" has a corrupt extra field");
      if (id == 0x0001) {
        uint32_t field = e + 4;
        for (uint64_t* value : {&plain_size, &stored_size, &local_offset}) {
          if (*value != 0xFFFFFFFF) continue;
          if (field + 8 > e + 4 + length) bad_file(path, "zip entry \"" + name + "\" has a short zip64 extra field");
          *value = load_le<uint64_t>(extra + field);
          field += 8;
        }
      }
      e += 4 + length;
    }
    at += 46 + uint64_t{name_length} + extra_length + comment_length;

    if (flags & 1) fail(ErrorCode::Unsupported, path + ": zip entry \"" + name + "\" is encrypted");
    if (method != 0)
      fail(ErrorCode::Unsupported, path + ": zip entry \"" + name + "\" is compressed (method " + std::to_string(method) +
                                       "); torch.save stores entries uncompressed, re-save the checkpoint with torch");
    if (stored_size != plain_size)
      bad_file(path, "zip entry \"" + name + "\" is stored but its sizes differ");
    // The data follows the local header, whose extra field (torch pads storages to 64 bytes with
    // it) may differ from the central one.
    if (local_offset > directory_offset || directory_offset - local_offset < 30 ||
        load_le<uint32_t>(bytes + local_offset) != kLocalHeader)
      bad_file(path, "zip entry \"" + name + "\" has no valid local header");
    const uint16_t local_name_length = load_le<uint16_t>(bytes + local_offset + 26);
    const uint16_t local_extra_length = load_le<uint16_t>(bytes + local_offset + 28);
    const uint64_t data_offset = local_offset + 30 + local_name_length + local_extra_length;
    if (data_offset > directory_offset || plain_size > directory_offset - data_offset)
      bad_file(path, "zip entry \"" + name + "\" (" + std::to_string(plain_size) + " bytes) runs past its space in the file");
    if (local_name_length != name_length || std::memcmp(bytes + local_offset + 30, name.data(), name_length) != 0)
      bad_file(path, "zip entry \"" + name + "\" has a local header naming another file");
    if (!entries.emplace(name, ZipEntry{bytes + data_offset, plain_size}).second)
      bad_file(path, "zip entry \"" + name + "\" appears twice");
  }
  return entries;
}

// ---- The restricted unpickler ------------------------------------------------------------------

enum class Kind { None, Bool, Int, Float, String, Tuple, List, Dict, Callable, StorageType, Storage, Tensor };
enum class Callable { OrderedDict, RebuildTensor, RebuildParameter };

struct StorageType {
  const char* name;   // after "torch."
  const char* dtype;  // safetensors spelling
  int element_size;
};
// torch.save names a storage by its legacy typed class. Only float ones convert; the integer ones
// (e.g. position_ids buffers) are listed so a checkpoint holding them still reads.
constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", "F32", 4}, {"HalfStorage", "F16", 2},  {"BFloat16Storage", "BF16", 2},
    {"DoubleStorage", "F64", 8}, {"LongStorage", "I64", 8}, {"IntStorage", "I32", 4},
    {"ShortStorage", "I16", 2},  {"CharStorage", "I8", 1},  {"ByteStorage", "U8", 1},
    {"BoolStorage", "BOOL", 1}};

struct Object;
using Value = std::shared_ptr<Object>;

struct Object {
  Kind kind = Kind::None;
  int64_t integer = 0;       // Bool, Int; the Callable; the index of a StorageType, Storage or Tensor
  double number = 0;         // Float
  std::string text;          // String
  std::vector<Value> items;  // Tuple, List; Dict as key, value, key, value, ...
  int depth = 0;             // containers: 1 + the deepest item
  // Set once inside a container: from then on it may not change, so depths stay exact and no
  // container can come to hold itself.
  bool nested = false;
};

struct StorageRecord {
  std::string key;
  int type = 0;  // index into kStorageTypes
  const uint8_t* data = nullptr;
  uint64_t elements = 0;
};

struct TensorRecord {
  int storage = 0;  // index of its StorageRecord
  uint64_t offset = 0;
  std::vector<int64_t> shape, strides;
};

std::string kind_name(Kind kind) {
  static const char* const kNames[] = {"None",   "bool",     "int",          "float",   "str",   "tuple",
                                       "list",   "dict",     "callable",     "storage type", "storage", "tensor"};
  return kNames[static_cast<int>(kind)];
}

class Unpickler {
 public:
  Unpickler(const std::string& path, std::string_view prefix, const std::map<std::string, ZipEntry, std::less<>>& zip,
            const ZipEntry& pickle)
      : path_(path), prefix_(prefix), zip_(zip), begin_(pickle.data), end_(pickle.data + pickle.size), at_(begin_) {}

  // Runs data.pkl to its STOP and returns the one object it leaves.
  Value run() {
    while (true) {
      if (at_ == end_) bad("data.pkl ends without a STOP opcode");
      opcode_at_ = at_ - begin_;
      const uint8_t opcode = *at_++;
      switch (opcode) {
        case 0x80: {  // PROTO
          const uint8_t version = take_u8();
          if (version > 5) bad("pickle protocol " + std::to_string(version) + " is unknown");
          break;
        }
        case 0x95: take(8); break;  // FRAME: only a read-ahead hint; the data is inline anyway
        case '}': push(make(Kind::Dict)); break;
        case ']': push(make(Kind::List)); break;
        case ')': push(make(Kind::Tuple)); break;
        case '(':
          count_object();
          marks_.push_back(stack_.size());
          break;
        case 0x85: push(tuple(pop_n(1))); break;  // TUPLE1
        case 0x86: push(tuple(pop_n(2))); break;  // TUPLE2
        case 0x87: push(tuple(pop_n(3))); break;  // TUPLE3
        case 't': push(tuple(pop_mark())); break;
        case 's': add_to(Kind::Dict, pop_n(2)); break;    // SETITEM
        case 'u': add_to(Kind::Dict, pop_mark()); break;  // SETITEMS
        case 'a': add_to(Kind::List, pop_n(1)); break;    // APPEND
        case 'e': add_to(Kind::List, pop_mark()); break;  // APPENDS
        case 'J': push(integer(static_cast<int32_t>(load_le<uint32_t>(take(4))))); break;  // BININT
        case 'K': push(integer(take_u8())); break;                                         // BININT1
        case 'M': push(integer(load_le<uint16_t>(take(2)))); break;                        // BININT2
        case 0x8a: push(integer(take_long(take_u8()))); break;                             // LONG1
        case 'X': push(string(load_le<uint32_t>(take(4)))); break;                         // BINUNICODE
        case 0x8c: push(string(take_u8())); break;                                         // SHORT_BINUNICODE
        case 'G': {  // BINFLOAT: big-endian
          Value value = make(Kind::Float);
          value->number = std::bit_cast<double>(__builtin_bswap64(load_le<uint64_t>(take(8))));
          push(value);
          break;
        }
        case 0x88: push(boolean(true)); break;   // NEWTRUE
        case 0x89: push(boolean(false)); break;  // NEWFALSE
        case 'N': push(make(Kind::None)); break;
        case 'Q': push(persistent_load(pop())); break;  // BINPERSID
        case 'h': push(memo_get(take_u8())); break;     // BINGET
        case 'j': push(memo_get(load_le<uint32_t>(take(4)))); break;  // LONG_BINGET
        case 'q': memo_put(take_u8()); break;                         // BINPUT
        case 'r': memo_put(load_le<uint32_t>(take(4))); break;        // LONG_BINPUT
        case 0x94: memo_put(memo_.size()); break;                     // MEMOIZE
        case 'c': {  // GLOBAL "module\nname\n"
          const std::string module = take_line();
          push(global(module, take_line()));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          const Value name = pop(), module = pop();
          if (module->kind != Kind::String || name->kind != Kind::String) bad("STACK_GLOBAL needs two strings");
          push(global(module->text, name->text));
          break;
        }
        case 'R': {  // REDUCE
          const Value args = pop(), callable = pop();
          push(reduce(callable, args));
          break;
        }
        case 'b': {  // BUILD: an OrderedDict's instance state (a state dict's _metadata), ignored
          const Value state = pop();
          if (top()->kind != Kind::Dict) bad("BUILD on a " + kind_name(top()->kind) + "; only dicts are expected");
          if (state->kind != Kind::Dict && state->kind != Kind::None && state->kind != Kind::Tuple)
            bad("BUILD with a " + kind_name(state->kind) + " state");
          break;
        }
        case '.': {  // STOP
          if (stack_.size() != 1 || !marks_.empty()) bad("STOP leaves " + std::to_string(stack_.size()) + " objects on the stack");
          return stack_.back();
        }
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", opcode);
          bad(std::string("pickle opcode ") + hex + " is not one torch.save writes for a state dict");
        }
      }
    }
  }

  const std::vector<StorageRecord>& storages() const { return storages_; }
  const std::vector<TensorRecord>& tensors() const { return tensors_; }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    bad_file(path_, "data.pkl at byte " + std::to_string(opcode_at_) + ": " + what);
  }

  const uint8_t* take(uint64_t n) {
    if (static_cast<uint64_t>(end_ - at_) < n) bad("truncated: an operand runs past the end of data.pkl");
    const uint8_t* p = at_;
    at_ += n;
    return p;
  }
  uint8_t take_u8() { return *take(1); }

  // LONG1's little-endian two's complement integer of n bytes; torch's values fit in 64 bits.
  int64_t take_long(uint8_t n) {
    if (n > 8) bad("an integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
    const uint8_t* p = take(n);
    uint64_t value = 0;
    for (int i = 0; i < n; ++i) value |= uint64_t{p[i]} << (8 * i);
    if (n > 0 && n < 8 && (p[n - 1] & 0x80)) value |= ~uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<int64_t>(value);
  }

  std::string take_line() {
    const uint8_t* newline = static_cast<const uint8_t*>(std::memchr(at_, '\n', std::min<size_t>(end_ - at_, 256)));
    if (newline == nullptr) bad("GLOBAL without a short newline-terminated name");
    std::string line(reinterpret_cast<const char*>(at_), newline - at_);
    at_ = newline + 1;
    return line;
  }

  // Objects, marks, memo entries and stack slots all grow by one per opcode at most: counting
  // them together bounds what a pickle can make this allocate.
  void count_object() {
    if (++objects_ > kMaxPickleObjects) bad("more than " + std::to_string(kMaxPickleObjects) + " objects");
  }
  Value make(Kind kind) {
    count_object();
    Value value = std::make_shared<Object>();
    value->kind = kind;
    return value;
  }
  Value integer(int64_t n) {
    Value value = make(Kind::Int);
    value->integer = n;
    return value;
  }
  Value boolean(bool b) {
    Value value = make(Kind::Bool);
    value->integer = b;
    return value;
  }
  Value string(uint64_t length) {
    Value value = make(Kind::String);
    const uint8_t* p = take(length);
    value->text.assign(reinterpret_cast<const char*>(p), length);
    return value;
  }

  void push(Value value) {
    if (stack_.size() >= kMaxPickleObjects) bad("the stack grows past " + std::to_string(kMaxPickleObjects) + " objects");
    stack_.push_back(std::move(value));
  }
  Value pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) bad("stack underflow");
    Value value = std::move(stack_.back());
    stack_.pop_back();
    return value;
  }
  const Value& top() const {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) bad("stack underflow");
    return stack_.back();
  }
  std::vector<Value> pop_n(size_t n) {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() - floor < n) bad("stack underflow");
    std::vector<Value> items(std::make_move_iterator(stack_.end() - n), std::make_move_iterator(stack_.end()));
    stack_.resize(stack_.size() - n);
    return items;
  }
  std::vector<Value> pop_mark() {
    if (marks_.empty()) bad("no MARK to pop to");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value> items(std::make_move_iterator(stack_.begin() + mark), std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }

  // Puts items into container, freezing each item that is itself a container.
  void insert(Object& container, std::vector<Value>&& items) {
    for (Value& item : items) {
      if (item.get() == &container) bad("a " + kind_name(container.kind) + " put inside itself");
      item->nested = true;
      container.depth = std::max(container.depth, item->depth + 1);
      if (container.depth > kMaxNesting) bad("objects nest deeper than " + std::to_string(kMaxNesting) + " levels");
      container.items.push_back(std::move(item));
    }
  }
  Value tuple(std::vector<Value>&& items) {
    Value value = make(Kind::Tuple);
    insert(*value, std::move(items));
    return value;
  }
  // SETITEM(S) and APPEND(S): the container is the object below the items just popped.
  void add_to(Kind kind, std::vector<Value>&& items) {
    const Value& container = top();
    if (container->kind != kind)
      bad("adding items to a " + kind_name(container->kind) + " where a " + kind_name(kind) + " is expected");
    if (container->nested) bad("changing a " + kind_name(kind) + " after it was put inside another object");
    if (kind == Kind::Dict && items.size() % 2 != 0) bad("SETITEMS with an odd number of objects");
    insert(*container, std::move(items));
  }

  Value memo_get(uint64_t index) {
    const auto found = memo_.find(index);
    if (found == memo_.end()) bad("memo index " + std::to_string(index) + " was never stored");
    return found->second;
  }
  void memo_put(uint64_t index) {
    const Value& value = top();
    if (memo_.count(index) == 0) count_object();
    memo_[index] = value;
  }

  Value global(const std::string& module, const std::string& name) {
    Value value = make(Kind::Callable);
    if (module == "collections" && name == "OrderedDict") {
      value->integer = static_cast<int>(Callable::OrderedDict);
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      value->integer = static_cast<int>(Callable::RebuildTensor);
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      value->integer = static_cast<int>(Callable::RebuildParameter);
    } else if (module == "torch" && name.ends_with("Storage")) {
      value->kind = Kind::StorageType;
      value->integer = -1;
      for (size_t i = 0; i < std::size(kStorageTypes); ++i)
        if (name == kStorageTypes[i].name) value->integer = static_cast<int64_t>(i);
      if (value->integer < 0)
        fail(ErrorCode::Unsupported, path_ + ": tensor storage type torch." + name +
                                         " is not supported (float32, float16, bfloat16 and integer storages are)");
    } else {
      fail(ErrorCode::Unsupported, path_ + ": refusing to unpickle " + module + "." + name +
                                       " (data.pkl may only build tensors and state dicts)");
    }
    return value;
  }

  // ('storage', torch.XStorage, key, location, element count) -> the storage file data/<key>.
  Value persistent_load(const Value& id) {
    const auto& items = id->items;
    if (id->kind != Kind::Tuple || items.size() != 5 || items[0]->kind != Kind::String || items[0]->text != "storage" ||
        items[1]->kind != Kind::StorageType || items[2]->kind != Kind::String || items[4]->kind != Kind::Int)
      bad("a persistent id that is not ('storage', type, key, location, size)");
    const int type = static_cast<int>(items[1]->integer);
    const std::string& key = items[2]->text;
    const int64_t elements = items[4]->integer;
    const auto entry = zip_.find(prefix_ + "data/" + key);
    if (entry == zip_.end()) bad("storage \"" + key + "\" has no file " + prefix_ + "data/" + key + " in the archive");
    uint64_t bytes = 0;
    if (elements < 0 || __builtin_mul_overflow(static_cast<uint64_t>(elements), kStorageTypes[type].element_size, &bytes) ||
        bytes != entry->second.size)
      bad("storage \"" + key + "\" claims " + std::to_string(elements) + " elements of torch." + kStorageTypes[type].name +
          " but its file holds " + std::to_string(entry->second.size) + " bytes");

    Value value = make(Kind::Storage);
    for (size_t i = 0; i < storages_.size(); ++i) {
      if (storages_[i].key != key) continue;
      if (storages_[i].type != type) bad("storage \"" + key + "\" is used with two different types");
      value->integer = static_cast<int64_t>(i);
      return value;
    }
    storages_.push_back({key, type, entry->second.data, static_cast<uint64_t>(elements)});
    value->integer = static_cast<int64_t>(storages_.size() - 1);
    return value;
  }

  Value reduce(const Value& callable, const Value& args) {
    if (callable->kind != Kind::Callable) bad("calling a " + kind_name(callable->kind));
    if (args->kind != Kind::Tuple) bad("call arguments are a " + kind_name(args->kind) + ", not a tuple");
    const auto& items = args->items;
    switch (static_cast<Callable>(callable->integer)) {
      case Callable::OrderedDict:
        if (!items.empty()) bad("OrderedDict called with arguments");
        return make(Kind::Dict);
      case Callable::RebuildParameter:  // (data, requires_grad, backward_hooks): the data is the tensor
        if (items.size() != 3 || items[0]->kind != Kind::Tensor) bad("_rebuild_parameter needs (tensor, bool, hooks)");
        return items[0];
      case Callable::RebuildTensor:
        return rebuild_tensor(items);
    }
    bad("unknown callable");
  }

  // A non-negative integer no larger than limit.
  uint64_t small_unsigned(const Value& value, uint64_t limit, const char* what) {
    if (value->kind != Kind::Int || value->integer < 0 || static_cast<uint64_t>(value->integer) > limit)
      bad(std::string("_rebuild_tensor_v2: invalid ") + what);
    return static_cast<uint64_t>(value->integer);
  }

  // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  Value rebuild_tensor(const std::vector<Value>& args) {
    if (args.size() != 6 && args.size() != 7) bad("_rebuild_tensor_v2 takes 6 or 7 arguments, not " + std::to_string(args.size()));
    if (args[0]->kind != Kind::Storage) bad("_rebuild_tensor_v2: the first argument is not a storage");
    if (args[2]->kind != Kind::Tuple || args[3]->kind != Kind::Tuple || args[2]->items.size() != args[3]->items.size())
      bad("_rebuild_tensor_v2: size and stride must be tuples of the same length");
    if (args[2]->items.size() > kMaxRank) bad("_rebuild_tensor_v2: rank over " + std::to_string(kMaxRank));
    if (args[4]->kind != Kind::Bool) bad("_rebuild_tensor_v2: requires_grad is not a bool");
    if (args[5]->kind != Kind::Dict || !args[5]->items.empty()) bad("_rebuild_tensor_v2: backward hooks are not supported");
    if (args.size() == 7 && args[6]->kind != Kind::None && !(args[6]->kind == Kind::Dict && args[6]->items.empty()))
      fail(ErrorCode::Unsupported, path_ + ": a tensor carries metadata (e.g. a conjugate or negative bit)");

    TensorRecord tensor;
    tensor.storage = static_cast<int>(args[0]->integer);
    const StorageRecord& storage = storages_[tensor.storage];
    tensor.offset = small_unsigned(args[1], kMaxDimension, "storage offset");
    // The last element a view reaches is offset + sum((size - 1) * stride).
    uint64_t last = tensor.offset, elements = 1;
    for (size_t d = 0; d < args[2]->items.size(); ++d) {
      const uint64_t size = small_unsigned(args[2]->items[d], kMaxDimension, "size");
      const uint64_t stride = small_unsigned(args[3]->items[d], kMaxDimension, "stride");
      uint64_t reach = 0;
      if (__builtin_mul_overflow(elements, size, &elements) ||
          (size > 0 && (__builtin_mul_overflow(size - 1, stride, &reach) || __builtin_add_overflow(last, reach, &last))))
        bad("_rebuild_tensor_v2: the size overflows");
      tensor.shape.push_back(static_cast<int64_t>(size));
      tensor.strides.push_back(static_cast<int64_t>(stride));
    }
    if (elements == 0 ? tensor.offset > storage.elements : last >= storage.elements)
      bad("a tensor of shape " + shape_string(tensor.shape) + " at offset " + std::to_string(tensor.offset) +
          " reaches past its storage \"" + storage.key + "\" of " + std::to_string(storage.elements) + " elements");
    tensors_.push_back(std::move(tensor));
    Value value = make(Kind::Tensor);
    value->integer = static_cast<int64_t>(tensors_.size() - 1);
    return value;
  }

  const std::string& path_;
  const std::string prefix_;
  const std::map<std::string, ZipEntry, std::less<>>& zip_;
  const uint8_t* const begin_;
  const uint8_t* const end_;
  const uint8_t* at_;
  uint64_t opcode_at_ = 0;
  uint64_t objects_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, Value> memo_;  // a map: a hostile index must not size an array
  std::vector<StorageRecord> storages_;
  std::vector<TensorRecord> tensors_;
};

}  // namespace

int64_t PytorchTensor::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // bounded: validated against the storage when read
  return n;
}

bool PytorchTensor::contiguous() const {
  int64_t expected = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] != 1 && strides[d] != expected) return elements() == 0;
    expected *= shape[d];
  }
  return true;
}

PytorchFile::PytorchFile(const std::string& path) : file_(path) {
  const auto zip = read_zip(file_);

  // torch.save puts everything under one folder (the file's stem, or "archive").
  std::string prefix;
  const ZipEntry* pickle = nullptr;
  for (const auto& [name, entry] : zip) {
    const size_t slash = name.find('/');
    if (slash == std::string::npos || name.compare(slash, std::string::npos, "/data.pkl") != 0) continue;
    if (pickle != nullptr) bad_file(path, "the archive holds two data.pkl files");
    prefix = name.substr(0, slash + 1);
    pickle = &entry;
  }
  if (pickle == nullptr) bad_file(path, "the zip archive has no <folder>/data.pkl: not a torch.save checkpoint");
  const auto byteorder = zip.find(prefix + "byteorder");
  if (byteorder != zip.end() &&
      std::string_view(reinterpret_cast<const char*>(byteorder->second.data), byteorder->second.size) != "little")
    fail(ErrorCode::Unsupported, path + ": the checkpoint was saved big-endian");

  Unpickler unpickler(path, prefix, zip, *pickle);
  const Value root = unpickler.run();
  if (root->kind != Kind::Dict)
    fail(ErrorCode::Unsupported, path + ": data.pkl holds a " + kind_name(root->kind) + ", not a state dict");
  for (size_t i = 0; i < root->items.size(); i += 2) {
    const Value& key = root->items[i];
    const Value& value = root->items[i + 1];
    if (key->kind != Kind::String) bad_file(path, "a state dict key is a " + kind_name(key->kind) + ", not a string");
    if (value->kind != Kind::Tensor)
      fail(ErrorCode::Unsupported, path + ": state dict entry \"" + key->text + "\" is a " + kind_name(value->kind) +
                                       ", not a tensor (only flat state dicts are supported)");
    const TensorRecord& record = unpickler.tensors()[value->integer];
    const StorageRecord& storage = unpickler.storages()[record.storage];
    const StorageType& type = kStorageTypes[storage.type];
    PytorchTensor tensor;
    tensor.name = key->text;
    tensor.dtype = type.dtype;
    tensor.shape = record.shape;
    tensor.strides = record.strides;
    tensor.data = storage.data + record.offset * type.element_size;
    tensor.storage = storage.key;
    tensor.file = path;
    if (!tensors_.emplace(key->text, std::move(tensor)).second)
      bad_file(path, "state dict key \"" + key->text + "\" appears twice");
  }
}

PytorchCheckpoint::PytorchCheckpoint(const std::filesystem::path& folder) : folder_(folder.string()) {
  const auto single_path = folder / "pytorch_model.bin";
  const auto index_path = folder / "pytorch_model.bin.index.json";
  if (std::filesystem::exists(single_path)) {
    files_.push_back(std::make_unique<PytorchFile>(single_path.string()));
    for (const auto& [name, tensor] : files_.back()->tensors()) by_name_.emplace(name, &tensor);
  } else if (std::filesystem::exists(index_path)) {
    open_shards(index_path, files_, by_name_);
  } else {
    fail(ErrorCode::Io, folder.string() + " has neither pytorch_model.bin nor pytorch_model.bin.index.json");
  }
}

const PytorchTensor* PytorchCheckpoint::find(std::string_view name) const {
  const auto found = by_name_.find(name);
  return found == by_name_.end() ? nullptr : found->second;
}

const PytorchTensor& PytorchCheckpoint::require(std::string_view name, const std::vector<int64_t>& shape) const {
  return require_tensor(find(name), folder_, name, shape);
}

void read_rows_f32(const PytorchTensor& tensor, int64_t first, int64_t count, float* out) {
  const int64_t cols = tensor.cols();
  if (first < 0 || count < 0 || first + count > tensor.rows())
    fail(ErrorCode::Internal, "rows out of range reading " + tensor.name);
  const bool is_f32 = tensor.dtype == "F32", is_bf16 = tensor.dtype == "BF16";
  if (!is_f32 && !is_bf16 && tensor.dtype != "F16")
    fail(ErrorCode::Unsupported, tensor.file + ": tensor \"" + tensor.name + "\" has dtype " + tensor.dtype +
                                     "; only F32, F16 and BF16 can be converted");
  const size_t element_size = is_f32 ? 4 : 2;
  const auto load = [&](int64_t index) {  // index in elements from data; the file need not be aligned
    const uint8_t* p = tensor.data + static_cast<size_t>(index) * element_size;
    if (is_f32) return load_le<float>(p);
    const uint16_t h = load_le<uint16_t>(p);
    return is_bf16 ? bf16_to_fp32(h) : fp16_to_fp32(h);
  };
  if (tensor.contiguous()) {
    const int64_t start = first * cols;
    if (is_f32) {
      std::memcpy(out, tensor.data + static_cast<size_t>(start) * 4, static_cast<size_t>(count * cols) * 4);
    } else {
      for (int64_t i = 0; i < count * cols; ++i) out[i] = load(start + i);
    }
    return;
  }
  // A view: find each row's first element from its index over the leading dimensions.
  const size_t rank = tensor.shape.size();
  const int64_t col_stride = tensor.strides[rank - 1];  // rank 0 is always contiguous
  for (int64_t row = first; row < first + count; ++row) {
    int64_t offset = 0;
    for (int64_t rest = row, d = static_cast<int64_t>(rank) - 2; d >= 0; --d) {
      offset += (rest % tensor.shape[d]) * tensor.strides[d];
      rest /= tensor.shape[d];
    }
    for (int64_t c = 0; c < cols; ++c) *out++ = load(offset + c * col_stride);
  }
}

}  // namespace octet::convert
