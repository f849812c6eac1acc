// The converter: llama2.c and Hugging Face checkpoints -> .qbin. Real conversions (stories260K and
// the tiny HF models of tests/data/models) checked tensor by tensor against the source files, read
// here independently of the converter; and hostile inputs (safetensors, config.json, llama2.c
// headers) that must each give a clean octet::Error with a useful message.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <climits>
#include <cstring>
#include <map>
#include <set>

#include "convert/convert.h"
#include "convert/sources/safetensors.h"
#include "engine/error.h"
#include "engine/qbin.h"
#include "kernels/kernels.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace octet;
using octet::test::check_error;
using octet::test::TempDir;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const fs::path kStories = octet::test::shared_data("models/stories260K");

template <class F>
std::string error_of(F&& f, ErrorCode* code) {
  try {
    f();
  } catch (const Error& e) {
    *code = e.code();
    return e.what();
  }
  *code = ErrorCode::Internal;
  return "(no error)";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

convert::Options with_quant(DType quant) {
  convert::Options options;
  options.quant = quant;
  return options;
}

std::vector<float> tensor_f32(const qbin::File& file, const std::string& name) {
  const qbin::TensorInfo* info = file.find(name);
  REQUIRE_MESSAGE(info != nullptr, name);
  REQUIRE(info->dtype == DType::F32);
  std::vector<float> values(static_cast<size_t>(info->elements()));
  std::memcpy(values.data(), file.data(*info), info->size);
  return values;
}

// What the converter must have stored for these f32 source rows: the reference quantizer's bytes.
std::vector<uint8_t> reference_bytes(DType type, const std::vector<float>& values, int64_t cols) {
  const size_t row_size = kernels::row_bytes(type, cols);
  const int64_t rows = static_cast<int64_t>(values.size()) / cols;
  std::vector<uint8_t> bytes(static_cast<size_t>(rows) * row_size);
  for (int64_t r = 0; r < rows; ++r) kernels::quantize_row(type, values.data() + r * cols, bytes.data() + r * row_size, cols);
  return bytes;
}

// Q8_0 and Q4_0 matrices must be stored packed (the kernels' interleaved form), the rest row-major.
bool stored_as(const qbin::File& file, const std::string& name, DType type, const std::vector<float>& source) {
  const qbin::TensorInfo* info = file.find(name);
  REQUIRE_MESSAGE(info != nullptr, name);
  if (info->dtype != type) return false;
  std::vector<uint8_t> expected = reference_bytes(type, source, info->cols());
  const bool packed = kernels::packable(type) && info->shape.size() == 2;
  if (info->layout != (packed ? Layout::Packed : Layout::Rows)) return false;
  if (packed) {
    const kernels::PackedBuffer buffer(type, expected.data(), info->rows(), info->cols());
    expected.assign(buffer.bytes(), buffer.bytes() + buffer.size());
  }
  return expected.size() == info->size && std::memcmp(expected.data(), file.data(*info), info->size) == 0;
}

// ---- llama2.c -------------------------------------------------------------------------------

// stories260K.bin read by hand, in the order its README documents.
struct Llama2cFile {
  std::vector<int32_t> header;
  std::vector<float> floats;
  int64_t offset_of(const std::string& array) const {
    const int64_t dim = header[0], hidden = header[1], layers = header[2], kv_dim = dim / header[3] * header[4];
    const int64_t vocab = std::abs(header[5]);
    const std::pair<const char*, int64_t> order[] = {
        {"token_embedding", vocab * dim}, {"rms_att", layers * dim},        {"wq", layers * dim * dim},
        {"wk", layers * kv_dim * dim},    {"wv", layers * kv_dim * dim},   {"wo", layers * dim * dim},
        {"rms_ffn", layers * dim},        {"w1", layers * hidden * dim},   {"w2", layers * dim * hidden},
        {"w3", layers * hidden * dim},    {"rms_final", dim}};
    int64_t offset = 0;
    for (const auto& [name, size] : order) {
      if (array == name) return offset;
      offset += size;
    }
    FAIL("unknown array " << array);
    return 0;
  }
  std::vector<float> slice(const std::string& array, int64_t layer, int64_t count) const {
    const auto begin = floats.begin() + offset_of(array) + layer * count;
    return {begin, begin + count};
  }
};

Llama2cFile read_llama2c(const fs::path& path) {
  const std::vector<uint8_t> bytes = octet::test::read_bytes(path);
  Llama2cFile file;
  file.header.resize(7);
  std::memcpy(file.header.data(), bytes.data(), 28);
  file.floats.resize((bytes.size() - 28) / 4);
  std::memcpy(file.floats.data(), bytes.data() + 28, file.floats.size() * 4);
  return file;
}

std::vector<uint8_t> llama2c_header(std::vector<int32_t> fields) {
  std::vector<uint8_t> bytes(28);
  std::memcpy(bytes.data(), fields.data(), 28);
  return bytes;
}

// ---- safetensors ------------------------------------------------------------------------------

// A safetensors file from a header and data, with the header length as given (default: its size).
void write_safetensors(const fs::path& path, const std::string& header, const std::vector<uint8_t>& data,
                       std::optional<uint64_t> header_length = std::nullopt) {
  const uint64_t length = header_length.value_or(header.size());
  std::vector<uint8_t> bytes(8);
  std::memcpy(bytes.data(), &length, 8);
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  octet::test::write_bytes(path, bytes.data(), bytes.size());
}

// Rewrites a safetensors file's header (its data stays where the offsets say).
void edit_safetensors_header(const fs::path& path, const std::function<void(json&)>& edit) {
  const std::vector<uint8_t> bytes = octet::test::read_bytes(path);
  uint64_t length;
  std::memcpy(&length, bytes.data(), 8);
  json header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(length));
  edit(header);
  write_safetensors(path, header.dump(), {bytes.begin() + 8 + static_cast<int64_t>(length), bytes.end()});
}

