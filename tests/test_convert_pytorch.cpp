// The PyTorch checkpoint reader: real torch.save files (tests/data/pytorch, made by
// tests/tools/make_pytorch_fixtures.py) read value for value, shared storages and strided views,
// the Marian fixtures checked bitwise against their safetensors twins, and hostile zips and
// pickles (written here or by the script) that must each give a clean octet::Error.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstring>
#include <set>

#include "convert/convert.h"
#include "convert/sources/pytorch.h"
#include "convert/sources/safetensors.h"
#include "engine/error.h"
#include "test_util.h"

using namespace octet;
using namespace octet::convert;
using octet::test::check_error;
using octet::test::TempDir;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = octet::test::test_data("pytorch");

std::vector<float> read_all(const PytorchTensor& tensor) {
  std::vector<float> values(static_cast<size_t>(tensor.elements()));
  read_rows_f32(tensor, 0, tensor.rows(), values.data());
  return values;
}

// The script's fixture values: element i of a ramp is i / 8 - 1.
std::vector<float> ramp(int64_t n) {
  std::vector<float> values;
  for (int64_t i = 0; i < n; ++i) values.push_back(static_cast<float>(i) / 8 - 1);
  return values;
}

// ---- Writing hostile archives ------------------------------------------------------------------

void put_u16(std::string& out, uint16_t v) { out.append(reinterpret_cast<const char*>(&v), 2); }
void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }

// A stored zip of these entries (CRCs left 0: the reader does not check them).
std::string zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string out, directory;
  for (const auto& [name, data] : entries) {
    const uint32_t offset = static_cast<uint32_t>(out.size());
    put_u32(out, 0x04034b50);
    put_u16(out, 20), put_u16(out, 0), put_u16(out, 0), put_u16(out, 0), put_u16(out, 0);
    put_u32(out, 0), put_u32(out, static_cast<uint32_t>(data.size())), put_u32(out, static_cast<uint32_t>(data.size()));
    put_u16(out, static_cast<uint16_t>(name.size())), put_u16(out, 0);
    out += name + data;
    put_u32(directory, 0x02014b50);
    put_u16(directory, 20), put_u16(directory, 20), put_u16(directory, 0), put_u16(directory, 0);
    put_u16(directory, 0), put_u16(directory, 0);
    put_u32(directory, 0), put_u32(directory, static_cast<uint32_t>(data.size())),
        put_u32(directory, static_cast<uint32_t>(data.size()));
    put_u16(directory, static_cast<uint16_t>(name.size())), put_u16(directory, 0), put_u16(directory, 0);
    put_u16(directory, 0), put_u16(directory, 0), put_u32(directory, 0), put_u32(directory, offset);
    directory += name;
  }
  const uint32_t directory_offset = static_cast<uint32_t>(out.size());
  out += directory;
  put_u32(out, 0x06054b50);
  put_u16(out, 0), put_u16(out, 0), put_u16(out, static_cast<uint16_t>(entries.size())),
      put_u16(out, static_cast<uint16_t>(entries.size()));
  put_u32(out, static_cast<uint32_t>(directory.size())), put_u32(out, directory_offset), put_u16(out, 0);
  return out;
}

// Appended piece by piece: GCC 12 misreports `"X" + std::string` here (-Wrestrict).
std::string unicode(const std::string& text) {
  std::string out = "X";
  put_u32(out, static_cast<uint32_t>(text.size()));
  return out += text;
}
std::string binint(int32_t v) {
  std::string out = "J";
  put_u32(out, static_cast<uint32_t>(v));
  return out;
}
// BININT where it fits, else LONG1 with 8 bytes.
std::string integer(int64_t v) {
  if (v == static_cast<int32_t>(v)) return binint(static_cast<int32_t>(v));
  std::string out = "\x8a\x08";
  return out.append(reinterpret_cast<const char*>(&v), 8);
}
std::string int_tuple(const std::vector<int64_t>& values) {
  std::string out = "(";
  for (int64_t v : values) out += integer(v);
  return out + "t";
}