// Every tensor of a HF folder as f32, read here without the converter's reader.
std::map<std::string, std::vector<float>> load_hf_tensors(const fs::path& folder) {
  std::vector<fs::path> files;
  if (fs::exists(folder / "model.safetensors.index.json")) {
    const json index = octet::test::read_json(folder / "model.safetensors.index.json");
    std::set<std::string> shards;
    for (const auto& [name, shard] : index["weight_map"].items()) shards.insert(shard.get<std::string>());
    for (const std::string& shard : shards) files.push_back(folder / shard);
  } else {
    files.push_back(folder / "model.safetensors");
  }
  std::map<std::string, std::vector<float>> tensors;
  for (const fs::path& file : files) {
    const std::vector<uint8_t> bytes = octet::test::read_bytes(file);
    uint64_t length;
    std::memcpy(&length, bytes.data(), 8);
    const json header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(length));
    const uint8_t* data = bytes.data() + 8 + length;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      const uint64_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
      const std::string dtype = entry["dtype"];
      std::vector<float>& values = tensors[name];
      const size_t width = dtype == "F32" ? 4 : 2;
      values.resize((end - begin) / width);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint8_t* p = data + begin + i * width;
        if (dtype == "F32") {
          std::memcpy(&values[i], p, 4);
        } else {
          uint16_t h;
          std::memcpy(&h, p, 2);
          if (dtype == "BF16") {
            const uint32_t bits = static_cast<uint32_t>(h) << 16;  // bf16 is the top half of an f32
            std::memcpy(&values[i], &bits, 4);
          } else {
            REQUIRE(dtype == "F16");
            values[i] = fp16_to_fp32(h);
          }
        }
      }
    }
  }
  return tensors;
}

// Octet name -> Hugging Face name for the llama family.
std::string hf_name_of(const std::string& name) {
  static const std::pair<const char*, const char*> kParts[] = {
      {"attn_norm.weight", "input_layernorm.weight"},   {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},         {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_k.bias", "self_attn.k_proj.bias"},         {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_v.bias", "self_attn.v_proj.bias"},         {"attn_out.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"}, {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},          {"ffn_down.weight", "mlp.down_proj.weight"}};
  if (name == "token_embedding.weight") return "model.embed_tokens.weight";
  if (name == "output.weight") return "lm_head.weight";
  if (name == "norm.weight") return "model.norm.weight";
  const size_t second_dot = name.find('.', std::strlen("layers."));
  for (const auto& [octet_part, hf_part] : kParts)
    if (name.substr(second_dot + 1) == octet_part)
      return "model.layers." + name.substr(7, second_dot - 7) + "." + hf_part;
  FAIL("unexpected tensor " << name);
  return "";
}

// A copy of a fixture folder the test may modify.
fs::path copy_folder(const fs::path& from, const TempDir& temp, const std::string& name) {
  const fs::path to = temp / name;
  fs::copy(from, to, fs::copy_options::recursive);
  return to;
}

}  // namespace

// ---- llama2.c ---------------------------------------------------------------------------------