// One entry of a state dict: a view of storage `key`, every field as given.
struct PickledTensor {
  std::string name, key;
  int64_t storage_elements = 0, offset = 0;
  std::vector<int64_t> sizes, strides;
  std::string storage_type = "FloatStorage";
};

// data.pkl of a state dict, as torch.save writes it.
std::string state_dict_pickle(const std::vector<PickledTensor>& tensors) {
  std::string out = "\x80\x02}(";
  for (const PickledTensor& t : tensors) {
    out += unicode(t.name) + "ctorch._utils\n_rebuild_tensor_v2\n((" + unicode("storage") + "ctorch\n" +
           t.storage_type + "\n" + unicode(t.key) + unicode("cpu") + integer(t.storage_elements) + "tQ" +
           integer(t.offset) + int_tuple(t.sizes) + int_tuple(t.strides) + "\x89}tR";
  }
  return out + "u.";
}

// data.pkl of {"w": a view of storage `key`}.
std::string tensor_pickle(const std::string& key, int32_t storage_elements, int32_t offset, const std::vector<int64_t>& sizes,
                          const std::vector<int64_t>& strides, const std::string& storage_type = "FloatStorage") {
  return state_dict_pickle({{"w", key, storage_elements, offset, sizes, strides, storage_type}});
}

std::string floats(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    const float v = static_cast<float>(i);
    out.append(reinterpret_cast<const char*>(&v), 4);
  }
  return out;
}

// Writes a checkpoint holding this data.pkl and storage "0" of storage_bytes; returns its path.
std::string write_checkpoint(const TempDir& dir, const std::string& pickle, const std::string& storage_bytes = floats(4)) {
  static int counter = 0;
  const fs::path path = dir.path() / ("checkpoint" + std::to_string(counter++) + ".bin");
  const std::string bytes = zip({{"archive/data.pkl", pickle}, {"archive/data/0", storage_bytes}});
  octet::test::write_bytes(path, bytes.data(), bytes.size());
  return path.string();
}

}  // namespace

TEST_CASE("f32, f16, bf16, scalars and parameters read exactly; integer buffers are listed but not converted") {
  const PytorchFile file((kFixtures / "dtypes.bin").string());
  const auto& tensors = file.tensors();
  CHECK(tensors.size() == 7);
  const std::map<std::string, std::pair<std::string, std::vector<int64_t>>> expected = {
      {"f32", {"F32", {3, 4}}}, {"f16", {"F16", {2, 5}}},     {"bf16", {"BF16", {4, 2}}}, {"vector", {"F32", {3}}},
      {"scalar", {"F32", {}}},  {"param", {"F32", {2, 2}}}, {"ids", {"I64", {4}}}};
  for (const auto& [name, dtype_shape] : expected) {
    REQUIRE_MESSAGE(tensors.count(name), name);
    const PytorchTensor& tensor = tensors.at(name);
    CHECK(tensor.dtype == dtype_shape.first);
    CHECK(tensor.shape == dtype_shape.second);
    CHECK(tensor.contiguous());
  }
  CHECK(read_all(tensors.at("f32")) == ramp(12));
  CHECK(read_all(tensors.at("f16")) == ramp(10));
  CHECK(read_all(tensors.at("bf16")) == ramp(8));
  CHECK(read_all(tensors.at("param")) == ramp(4));
  CHECK(read_all(tensors.at("vector")) == std::vector<float>{0.5f, -2.0f, 3.25f});
  CHECK(read_all(tensors.at("scalar")) == std::vector<float>{1.5f});
  // Rows from the middle.
  float row[4];
  read_rows_f32(tensors.at("f32"), 2, 1, row);
  const std::vector<float> f32 = ramp(12);
  CHECK(std::vector<float>(row, row + 4) == std::vector<float>(f32.begin() + 8, f32.end()));
  int64_t ids[4];
  std::memcpy(ids, tensors.at("ids").data, sizeof ids);
  CHECK(ids[3] == 3);
  check_error([&] { read_all(tensors.at("ids")); }, ErrorCode::Unsupported, "dtype I64");
}

TEST_CASE("tied weights share one storage; slices and transposes are views read through their strides") {
  const PytorchCheckpoint checkpoint = [] {
    TempDir dir("pytorch_folder");
    fs::copy_file(kFixtures / "shared.bin", dir.path() / "pytorch_model.bin");
    return PytorchCheckpoint(dir.path());  // the file stays mapped after its folder is gone
  }();
  const PytorchTensor& embed = checkpoint.require("embed.weight", {6, 4});
  const PytorchTensor& head = checkpoint.require("lm_head.weight", {6, 4});
  CHECK(head.data == embed.data);
  CHECK(head.storage == embed.storage);
  const std::vector<float> base = ramp(24);
  CHECK(read_all(embed) == base);

  const PytorchTensor& rows = checkpoint.require("rows_2_to_4", {3, 4});
  CHECK(rows.storage == embed.storage);
  CHECK(rows.data == embed.data + 8 * 4);
  CHECK(rows.contiguous());
  CHECK(read_all(rows) == std::vector<float>(base.begin() + 8, base.begin() + 20));

  const PytorchTensor& column = checkpoint.require("column_1", {6});
  CHECK_FALSE(column.contiguous());
  CHECK(column.strides == std::vector<int64_t>{4});
  std::vector<float> expected_column;
  for (int r = 0; r < 6; ++r) expected_column.push_back(base[r * 4 + 1]);
  CHECK(read_all(column) == expected_column);

  const PytorchTensor& transposed = checkpoint.require("transposed", {4, 6});
  CHECK_FALSE(transposed.contiguous());
  std::vector<float> expected_transposed;
  for (int c = 0; c < 4; ++c)
    for (int r = 0; r < 6; ++r) expected_transposed.push_back(base[r * 4 + c]);
  CHECK(read_all(transposed) == expected_transposed);
  float last_row[6];
  read_rows_f32(transposed, 3, 1, last_row);
  CHECK(std::vector<float>(last_row, last_row + 6) == std::vector<float>(expected_transposed.end() - 6, expected_transposed.end()));

  const PytorchTensor& other = checkpoint.require("other", {2, 3});
  CHECK(other.storage != embed.storage);
  CHECK(read_all(other) == ramp(6));

  check_error([&] { checkpoint.require("missing", {1}); }, ErrorCode::Format, "no tensor \"missing\"");
  check_error([&] { checkpoint.require("embed.weight", {4, 6}); }, ErrorCode::Format, "has shape [6, 4]");
}

TEST_CASE("Marian checkpoints: every tensor of pytorch_model.bin equals its model.safetensors twin bitwise") {
  const fs::path marian = octet::test::test_data("marian");
  int compared_folders = 0;
  if (fs::exists(marian)) {
    for (const auto& entry : fs::directory_iterator(marian)) {
      const fs::path folder = entry.path();
      if (!fs::exists(folder / "pytorch_model.bin") || !fs::exists(folder / "model.safetensors")) continue;
      ++compared_folders;
      const PytorchFile torch_file((folder / "pytorch_model.bin").string());
      const SafetensorsFile safetensors((folder / "model.safetensors").string());
      std::set<std::string> compared;
      for (const auto& [name, reference] : safetensors.tensors()) {
        REQUIRE_MESSAGE(torch_file.tensors().count(name), folder.string(), ": ", name, " is missing from pytorch_model.bin");
        const PytorchTensor* tensor = &torch_file.tensors().at(name);
        CHECK_MESSAGE(tensor->dtype == reference.dtype, name);
        CHECK_MESSAGE(tensor->shape == reference.shape, name);
        REQUIRE_MESSAGE(tensor->contiguous(), name);
        CHECK_MESSAGE(std::memcmp(tensor->data, reference.data, reference.size) == 0, name);
        compared.insert(name);
      }
      // safetensors keeps one copy of tied weights; the others must alias a compared tensor.
      for (const auto& [name, tensor] : torch_file.tensors()) {
        if (compared.count(name)) continue;
        bool aliases_a_compared_tensor = false;
        for (const std::string& other : compared) {
          const PytorchTensor& twin = torch_file.tensors().at(other);
          aliases_a_compared_tensor |= twin.data == tensor.data && twin.shape == tensor.shape && twin.dtype == tensor.dtype;
        }
        CHECK_MESSAGE(aliases_a_compared_tensor, folder.string(), ": ", name, " is only in pytorch_model.bin");
      }
    }
  }
  if (compared_folders == 0) MESSAGE("no tests/data/marian/<name>/ with both pytorch_model.bin and model.safetensors yet");
}