TEST_CASE("stories260K to f32: metadata, shapes, and q/k regrouped for rotate-half RoPE") {
  TempDir temp("convert");
  const fs::path out = temp / "stories.qbin";
  const convert::Stats stats = convert::convert((kStories / "stories260K.bin").string(), out.string(), with_quant(DType::F32), {});
  const auto file = qbin::File::open(out.string());
  const qbin::Metadata& m = file->metadata();

  CHECK(m.str("general.architecture") == "llama");
  CHECK(m.str("general.name") == "stories260K");
  CHECK(m.str("general.source") == "llama2c");
  CHECK(m.str("general.quantization") == "f32");
  CHECK(contains(m.str("general.converter"), "octet-convert"));
  CHECK(m.u32("llama.vocab_size") == 512);
  CHECK(m.u32("llama.dim") == 64);
  CHECK(m.u32("llama.n_layers") == 5);
  CHECK(m.u32("llama.n_heads") == 8);
  CHECK(m.u32("llama.n_kv_heads") == 4);
  CHECK(m.u32("llama.head_dim") == 8);
  CHECK(m.u32("llama.ffn_dim") == 172);
  CHECK(m.u32("llama.context_length") == 512);
  CHECK(m.f32("llama.rms_eps") == 1e-5f);
  CHECK(m.f32("llama.rope_theta") == 10000.0f);
  CHECK(m.str("llama.rope_scaling") == "none");
  CHECK(m.u32("llama.sliding_window") == 0);
  CHECK(m.boolean("llama.tied_output"));
  CHECK(m.str("tokenizer.kind") == "sentencepiece");
  CHECK(m.i32("tokenizer.bos_id") == 1);
  CHECK(m.i32_array("tokenizer.eos_ids") == std::vector<int32_t>{2});
  CHECK(m.boolean("tokenizer.add_bos"));
  CHECK_FALSE(m.has("tokenizer.chat_template"));

  CHECK(file->tensors().size() == 1 + 5 * 9 + 1);
  CHECK(file->find("output.weight") == nullptr);
  file->require("token_embedding.weight", {512, 64});
  file->require("norm.weight", {64});
  for (int layer = 0; layer < 5; ++layer) {
    const std::string l = "layers." + std::to_string(layer) + ".";
    file->require(l + "attn_norm.weight", {64});
    file->require(l + "attn_q.weight", {64, 64});
    file->require(l + "attn_k.weight", {32, 64});
    file->require(l + "attn_v.weight", {32, 64});
    file->require(l + "attn_out.weight", {64, 64});
    file->require(l + "ffn_norm.weight", {64});
    file->require(l + "ffn_gate.weight", {172, 64});
    file->require(l + "ffn_up.weight", {172, 64});
    file->require(l + "ffn_down.weight", {64, 172});
  }
  CHECK(stats.tensors == 47);
  CHECK(stats.parameters == 264128 - 512 * 8);  // every float but the unused freq_cis tables
  CHECK(stats.bits_per_weight == 32.0);
  CHECK(stats.bytes == file->file_size());

  // Values: q and k rows within each head go from interleaved pairs (2i, 2i+1) to (i, i + 4).
  const Llama2cFile source = read_llama2c(kStories / "stories260K.bin");
  CHECK(tensor_f32(*file, "token_embedding.weight") == source.slice("token_embedding", 0, 512 * 64));
  CHECK(tensor_f32(*file, "norm.weight") == source.slice("rms_final", 0, 64));
  const int64_t head_dim = 8;
  for (int layer = 0; layer < 5; ++layer) {
    const std::string l = "layers." + std::to_string(layer) + ".";
    for (const auto& [name, array, rows] : {std::tuple{"attn_q.weight", "wq", 64}, std::tuple{"attn_k.weight", "wk", 32}}) {
      const std::vector<float> stored = tensor_f32(*file, l + name);
      const std::vector<float> original = source.slice(array, layer, rows * 64);
      for (int64_t head = 0; head < rows / head_dim; ++head)
        for (int64_t i = 0; i < head_dim / 2; ++i)
          for (int64_t c = 0; c < 64; ++c) {
            const int64_t base = head * head_dim;
            REQUIRE(stored[(base + i) * 64 + c] == original[(base + 2 * i) * 64 + c]);
            REQUIRE(stored[(base + i + head_dim / 2) * 64 + c] == original[(base + 2 * i + 1) * 64 + c]);
          }
    }
    CHECK(tensor_f32(*file, l + "attn_v.weight") == source.slice("wv", layer, 32 * 64));
    CHECK(tensor_f32(*file, l + "attn_out.weight") == source.slice("wo", layer, 64 * 64));
    CHECK(tensor_f32(*file, l + "attn_norm.weight") == source.slice("rms_att", layer, 64));
    CHECK(tensor_f32(*file, l + "ffn_norm.weight") == source.slice("rms_ffn", layer, 64));
    CHECK(tensor_f32(*file, l + "ffn_gate.weight") == source.slice("w1", layer, 172 * 64));
    CHECK(tensor_f32(*file, l + "ffn_down.weight") == source.slice("w2", layer, 64 * 172));
    CHECK(tensor_f32(*file, l + "ffn_up.weight") == source.slice("w3", layer, 172 * 64));
  }
}

TEST_CASE("stories260K to q4_0: overrides, f16 fallback for rows of 172, progress and stats") {
  TempDir temp("convert");
  const fs::path out = temp / "stories.qbin";
  convert::Options options = with_quant(DType::Q4_0);
  options.embedding_type = DType::Q8_0;
  options.tokenizer_path = (kStories / "tok512.model").string();
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> calls;
  const convert::Stats stats = convert::convert((kStories / "stories260K.bin").string(), out.string(), options,
                                                [&](uint64_t done, uint64_t total, const std::string& name) {
                                                  calls.emplace_back(done, total, name);
                                                });
  const auto file = qbin::File::open(out.string());
  CHECK(file->metadata().str("general.quantization") ==
        "q4_0 (token_embedding q8_0, layers.*.ffn_down f16 fallback: rows of 172 are not a multiple of 32)");

  const Llama2cFile source = read_llama2c(kStories / "stories260K.bin");
  CHECK(stored_as(*file, "token_embedding.weight", DType::Q8_0, source.slice("token_embedding", 0, 512 * 64)));
  CHECK(stored_as(*file, "layers.2.ffn_gate.weight", DType::Q4_0, source.slice("w1", 2, 172 * 64)));
  CHECK(stored_as(*file, "layers.2.ffn_down.weight", DType::F16, source.slice("w2", 2, 64 * 172)));
  CHECK(stored_as(*file, "layers.2.attn_v.weight", DType::Q4_0, source.slice("wv", 2, 32 * 64)));
  CHECK(file->find("layers.2.attn_norm.weight")->dtype == DType::F32);
  CHECK(file->find("norm.weight")->dtype == DType::F32);

  REQUIRE(calls.size() == 47);
  uint64_t previous = 0;
  for (const auto& [done, total, name] : calls) {
    CHECK(done > previous);
    CHECK(total == std::get<1>(calls.back()));
    CHECK(file->find(name) != nullptr);
    previous = done;
  }
  CHECK(std::get<0>(calls.back()) == std::get<1>(calls.back()));
  CHECK(stats.tensors == 47);
  CHECK(stats.bits_per_weight > 4.5);
  CHECK(stats.bits_per_weight < 16.0);
}