TEST_CASE("hostile fixture files give clean errors") {
  check_error([] { PytorchFile((kFixtures / "hostile_os_system.bin").string()); }, ErrorCode::Unsupported,
              "refusing to unpickle posix.system");
  check_error([] { PytorchFile((kFixtures / "hostile_bad_memo.bin").string()); }, ErrorCode::Format,
              "memo index 7 was never stored");
  check_error([] { PytorchFile((kFixtures / "hostile_huge_size.bin").string()); }, ErrorCode::Format,
              "reaches past its storage");
  check_error([] { PytorchFile((kFixtures / "hostile_truncated.bin").string()); }, ErrorCode::Format,
              "no zip end of central directory record");
  check_error([] { PytorchFile((kFixtures / "hostile_compressed.bin").string()); }, ErrorCode::Unsupported,
              "is compressed (method 8)");
}

TEST_CASE("hostile pickles give clean errors") {
  TempDir dir("pytorch_hostile");
  const auto load = [&](const std::string& pickle, const std::string& storage = floats(4)) {
    return [&dir, pickle, storage] { PytorchFile(write_checkpoint(dir, pickle, storage)); };
  };
  // The builder's own output reads, so each variant below fails for the reason it names.
  const PytorchFile valid(write_checkpoint(dir, tensor_pickle("0", 4, 1, {3}, {1})));
  CHECK(read_all(valid.tensors().at("w")) == std::vector<float>{1, 2, 3});

  check_error(load(tensor_pickle("0", 4, 2, {3}, {1})), ErrorCode::Format, "reaches past its storage");
  check_error(load(tensor_pickle("0", 4, 0, {2, 2}, {3, 1})), ErrorCode::Format, "reaches past its storage");
  check_error(load(tensor_pickle("0", 5, 0, {4}, {1})), ErrorCode::Format, "claims 5 elements");
  check_error(load(tensor_pickle("0", -1, 0, {4}, {1})), ErrorCode::Format, "claims -1 elements");
  check_error(load(tensor_pickle("7", 4, 0, {4}, {1})), ErrorCode::Format, "has no file archive/data/7");
  check_error(load(tensor_pickle("0", 4, 0, {-1}, {1})), ErrorCode::Format, "invalid size");
  check_error(load(tensor_pickle("0", 4, 0, {4}, {-4})), ErrorCode::Format, "invalid stride");
  check_error(load(tensor_pickle("0", 4, 0, {1 << 30, 1 << 30, 1 << 30}, {0, 0, 0})), ErrorCode::Format,
              "the size overflows");
  check_error(load(tensor_pickle("0", 4, 0, {1 << 25, 1 << 25}, {1ll << 40, 1})), ErrorCode::Format, "the size overflows");
  check_error(load(tensor_pickle("0", 4, 0, {2}, {1ll << 41})), ErrorCode::Format, "invalid stride");
  check_error(load(tensor_pickle("0", 4, 0, std::vector<int64_t>(17, 1), std::vector<int64_t>(17, 1))), ErrorCode::Format,
              "rank over 16");
  check_error(load(tensor_pickle("0", 4, 0, {4}, {1, 1})), ErrorCode::Format, "same length");
  check_error(load(tensor_pickle("0", 4, 0, {4}, {1}, "ComplexFloatStorage")), ErrorCode::Unsupported,
              "storage type torch.ComplexFloatStorage");

  const std::string header = "\x80\x02";
  check_error(load(header + "s."), ErrorCode::Format, "stack underflow");
  check_error(load(header + "t."), ErrorCode::Format, "no MARK");
  check_error(load(header + "I1\n."), ErrorCode::Format, "pickle opcode 0x49");
  check_error(load(header + "}"), ErrorCode::Format, "ends without a STOP");
  check_error(load("\x80\x06}."), ErrorCode::Format, "protocol 6");
  check_error(load(header + "X\xf0\xff\xff\xff" + "abc"), ErrorCode::Format, "truncated");
  check_error(load(header + "}j\xff\xff\xff\xff."), ErrorCode::Format, "memo index 4294967295");
  check_error(load(header + "\x8c\x08" + "builtins\x8c\x04" + "eval\x93."), ErrorCode::Unsupported,
              "refusing to unpickle builtins.eval");
  check_error(load(header + "cos\nsystem\n."), ErrorCode::Unsupported, "refusing to unpickle os.system");
  check_error(load(header + "cnot a global"), ErrorCode::Format, "newline-terminated");
  check_error(load(header + "\x8a\x09" + std::string(9, '\x01') + "."), ErrorCode::Format, "does not fit in 64 bits");
  check_error(load(header + std::string(100, ']') + std::string(99, 'a') + "."), ErrorCode::Format, "nest deeper");
  // A list put inside another, then changed: refused, so depths stay true and no cycle can form.
  check_error(load(header + "]]q\x00" "ah\x00" "Na."s), ErrorCode::Format, "after it was put inside");
  check_error(load(header + "]q\x00" "h\x00" "a."s), ErrorCode::Format, "inside itself");
  check_error(load(header + std::string(3'000'000, 'N') + "."), ErrorCode::Format, "more than 2097152 objects");
  check_error(load(header + std::string(3'000'000, '(') + "."), ErrorCode::Format, "more than 2097152 objects");
  std::string memo_gets;  // each BINGET pushes without making an object
  for (int i = 0; i < 3'000'000; ++i) memo_gets += "h\x00"s;
  check_error(load(header + "Nq\x00"s + memo_gets + "."), ErrorCode::Format, "stack grows past");
  check_error(load(header + "N)R."), ErrorCode::Format, "calling a None");
  check_error(load(header + "ccollections\nOrderedDict\nNN\x86R."), ErrorCode::Format, "called with arguments");
  check_error(load(header + "NQ."), ErrorCode::Format, "persistent id");
  check_error(load(header + "NN."), ErrorCode::Format, "STOP leaves 2 objects");
  check_error(load(header + "N."), ErrorCode::Unsupported, "holds a None");
  check_error(load(header + "}" + unicode("a") + "K\x01s."), ErrorCode::Unsupported, "entry \"a\" is a int");
  check_error(load(header + "}K\x01K\x01s."), ErrorCode::Format, "key is a int");
}

TEST_CASE("hostile zip containers give clean errors") {
  TempDir dir("pytorch_zip");
  const auto write = [&](const std::string& bytes) {
    static int counter = 0;
    const fs::path path = dir.path() / ("zip" + std::to_string(counter++) + ".bin");
    octet::test::write_bytes(path, bytes.data(), bytes.size());
    return path.string();
  };
  const std::string good = zip({{"archive/data.pkl", "\x80\x02}."}});
  CHECK(PytorchFile(write(good)).tensors().empty());

  check_error([&] { PytorchFile(write("")); }, ErrorCode::Format, "too short");
  check_error([&] { PytorchFile(write("\x80\x02}.")); }, ErrorCode::Unsupported, "legacy");
  // Every prefix of a valid archive fails cleanly.
  for (size_t length = 0; length < good.size(); ++length) {
    CAPTURE(length);
    CHECK_THROWS_AS(PytorchFile(write(good.substr(0, length))), Error);
  }
  std::string many_entries = good;  // the end record's entry counts, 0xFFFF: zip64 without its records
  many_entries[many_entries.size() - 22 + 8] = '\xff', many_entries[many_entries.size() - 22 + 9] = '\xff';
  many_entries[many_entries.size() - 22 + 10] = '\xff', many_entries[many_entries.size() - 22 + 11] = '\xff';
  check_error([&] { PytorchFile(write(many_entries)); }, ErrorCode::Format, "zip64 end locator is missing");
  std::string extra_entry = good;  // one entry more than the directory holds
  extra_entry[extra_entry.size() - 22 + 10] = 2;
  check_error([&] { PytorchFile(write(extra_entry)); }, ErrorCode::Format, "entry 1 is truncated");
  std::string bad_offset = good;  // the local header offset points past the directory
  const size_t directory = good.size() - 22 - (46 + 16);
  bad_offset[directory + 42 + 3] = '\x7f';
  check_error([&] { PytorchFile(write(bad_offset)); }, ErrorCode::Format, "no valid local header");
  check_error([&] { PytorchFile(write(zip({{"archive/other", ""}}))); }, ErrorCode::Format, "no <folder>/data.pkl");
  check_error([&] { PytorchFile(write(zip({{"a/data.pkl", "\x80\x02}."}, {"b/data.pkl", "\x80\x02}."}}))); },
              ErrorCode::Format, "two data.pkl");
  check_error([&] { PytorchFile(write(zip({{"a/data.pkl", "\x80\x02}."}, {"a/data.pkl", "\x80\x02}."}}))); },
              ErrorCode::Format, "appears twice");
  check_error([&] { PytorchFile(write(zip({{"archive/data.pkl", "\x80\x02}."}, {"archive/byteorder", "big"}}))); },
              ErrorCode::Unsupported, "big-endian");
  check_error([&] { PytorchCheckpoint(dir.path() / "nowhere"); }, ErrorCode::Io,
              "neither pytorch_model.bin nor pytorch_model.bin.index.json");
}