TEST_CASE("llama2.c: the tokenizer is found beside the checkpoint or named") {
  TempDir temp("convert");
  fs::copy_file(kStories / "stories260K.bin", temp / "model.bin");
  check_error([&] { convert::convert((temp / "model.bin").string(), (temp / "out.qbin").string(), {}, {}); },
              ErrorCode::Io, {"tokenizer.model", "tok512.model"});
  CHECK_FALSE(fs::exists(temp / "out.qbin"));
  check_error(
      [&] {
        convert::Options options;
        options.tokenizer_path = (kStories / "tok512.bin").string();
        convert::convert((temp / "model.bin").string(), (temp / "out.qbin").string(), options, {});
      },
      ErrorCode::InvalidArgument, {"tok512.bin", "SentencePiece"});
  fs::copy_file(kStories / "tok512.model", temp / "tokenizer.model");
  convert::convert((temp / "model.bin").string(), (temp / "out.qbin").string(), {}, {});
  CHECK(qbin::File::open((temp / "out.qbin").string())->metadata().str("general.name") == "model");
}

TEST_CASE("llama2.c: truncated files and hostile headers are clean errors") {
  TempDir temp("convert");
  fs::copy_file(kStories / "tok512.model", temp / "tokenizer.model");
  const std::vector<uint8_t> real = octet::test::read_bytes(kStories / "stories260K.bin");
  auto convert_bytes = [&](const std::vector<uint8_t>& bytes) {
    octet::test::write_bytes(temp / "model.bin", bytes.data(), bytes.size());
    convert::convert((temp / "model.bin").string(), (temp / "out.qbin").string(), {}, {});
  };
  check_error([&] { convert_bytes({1, 2, 3}); }, ErrorCode::Format, {"model.bin", "too short"});
  for (size_t size : {size_t{28}, size_t{1000}, real.size() - 4})
    check_error([&] { convert_bytes({real.begin(), real.begin() + static_cast<int64_t>(size)}); }, ErrorCode::Format,
                {"model.bin", "implies 1056540"});
  std::vector<uint8_t> longer = real;
  longer.resize(real.size() + 4);
  check_error([&] { convert_bytes(longer); }, ErrorCode::Format, {"model.bin", "implies"});

  const std::vector<std::pair<std::vector<int32_t>, std::string>> hostile = {
      {{1 << 30, 172, 5, 8, 4, 512, 512}, "dim out of range"},
      {{-64, 172, 5, 8, 4, 512, 512}, "dim out of range"},
      {{64, INT32_MAX, 5, 8, 4, 512, 512}, "hidden_dim out of range"},
      {{64, 172, -5, 8, 4, 512, 512}, "n_layers out of range"},
      {{64, 172, 100000, 8, 4, 512, 512}, "n_layers out of range"},
      {{64, 172, 5, 0, 4, 512, 512}, "n_heads"},
      {{64, 172, 5, 3, 3, 512, 512}, "not a multiple of n_heads"},
      {{64, 172, 5, 8, 3, 512, 512}, "not a multiple of n_kv_heads"},
      {{64, 172, 5, 8, 0, 512, 512}, "n_kv_heads"},
      {{12, 172, 5, 4, 4, 512, 512}, "head size is odd"},
      {{64, 172, 5, 8, 4, INT32_MIN, 512}, "vocab_size out of range"},
      {{64, 172, 5, 8, 4, 0, 512}, "vocab_size out of range"},
      {{64, 172, 5, 8, 4, 512, 0}, "seq_len out of range"},
      // Largest allowed sizes: rejected by the exact size check, with nothing allocated.
      {{1000000, 1000000, 1000, 1000, 1000, 1000000, 1 << 24}, "implies"},
      {{1000000, 1000000, 1000, 1000, 1000, -1000000, 1 << 24}, "implies"},
  };
  for (const auto& [fields, message] : hostile) {
    CAPTURE(message);
    check_error([&] { convert_bytes(llama2c_header(fields)); }, ErrorCode::Format, {"model.bin", message});
  }
  CHECK_FALSE(fs::exists(temp / "out.qbin"));
}

// ---- safetensors ------------------------------------------------------------------------------

TEST_CASE("safetensors: F32, F16 and BF16 read exactly, in row blocks") {
  TempDir temp("convert");
  const std::vector<float> values = {1.5f, -2.25f, 0.0f, 3.0e-3f, 65504.0f, -1.0f};
  std::vector<uint8_t> data(values.size() * 4);
  std::memcpy(data.data(), values.data(), data.size());
  for (float v : values) {  // F16 then BF16 copies of the same values
    const uint16_t h = fp32_to_fp16(v);
    data.insert(data.end(), {static_cast<uint8_t>(h), static_cast<uint8_t>(h >> 8)});
  }
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    data.insert(data.end(), {static_cast<uint8_t>(bits >> 16), static_cast<uint8_t>(bits >> 24)});
  }
  write_safetensors(temp / "x.safetensors",
                    R"({"__metadata__": {"format": "pt"},
                        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                        "b": {"dtype": "F16", "shape": [3, 2], "data_offsets": [24, 36]},
                        "c": {"dtype": "BF16", "shape": [6], "data_offsets": [36, 48]},
                        "empty": {"dtype": "I64", "shape": [0, 4], "data_offsets": [48, 48]}})",
                    data);
  const convert::SafetensorsFile file((temp / "x.safetensors").string());
  REQUIRE(file.tensors().size() == 4);
  std::vector<float> out(6);
  convert::read_rows_f32(file.tensors().at("a"), 0, 2, out.data());
  CHECK(out == values);
  convert::read_rows_f32(file.tensors().at("b"), 1, 2, out.data());
  for (int i = 0; i < 4; ++i) CHECK(out[i] == fp16_to_fp32(fp32_to_fp16(values[2 + i])));
  convert::read_rows_f32(file.tensors().at("c"), 0, 1, out.data());
  for (int i = 0; i < 6; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    CHECK(out[i] == bf16_to_fp32(static_cast<uint16_t>(bits >> 16)));
  }
  check_error([&] { convert::read_rows_f32(file.tensors().at("empty"), 0, 0, out.data()); }, ErrorCode::Unsupported,
              {"\"empty\"", "I64"});
}