// ---- Sharded checkpoints (pytorch_model.bin.index.json) -----------------------------------------

namespace {

void write_text(const fs::path& path, const std::string& text) { octet::test::write_bytes(path, text.data(), text.size()); }

// Writes F32 tensors as one torch.save file, storage i holding tensor i.
void write_torch_file(const fs::path& path, const std::vector<const SafetensorsTensor*>& tensors) {
  std::vector<PickledTensor> entries;
  std::vector<std::pair<std::string, std::string>> files = {{"archive/data.pkl", ""}};
  for (const SafetensorsTensor* t : tensors) {
    REQUIRE(t->dtype == "F32");
    const std::string key = std::to_string(entries.size());
    std::vector<int64_t> strides(t->shape.size());
    int64_t stride = 1;
    for (size_t d = t->shape.size(); d-- > 0; stride *= t->shape[d]) strides[d] = stride;
    entries.push_back({t->name, key, t->elements(), 0, t->shape, strides});
    files.emplace_back("archive/data/" + key, std::string(reinterpret_cast<const char*>(t->data), t->size));
  }
  files.front().second = state_dict_pickle(entries);
  write_text(path, zip(files));
}

}  // namespace

TEST_CASE("Marian: a sharded PyTorch checkpoint converts to the same bytes as its single pytorch_model.bin") {
  TempDir temp("pytorch_sharded");
  for (const char* name : {"marian_shared", "marian_separate"}) {
    CAPTURE(name);
    const fs::path fixture = octet::test::test_data("marian") / name;
    // Folders of the same name: the name goes into the .qbin.
    const fs::path single = temp.path() / "single" / name, sharded = temp.path() / "sharded" / name;
    for (const fs::path& folder : {single, sharded}) {  // config and tokenizer files, no weights
      fs::create_directories(folder);
      for (const auto& entry : fs::directory_iterator(fixture))
        if (entry.path().extension() != ".safetensors" && entry.path().extension() != ".bin")
          fs::copy_file(entry.path(), folder / entry.path().filename());
    }
    fs::copy_file(fixture / "pytorch_model.bin", single / "pytorch_model.bin");
    // The same tensors (the .bin's are the safetensors' bit for bit) in two shards, named as
    // transformers names them, with their index.
    const SafetensorsFile tensors((fixture / "model.safetensors").string());
    std::vector<const SafetensorsTensor*> shards[2];
    nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
    const std::string shard_names[2] = {"pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"};
    for (const auto& [tensor_name, tensor] : tensors.tensors()) {
      const int shard = shards[0].size() < tensors.tensors().size() / 2 ? 0 : 1;
      shards[shard].push_back(&tensor);
      index["weight_map"][tensor_name] = shard_names[shard];
      index["metadata"]["total_size"] = index["metadata"]["total_size"].get<uint64_t>() + tensor.size;
    }
    REQUIRE(!shards[1].empty());
    for (int shard : {0, 1}) write_torch_file(sharded / shard_names[shard], shards[shard]);
    write_text(sharded / "pytorch_model.bin.index.json", index.dump(2));

    const auto convert_folder = [&](const fs::path& folder) {
      const fs::path out = folder.parent_path() / "out.qbin";
      convert::convert(folder.string(), out.string(), convert::Options{}, nullptr);
      return octet::test::read_bytes(out);
    };
    const auto from_single = convert_folder(single);
    CHECK(!from_single.empty());
    CHECK(from_single == convert_folder(sharded));
  }
}