TEST_CASE("safetensors: hostile headers are clean format errors naming the file and tensor") {
  TempDir temp("convert");
  const fs::path path = temp / "bad.safetensors";
  auto open = [&] { convert::SafetensorsFile file(path.string()); };
  auto check_header = [&](const std::string& header, size_t data_size, std::initializer_list<std::string> parts) {
    CAPTURE(header);
    write_safetensors(path, header, std::vector<uint8_t>(data_size));
    check_error(open, ErrorCode::Format, parts);
  };

  octet::test::write_bytes(path, "abc", 3);
  check_error(open, ErrorCode::Format, {"bad.safetensors", "too short"});
  write_safetensors(path, "{}", std::vector<uint8_t>(10), 1000);
  check_error(open, ErrorCode::Format, {"bad.safetensors", "header length 1000 runs past the end"});
  write_safetensors(path, "{}", {}, uint64_t{1} << 60);
  check_error(open, ErrorCode::Format, {"bad.safetensors", "runs past the end"});
  write_safetensors(path, "{}", {}, UINT64_MAX);
  check_error(open, ErrorCode::Format, {"bad.safetensors", "runs past the end"});
  // Truncated: the header promises more data than the file has.
  check_header(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8,
               {"bad.safetensors", "\"w\"", "outside the data section"});

  check_header("{not json", 0, {"not valid JSON"});
  check_header(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]})", 16, {"not valid JSON"});
  check_header("[1, 2]", 0, {"not a JSON object"});
  check_header(R"({"w": 5})", 0, {"\"w\"", "not an object"});
  check_header(R"({"w": {"shape": [4], "data_offsets": [0, 16]}})", 16, {"\"w\"", "dtype"});
  check_header(R"({"w": {"dtype": "F32", "data_offsets": [0, 16]}})", 16, {"\"w\"", "shape"});
  check_header(R"({"w": {"dtype": "F32", "shape": [4]}})", 16, {"\"w\"", "data_offsets"});
  check_header(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}})", 16, {"\"w\"", "data_offsets"});
  check_header(R"({"w": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}})", 16, {"\"w\"", "unknown dtype \"F33\""});
  check_header(R"({"w": {"dtype": 32, "shape": [4], "data_offsets": [0, 16]}})", 16, {"\"w\"", "dtype"});
  check_header(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", 16,
               {"\"w\"", "span 16 bytes", "needs 12"});
  check_header(R"({"w": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 16]}})", 16, {"\"w\"", "needs 32"});
  check_header(R"({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", 16, {"\"w\"", "invalid dimension -4"});
  check_header(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 16]}})", 16, {"\"w\"", "invalid dimension"});
  check_header(R"({"w": {"dtype": "F32", "shape": ["4"], "data_offsets": [0, 16]}})", 16, {"\"w\"", "invalid dimension"});
  check_header(R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 16]}})", 16,
               {"\"w\"", "invalid dimension"});
  check_header(R"({"w": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 16]}})", 16,
               {"\"w\"", "invalid dimension"});
  check_header(R"({"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 16]}})", 16,
               {"\"w\"", "overflows"});
  check_header(R"({"w": {"dtype": "F32", "shape": [1099511627776, 8388608], "data_offsets": [0, 16]}})", 16,
               {"\"w\"", "overflows"});
  check_header(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}})", 16, {"\"w\"", "outside"});
  check_header(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}})", 16, {"\"w\"", "data_offsets"});
  check_header(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [18446744073709551600, 18446744073709551615]}})", 16,
               {"\"w\"", "outside"});
  check_header(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                   "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
               24, {"overlaps"});
}

TEST_CASE("safetensors: a sharded index is checked against its shards") {
  TempDir temp("convert");
  write_safetensors(temp / "shard.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                    std::vector<uint8_t>(4));
  auto write_index = [&](const std::string& text) {
    octet::test::write_bytes(temp / "model.safetensors.index.json", text.data(), text.size());
  };
  auto open = [&] { convert::SafetensorsCheckpoint checkpoint(temp.path()); };
  write_index(R"({"weight_map": {"w": "../shard.safetensors"}})");
  check_error(open, ErrorCode::Format, {"model.safetensors.index.json", "invalid file name"});
  write_index(R"({"weight_map": {"w": "/etc/passwd"}})");
  check_error(open, ErrorCode::Format, {"invalid file name"});
  write_index(R"({"weight_map": {"v": "shard.safetensors"}})");
  check_error(open, ErrorCode::Format, {"\"v\"", "shard.safetensors", "does not contain it"});
  write_index(R"({"weight_map": {"w": "missing.safetensors"}})");
  check_error(open, ErrorCode::Io, {"missing.safetensors"});
  write_index(R"({"weight_map": [1, 2]})");
  check_error(open, ErrorCode::Format, {"weight_map"});
  write_index(R"({"weight_map": {)");
  check_error(open, ErrorCode::Format, {"model.safetensors.index.json"});
  write_index(R"({"weight_map": {"w": "shard.safetensors"}})");
  const convert::SafetensorsCheckpoint checkpoint(temp.path());
  CHECK(checkpoint.find("w") != nullptr);
  check_error([&] { checkpoint.require("w", {2}); }, ErrorCode::Format, {"\"w\"", "[1]", "[2]"});
  check_error([&] { checkpoint.require("x", {1}); }, ErrorCode::Format, {"\"x\""});
}

// ---- config.json --------------------------------------------------------------------------------

TEST_CASE("config.json: missing keys, absurd sizes and unknown architectures are named") {
  TempDir temp("convert");
  const json valid = octet::test::read_json(octet::test::test_data("models/llama_gqa_tied/config.json"));
  auto convert_config = [&](const std::string& text) {
    octet::test::write_bytes(temp / "config.json", text.data(), text.size());
    convert::convert(temp.path().string(), (temp / "out.qbin").string(), {}, {});
  };
  auto with = [&](const std::function<void(json&)>& edit) {
    json config = valid;
    edit(config);
    return config.dump();
  };

  check_error([&] { convert::convert(temp.path().string(), (temp / "out.qbin").string(), {}, {}); }, ErrorCode::Io,
              {"config.json"});
  check_error([&] { convert_config("{oops"); }, ErrorCode::Format, {"config.json", "not valid JSON"});
  check_error([&] { convert_config("[]"); }, ErrorCode::Format, {"config.json", "not a JSON object"});
  check_error([&] { convert_config(with([](json& c) { c["architectures"] = {"GPT2LMHeadModel"}; })); },
              ErrorCode::Unsupported, {"GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"});
  check_error([&] { convert_config(with([](json& c) { c.erase("architectures"); })); }, ErrorCode::Format,
              {"architectures"});
  check_error([&] { convert_config(with([](json& c) { c["architectures"] = json::array(); })); }, ErrorCode::Format,
              {"architectures"});

  const std::vector<std::tuple<std::function<void(json&)>, ErrorCode, std::vector<std::string>>> cases = {
      {[](json& c) { c.erase("hidden_size"); }, ErrorCode::Format, {"missing key \"hidden_size\""}},
      {[](json& c) { c.erase("vocab_size"); }, ErrorCode::Format, {"missing key \"vocab_size\""}},
      {[](json& c) { c["num_hidden_layers"] = nullptr; }, ErrorCode::Format, {"missing key \"num_hidden_layers\""}},
      {[](json& c) { c["hidden_size"] = 1000000000; }, ErrorCode::Format, {"hidden_size", "out of range"}},
      {[](json& c) { c["hidden_size"] = 1e300; }, ErrorCode::Format, {"hidden_size", "out of range"}},
      {[](json& c) { c["hidden_size"] = 18446744073709551615ull; }, ErrorCode::Format, {"hidden_size", "out of range"}},
      {[](json& c) { c["hidden_size"] = 0; }, ErrorCode::Format, {"hidden_size", "out of range"}},
      {[](json& c) { c["hidden_size"] = -64; }, ErrorCode::Format, {"hidden_size", "out of range"}},
      {[](json& c) { c["hidden_size"] = "64"; }, ErrorCode::Format, {"hidden_size", "not an integer"}},
      {[](json& c) { c["hidden_size"] = 64.5; }, ErrorCode::Format, {"hidden_size", "not an integer"}},
      {[](json& c) { c["num_hidden_layers"] = 5000; }, ErrorCode::Format, {"num_hidden_layers", "out of range"}},
      {[](json& c) { c["intermediate_size"] = 2000000; }, ErrorCode::Format, {"intermediate_size", "out of range"}},
      {[](json& c) { c["vocab_size"] = 10000000; }, ErrorCode::Format, {"vocab_size", "out of range"}},
      {[](json& c) { c["num_key_value_heads"] = 3; }, ErrorCode::Format, {"num_key_value_heads"}},
      {[](json& c) { c["num_key_value_heads"] = 8; }, ErrorCode::Format, {"num_key_value_heads", "out of range"}},
      {[](json& c) {
         c.erase("head_dim");
         c["num_attention_heads"] = 6;
       },
       ErrorCode::Format, {"hidden_size 64 is not a multiple of num_attention_heads 6"}},
      {[](json& c) { c["head_dim"] = 15; }, ErrorCode::Format, {"head_dim 15"}},
      {[](json& c) { c["head_dim"] = 900000; }, ErrorCode::Format, {"head_dim 900000"}},
      {[](json& c) { c["max_position_embeddings"] = -1; }, ErrorCode::Format, {"max_position_embeddings"}},
      {[](json& c) { c["rms_norm_eps"] = "tiny"; }, ErrorCode::Format, {"rms_norm_eps", "not a number"}},
      {[](json& c) { c["rope_theta"] = -1; }, ErrorCode::Format, {"rope_theta", "out of range"}},
      {[](json& c) { c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}}; }, ErrorCode::Unsupported, {"yarn"}},
      {[](json& c) { c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8}}; }, ErrorCode::Format,
       {"rope_scaling", "low_freq_factor"}},
      {[](json& c) { c["rope_scaling"] = 3; }, ErrorCode::Format, {"rope_scaling", "not an object"}},
      {[](json& c) { c["rope_parameters"] = {{"rope_type", "dynamic"}}; }, ErrorCode::Unsupported, {"dynamic"}},
      {[](json& c) { c["attention_bias"] = true; }, ErrorCode::Unsupported, {"attention_bias"}},
      {[](json& c) { c["layer_types"] = {"sliding_attention", "full_attention"}; }, ErrorCode::Unsupported,
       {"sliding-window", "1 of 2"}},
      {[](json& c) { c["tie_word_embeddings"] = "yes"; }, ErrorCode::Format, {"tie_word_embeddings", "not a boolean"}},
  };
  for (const auto& [edit, code, parts] : cases) {
    const std::string text = with(edit);
    CAPTURE(text);
    ErrorCode got{};
    const std::string message = error_of([&] { convert_config(text); }, &got);
    CHECK_MESSAGE(got == code, message);
    for (const std::string& part : parts) CHECK_MESSAGE(contains(message, part), message);
    CHECK_MESSAGE(contains(message, "config.json"), message);
  }
  CHECK_FALSE(fs::exists(temp / "out.qbin"));
}