TEST_CASE("a sharded PyTorch index is checked against its shards") {
  TempDir temp("pytorch_index");
  // Each shard holds views of one storage of 4 floats, under these names.
  const auto write_shard = [&](const std::string& file, const std::vector<std::string>& names) {
    std::vector<PickledTensor> tensors;
    for (const std::string& name : names) tensors.push_back({name, "0", 4, 0, {4}, {1}});
    write_text(temp.path() / file, zip({{"archive/data.pkl", state_dict_pickle(tensors)}, {"archive/data/0", floats(4)}}));
  };
  write_shard("a.bin", {"w", "v"});
  write_shard("b.bin", {"u"});
  write_shard("c.bin", {"u", "t"});
  const auto write_index = [&](const std::string& weight_map) {
    write_text(temp.path() / "pytorch_model.bin.index.json", R"({"metadata": {}, "weight_map": )" + weight_map + "}");
  };
  const auto open = [&] { PytorchCheckpoint checkpoint(temp.path()); };

  write_index(R"({"w": "a.bin", "v": "a.bin", "u": "b.bin"})");
  const PytorchCheckpoint checkpoint(temp.path());
  CHECK(read_all(checkpoint.require("u", {4})) == std::vector<float>{0, 1, 2, 3});
  CHECK(checkpoint.find("w") != nullptr);
  CHECK(checkpoint.find("t") == nullptr);  // c.bin is not in the index
  check_error([&] { checkpoint.require("x", {4}); }, ErrorCode::Format, "no tensor \"x\"");

  // Shards outside the folder, or not file names at all.
  for (const std::string shard : {"../a.bin", "/tmp/a.bin", "sub/a.bin", "..", ".", ""}) {
    CAPTURE(shard);
    write_index(R"({"w": ")" + shard + R"("})");
    check_error(open, ErrorCode::Format, {"pytorch_model.bin.index.json", "invalid file name"});
  }
  write_index(R"({"w": 7})");
  check_error(open, ErrorCode::Format, "invalid file name 7");
  write_index(R"({"w": "missing.bin"})");
  check_error(open, ErrorCode::Io, {"pytorch_model.bin.index.json", "shard missing.bin is missing"});
  write_index(R"({"x": "a.bin"})");
  check_error(open, ErrorCode::Format, {"\"x\"", "a.bin", "does not contain it"});
  write_index(R"({"w": "a.bin", "w": "b.bin"})");
  check_error(open, ErrorCode::Format, "\"w\" is listed twice");
  write_index(R"({"u": "b.bin", "t": "c.bin"})");
  check_error(open, ErrorCode::Format, "tensor \"u\" is in two shards, b.bin and c.bin");
  write_index("[1, 2]");
  check_error(open, ErrorCode::Format, "weight_map");
  write_index("{}");
  check_error(open, ErrorCode::Format, "weight_map");
  write_index("{");
  check_error(open, ErrorCode::Format, "not a JSON object");
  // A shard that is not a torch.save file fails as such.
  write_text(temp.path() / "junk.bin", "junk");
  write_index(R"({"w": "junk.bin"})");
  check_error(open, ErrorCode::Format, {"junk.bin", "too short"});
}