// ---- Hugging Face models ----------------------------------------------------------------------

struct HfExpectation {
  std::string model;
  bool tied;
  bool biases;
  std::string tokenizer_kind;
  int32_t bos;
  std::vector<int32_t> eos;
  bool add_bos;
  bool chat_template;
  float rope_theta;
  std::string rope_scaling;
};

TEST_CASE("Hugging Face models: f32 equals the checkpoint, q8_0/q4_0 equal the reference quantizer") {
  const std::vector<HfExpectation> models = {
      {"llama_gqa_tied", true, false, "sentencepiece", 1, {2}, true, false, 10000.0f, "none"},
      {"llama_untied_bf16", false, false, "bpe", 795, {796, 797}, true, true, 10000.0f, "llama3"},
      {"mistral", false, false, "sentencepiece", 1, {2}, true, true, 1e6f, "none"},
      {"qwen2_bias", true, true, "bpe", -1, {797, 795}, false, true, 1e6f, "none"},
      {"smollm_like", true, false, "bpe", 1, {2}, false, true, 10000.0f, "none"},
  };
  for (const HfExpectation& expected : models) {
    CAPTURE(expected.model);
    const fs::path folder = octet::test::test_data("models/" + expected.model);
    const json config = octet::test::read_json(folder / "config.json");
    const std::map<std::string, std::vector<float>> source = load_hf_tensors(folder);
    TempDir temp("convert");

    for (const DType quant : {DType::F32, DType::Q8_0, DType::Q4_0}) {
      const std::string quant_name = kernels::dtype_name(quant);
      CAPTURE(quant_name);
      const fs::path out = temp / "model.qbin";
      const convert::Stats stats = convert::convert(folder.string(), out.string(), with_quant(quant), {});
      const auto file = qbin::File::open(out.string());
      const qbin::Metadata& m = file->metadata();

      CHECK(m.str("general.architecture") == "llama");
      CHECK(m.str("general.name") == expected.model);
      CHECK(m.str("general.source") == "huggingface");
      CHECK(m.str("general.quantization") == kernels::dtype_name(quant));
      CHECK(m.u32("llama.vocab_size") == config["vocab_size"].get<uint32_t>());
      CHECK(m.u32("llama.dim") == 64);
      CHECK(m.u32("llama.n_layers") == 2);
      CHECK(m.u32("llama.n_heads") == 4);
      CHECK(m.u32("llama.n_kv_heads") == 2);
      CHECK(m.u32("llama.head_dim") == 16);
      CHECK(m.u32("llama.ffn_dim") == 128);
      CHECK(m.u32("llama.context_length") == 256);
      CHECK(m.f32("llama.rms_eps") == config["rms_norm_eps"].get<float>());
      CHECK(m.f32("llama.rope_theta") == expected.rope_theta);
      CHECK(m.str("llama.rope_scaling") == expected.rope_scaling);
      if (expected.rope_scaling == "llama3") {
        CHECK(m.f32("llama.rope_factor") == 8.0f);
        CHECK(m.f32("llama.rope_low_freq_factor") == 1.0f);
        CHECK(m.f32("llama.rope_high_freq_factor") == 4.0f);
        CHECK(m.u32("llama.rope_original_context") == 64);
      }
      CHECK(m.u32("llama.sliding_window") == 0);
      CHECK(m.boolean("llama.tied_output") == expected.tied);
      CHECK(m.str("tokenizer.kind") == expected.tokenizer_kind);
      CHECK(m.i32("tokenizer.bos_id") == expected.bos);
      CHECK(m.i32_array("tokenizer.eos_ids") == expected.eos);
      CHECK(m.boolean("tokenizer.add_bos") == expected.add_bos);
      CHECK(m.has("tokenizer.chat_template") == expected.chat_template);
      CHECK((file->find("output.weight") == nullptr) == expected.tied);
      CHECK((file->find("layers.1.attn_k.bias") != nullptr) == expected.biases);
      CHECK(stats.tensors == static_cast<int64_t>(file->tensors().size()));

      // Every tensor against the checkpoint: vectors exactly as f32, matrices as the reference
      // quantizer stores the (exactly upcast) source values.
      int64_t parameters = 0;
      for (const qbin::TensorInfo& tensor : file->tensors()) {
        CAPTURE(tensor.name);
        const std::vector<float>& values = source.at(hf_name_of(tensor.name));
        parameters += tensor.elements();
        const bool vector = tensor.shape.size() == 1;
        CHECK(stored_as(*file, tensor.name, vector ? DType::F32 : quant, values));
      }
      CHECK(stats.parameters == parameters);

      // The tokenizer settings reproduce the ids the reference tokenizer gave for each prompt.
      const auto tokenizer = Tokenizer::from_metadata(m);
      const json goldens = octet::test::read_json(folder / "goldens.json");
      for (const json& c : goldens["cases"]) {
        if (!c["prompt"].is_string() || !c.value("add_special_tokens", false)) continue;
        CAPTURE(c["prompt"].get<std::string>());
        CHECK(tokenizer->encode(c["prompt"].get<std::string>(), tokenizer->add_bos(), true) ==
              c["input_ids"].get<std::vector<int32_t>>());
      }
    }
  }
}

TEST_CASE("Hugging Face: type overrides are recorded in general.quantization") {
  TempDir temp("convert");
  convert::Options options = with_quant(DType::Q4_1);
  options.embedding_type = DType::F16;
  options.output_type = DType::Q8_0;
  const fs::path folder = octet::test::test_data("models/llama_untied_bf16");
  const convert::Stats stats = convert::convert(folder.string(), (temp / "m.qbin").string(), options, {});
  const auto file = qbin::File::open((temp / "m.qbin").string());
  CHECK(file->metadata().str("general.quantization") == "q4_1 (token_embedding f16, output q8_0)");
  CHECK(file->find("token_embedding.weight")->dtype == DType::F16);
  CHECK(file->find("output.weight")->dtype == DType::Q8_0);
  CHECK(file->find("layers.0.ffn_up.weight")->dtype == DType::Q4_1);
  CHECK(file->find("layers.0.ffn_norm.weight")->dtype == DType::F32);
  CHECK(stats.bits_per_weight > 5.0);
  CHECK(stats.bits_per_weight < 16.0);
}

TEST_CASE("Hugging Face: broken folders are clean errors, and leave no output behind") {
  TempDir temp("convert");
  const fs::path out = temp / "out.qbin";
  const fs::path llama = octet::test::test_data("models/llama_gqa_tied");
  auto convert_folder = [&](const fs::path& folder) { convert::convert(folder.string(), out.string(), {}, {}); };

  check_error([&] { convert_folder(temp / "nowhere"); }, ErrorCode::Io, {"nowhere"});
  check_error(
      [&] {
        convert::Options options;
        options.tokenizer_path = "tok.model";
        convert::convert(llama.string(), out.string(), options, {});
      },
      ErrorCode::InvalidArgument, {"llama2.c"});

  const fs::path no_tokenizer = copy_folder(llama, temp, "no_tokenizer");
  fs::remove(no_tokenizer / "tokenizer.model");
  check_error([&] { convert_folder(no_tokenizer); }, ErrorCode::Io, {"tokenizer.model", "tokenizer.json"});

  const fs::path no_weights = copy_folder(llama, temp, "no_weights");
  fs::remove(no_weights / "model.safetensors");
  check_error([&] { convert_folder(no_weights); }, ErrorCode::Io, {"model.safetensors"});

  const fs::path truncated = copy_folder(llama, temp, "truncated");
  fs::resize_file(truncated / "model.safetensors", fs::file_size(truncated / "model.safetensors") / 2);
  check_error([&] { convert_folder(truncated); }, ErrorCode::Format, {"model.safetensors", "outside the data section"});

  const fs::path wrong_vocab = copy_folder(llama, temp, "wrong_vocab");
  json config = octet::test::read_json(wrong_vocab / "config.json");
  config["vocab_size"] = 601;
  const std::string text = config.dump();
  octet::test::write_bytes(wrong_vocab / "config.json", text.data(), text.size());
  check_error([&] { convert_folder(wrong_vocab); }, ErrorCode::Format, {"model.embed_tokens.weight", "[600, 64]", "[601, 64]"});

  const fs::path missing_tensor = copy_folder(llama, temp, "missing_tensor");
  edit_safetensors_header(missing_tensor / "model.safetensors", [](json& h) { h.erase("model.layers.1.mlp.up_proj.weight"); });
  check_error([&] { convert_folder(missing_tensor); }, ErrorCode::Format, {"model.layers.1.mlp.up_proj.weight"});

  // A dtype the converter cannot read, found only while writing: the partial file is removed.
  const fs::path int_weights = copy_folder(llama, temp, "int_weights");
  edit_safetensors_header(int_weights / "model.safetensors", [](json& h) { h["model.norm.weight"]["dtype"] = "I32"; });
  check_error([&] { convert_folder(int_weights); }, ErrorCode::Unsupported, {"model.norm.weight", "I32"});

  const fs::path bad_eos = copy_folder(llama, temp, "bad_eos");
  octet::test::write_bytes(bad_eos / "generation_config.json", R"({"eos_token_id": [2, 9999]})", 27);
  check_error([&] { convert_folder(bad_eos); }, ErrorCode::Format, {"9999", "vocabulary"});
  octet::test::write_bytes(bad_eos / "generation_config.json", R"({"eos_token_id": "2"})", 21);
  check_error([&] { convert_folder(bad_eos); }, ErrorCode::Format, {"generation_config.json", "eos_token_id"});

  CHECK_FALSE(fs::exists(out));
}
