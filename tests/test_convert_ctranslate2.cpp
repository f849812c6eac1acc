// The CTranslate2 model reader: the real aren-transliteration model (../shared/models, float32 and
// int8) read in full, its int8 weights checked against the float32 ones within the quantization
// step; a synthetic binary-version-6 model exercising every dtype, attribute and alias; and hostile
// model.bin variants that must each give a clean octet::Error.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "convert/sources/ctranslate2.h"
#include "engine/error.h"
#include "test_util.h"

using namespace octet;
using namespace octet::convert;
using octet::test::check_error;
using octet::test::TempDir;
namespace fs = std::filesystem;

namespace {

const fs::path kAren = octet::test::shared_data("models/ctranslate2-aren-transliteration");

std::vector<float> read_all(const Ct2Model& model, const std::string& name) {
  const Ct2Variable* variable = model.find(name);
  REQUIRE_MESSAGE(variable != nullptr, name);
  std::vector<float> values(static_cast<size_t>(variable->elements()));
  model.read_rows_f32(*variable, 0, variable->rows(), values.data());
  return values;
}

// ---- Writing model.bin -------------------------------------------------------------------------

template <class T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

struct FakeVariable {
  std::string name;
  uint8_t dtype = 0;  // CTranslate2's DataType id
  std::vector<uint32_t> dims;
  std::string data;
  int64_t stored_size = -1;  // the byte (v >= 4) or element (v < 4) count to write; -1: the true one
};

struct FakeModel {
  uint32_t version = 6;
  std::string spec = "TransformerSpec";
  uint32_t revision = 7;
  std::vector<FakeVariable> variables;
  std::vector<std::pair<std::string, std::string>> aliases;
};

void put_string(std::string& out, const std::string& text) {
  const uint16_t length = static_cast<uint16_t>(text.size() + 1);
  out.append(reinterpret_cast<const char*>(&length), 2);
  out += text;
  out += '\0';
}
template <class T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

std::string serialize(const FakeModel& model) {
  std::string out;
  put<uint32_t>(out, model.version);
  put_string(out, model.spec);
  put<uint32_t>(out, model.revision);
  put<uint32_t>(out, static_cast<uint32_t>(model.variables.size()));
  for (const FakeVariable& variable : model.variables) {
    put_string(out, variable.name);
    put<uint8_t>(out, static_cast<uint8_t>(variable.dims.size()));
    for (uint32_t d : variable.dims) put<uint32_t>(out, d);
    if (model.version >= 4) {
      put<uint8_t>(out, variable.dtype);
      put<uint32_t>(out, static_cast<uint32_t>(variable.stored_size >= 0 ? variable.stored_size : variable.data.size()));
    } else {
      const uint8_t item_size = variable.dtype == 0 ? 4 : variable.dtype == 1 ? 1 : 2;
      put<uint8_t>(out, item_size);
      put<uint32_t>(out, static_cast<uint32_t>(variable.stored_size >= 0 ? variable.stored_size : variable.data.size() / item_size));
    }
    out += variable.data;
  }
  if (model.version >= 3) {
    put<uint32_t>(out, static_cast<uint32_t>(model.aliases.size()));
    for (const auto& [alias, target] : model.aliases) put_string(out, alias), put_string(out, target);
  }
  return out;
}

// A model of every dtype, scalar attributes of several types, an alias and its scale.
FakeModel synthetic_model() {
  FakeModel model;
  model.variables = {
      {"encoder/embeddings_0/weight", 0, {3, 4}, bytes_of(std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})},
      {"encoder/num_heads", 2, {}, bytes_of(std::vector<int16_t>{4})},
      {"encoder/pre_norm", 1, {}, bytes_of(std::vector<int8_t>{0})},
      {"encoder/activation", 1, {}, bytes_of(std::vector<int8_t>{3})},
      {"encoder/scale_embeddings", 1, {}, bytes_of(std::vector<int8_t>{0})},
      {"decoder/embeddings/weight", 1, {3, 4}, bytes_of(std::vector<int8_t>{127, -127, 0, 1, 2, 4, 8, 16, -1, -2, -3, -4})},
      {"decoder/embeddings/weight_scale", 0, {3}, bytes_of(std::vector<float>{127, 4, 0.5f})},
      {"decoder/num_heads", 3, {}, bytes_of(std::vector<int32_t>{2})},
      {"decoder/scale_embeddings", 0, {}, bytes_of(std::vector<float>{2.5f})},
      {"decoder/position_encodings/encodings", 5, {1, 4}, bytes_of(std::vector<uint16_t>{0x3f80, 0xc000, 0x3f00, 0})},
      {"decoder/layer_0/ffn/linear_0/weight", 2, {2, 2}, bytes_of(std::vector<int16_t>{10, 20, -30, 40})},
      {"decoder/layer_0/ffn/linear_0/weight_scale", 0, {}, bytes_of(std::vector<float>{10})},
      {"decoder/layer_0/ffn/linear_1/weight", 4, {1, 2}, bytes_of(std::vector<uint16_t>{0x3c00, 0xb800})},
      {"decoder/layer_0/ffn/linear_2/weight", 2, {1, 2}, bytes_of(std::vector<int16_t>{1000, -500})},
      {"decoder/lengths", 3, {2}, bytes_of(std::vector<int32_t>{1, 2})},
  };
  model.aliases = {{"decoder/projection/weight", "decoder/embeddings/weight"}};
  return model;
}

// A folder with this model.bin and a shared vocabulary of three tokens; returns the folder.
fs::path write_model(const TempDir& dir, const std::string& model_bin, const std::string& config = "{\"unk_token\": \"<s>\"}") {
  static int counter = 0;
  const fs::path folder = dir.path() / ("model" + std::to_string(counter++));
  fs::create_directories(folder);
  octet::test::write_bytes(folder / "model.bin", model_bin.data(), model_bin.size());
  const std::string vocabulary = R"(["<blank>", "<s>", "</s>"])";
  octet::test::write_bytes(folder / "shared_vocabulary.json", vocabulary.data(), vocabulary.size());
  if (!config.empty()) octet::test::write_bytes(folder / "config.json", config.data(), config.size());
  return folder;
}

}  // namespace

TEST_CASE("the real float32 aren model: header, every variable, vocabularies and attributes") {
  const Ct2Model model(kAren);
  CHECK(model.binary_version() == 2);
  CHECK(model.spec_name() == "TransformerBase");
  CHECK(model.spec_revision() == 2);
  CHECK(model.variables().size() == 200);
  CHECK(model.aliases().empty());
  CHECK(model.config().empty());  // binary version 2 predates config.json

  // 6 + 6 layers, d_model 32, FFN 128; self-attention fuses q, k, v (linear_0: [3 * 32, 32]) and
  // the decoder's cross-attention splits q (linear_0) from the fused k, v (linear_1: [2 * 32, 32]).
  for (int layer = 0; layer < 6; ++layer) {
    for (const std::string stack : {"encoder", "decoder"}) {
      const std::string prefix = stack + "/layer_" + std::to_string(layer) + "/";
      CHECK_NOTHROW(model.require(prefix + "self_attention/linear_0/weight", {96, 32}));
      CHECK_NOTHROW(model.require(prefix + "self_attention/linear_0/bias", {96}));
      CHECK_NOTHROW(model.require(prefix + "self_attention/linear_1/weight", {32, 32}));
      CHECK_NOTHROW(model.require(prefix + "self_attention/layer_norm/gamma", {32}));
      CHECK_NOTHROW(model.require(prefix + "self_attention/layer_norm/beta", {32}));
      CHECK_NOTHROW(model.require(prefix + "ffn/linear_0/weight", {128, 32}));
      CHECK_NOTHROW(model.require(prefix + "ffn/linear_1/weight", {32, 128}));
      CHECK_NOTHROW(model.require(prefix + "ffn/layer_norm/gamma", {32}));
    }
    const std::string cross = "decoder/layer_" + std::to_string(layer) + "/attention/";
    CHECK_NOTHROW(model.require(cross + "linear_0/weight", {32, 32}));
    CHECK_NOTHROW(model.require(cross + "linear_1/weight", {64, 32}));
    CHECK_NOTHROW(model.require(cross + "linear_2/weight", {32, 32}));
    CHECK_NOTHROW(model.require(cross + "layer_norm/beta", {32}));
  }
  CHECK(model.find("encoder/layer_6/ffn/linear_0/weight") == nullptr);
  CHECK_NOTHROW(model.require("encoder/layer_norm/gamma", {32}));
  CHECK_NOTHROW(model.require("decoder/layer_norm/beta", {32}));
  CHECK_NOTHROW(model.require("decoder/projection/bias", {43}));
  const Ct2Variable& source_embeddings = model.require("encoder/embeddings/weight", {51, 32});
  const Ct2Variable& target_embeddings = model.require("decoder/embeddings/weight", {43, 32});
  CHECK_NOTHROW(model.require("decoder/projection/weight", {43, 32}));
  for (const auto& [name, variable] : model.variables()) CHECK_MESSAGE(variable.dtype == Ct2DataType::Float32, name);

  // The vocabulary files lack <unk>, which CTranslate2 appends: 50 + 1 and 42 + 1 tokens.
  CHECK(model.source_vocabulary().size() == static_cast<size_t>(source_embeddings.rows()));
  CHECK(model.target_vocabulary().size() == static_cast<size_t>(target_embeddings.rows()));
  CHECK(model.source_vocabulary()[0] == "<blank>");
  CHECK(model.source_vocabulary()[1] == "<s>");
  CHECK(model.target_vocabulary()[2] == "</s>");
  CHECK(model.source_vocabulary().back() == "<unk>");
  CHECK(model.target_vocabulary().back() == "<unk>");
  CHECK(model.source_vocabulary()[4] == "\xd8\xa7");  // the Arabic alef of line 5

  // No attributes are stored in a revision-2 file: the spec name and CTranslate2's defaults hold.
  for (const char* stack : {"encoder", "decoder"}) {
    const Ct2StackAttributes attributes = model.stack_attributes(stack);
    CHECK(attributes.num_heads == 8);
    CHECK(attributes.pre_norm);
    CHECK(attributes.activation == 0);
    CHECK(attributes.embeddings_scale == doctest::Approx(std::sqrt(32.0f)));
    CHECK_FALSE(attributes.learned_positions);
  }

  // The first weight, straight from the file: bytes 70 fa 1a 3e.
  float first;
  std::vector<float> row(32);
  model.read_rows_f32(target_embeddings, 0, 1, row.data());
  std::memcpy(&first, target_embeddings.data, 4);
  CHECK(row[0] == first);
  const uint32_t bits = 0x3e1afa70;
  CHECK(std::memcmp(&first, &bits, 4) == 0);
}

TEST_CASE("the real int8 aren model dequantizes to within one quantization step of the float32 model") {
  const Ct2Model f32(kAren);
  // int8/ holds only model.bin: give it the vocabularies beside it.
  TempDir dir("ct2_int8");
  for (const char* name : {"int8/model.bin", "source_vocabulary.txt", "target_vocabulary.txt"})
    fs::copy_file(kAren / name, dir.path() / fs::path(name).filename());
  const Ct2Model i8(dir.path());
  CHECK(i8.binary_version() == 2);
  CHECK(i8.spec_name() == "TransformerBase");
  // Every 2-D "weight" (69 of them) is int8 with a float32 scale per row.
  CHECK(i8.variables().size() == 200 + 69);
  int quantized = 0;
  for (const auto& [name, reference] : f32.variables()) {
    const Ct2Variable* variable = i8.find(name);
    REQUIRE_MESSAGE(variable != nullptr, name);
    CHECK(variable->shape == reference.shape);
    if (!name.ends_with("weight")) {  // biases and norms stay float32, bit for bit
      CHECK(variable->dtype == Ct2DataType::Float32);
      CHECK(std::memcmp(variable->data, reference.data, reference.size) == 0);
      continue;
    }
    ++quantized;
    CHECK(variable->dtype == Ct2DataType::Int8);
    CHECK_NOTHROW(i8.require(name + "_scale", {reference.rows()}));
    const std::vector<float> exact = read_all(f32, name), dequantized = read_all(i8, name);
    // scale = 127 / max|row|, q = w * scale cast to int8, read back as q / scale. Binary versions
    // before 5 truncate that cast instead of rounding it, so the bound is one step, max|row| / 127
    // (half a step from version 5 on), plus f32 rounding of the product and the quotient.
    const double steps = i8.binary_version() >= 5 ? 0.5 : 1.0;
    const int64_t cols = reference.cols();
    double worst_ratio = 0;
    for (int64_t r = 0; r < reference.rows(); ++r) {
      float row_max = 0;
      for (int64_t c = 0; c < cols; ++c) row_max = std::max(row_max, std::fabs(exact[r * cols + c]));
      const double bound = steps * row_max / 127 + 4 * row_max * 1.2e-7;
      for (int64_t c = 0; c < cols; ++c) {
        const double error = std::fabs(exact[r * cols + c] - dequantized[r * cols + c]);
        CHECK_MESSAGE(error <= bound, name, " row ", r, " col ", c);
        if (row_max > 0) worst_ratio = std::max(worst_ratio, error / (row_max / 127));
      }
    }
    CHECK_MESSAGE(worst_ratio > 0.5, name, ": truncation is expected to exceed half a step somewhere");
  }
  CHECK(quantized == 69);
}

TEST_CASE("a synthetic version-6 model: every dtype, scalar attributes, aliases, config and vocabulary") {
  TempDir dir("ct2_synthetic");
  const Ct2Model model(write_model(dir, serialize(synthetic_model())));
  CHECK(model.binary_version() == 6);
  CHECK(model.spec_name() == "TransformerSpec");
  CHECK(model.spec_revision() == 7);
  CHECK(model.variables().size() == 15);
  CHECK(model.aliases().at("decoder/projection/weight") == "decoder/embeddings/weight");
  // config.json names "<s>" the unknown token, which the vocabulary has: nothing is appended.
  CHECK(model.config().at("unk_token") == "<s>");
  CHECK(model.source_vocabulary() == std::vector<std::string>{"<blank>", "<s>", "</s>"});
  CHECK(model.target_vocabulary() == model.source_vocabulary());

  const Ct2StackAttributes encoder = model.stack_attributes("encoder");
  CHECK(encoder.num_heads == 4);
  CHECK_FALSE(encoder.pre_norm);
  CHECK(encoder.activation == 3);
  CHECK(encoder.embeddings_scale == 1.0f);  // the flag is stored, and off
  CHECK_FALSE(encoder.learned_positions);
  const Ct2StackAttributes decoder = model.stack_attributes("decoder");
  CHECK(decoder.num_heads == 2);
  CHECK(decoder.pre_norm);      // absent: CTranslate2's default
  CHECK(decoder.activation == 0);
  CHECK(decoder.embeddings_scale == 2.5f);  // a float: the scale itself
  CHECK(decoder.learned_positions);
  CHECK(model.scalar("encoder/num_heads") == 4.0);
  CHECK_FALSE(model.scalar("missing").has_value());
  check_error([&] { model.scalar("decoder/lengths"); }, ErrorCode::Format, "is not a scalar");

  CHECK(read_all(model, "encoder/embeddings_0/weight") == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  const std::vector<float> embeddings = {1, -1, 0, 1.0f / 127, 0.5f, 1, 2, 4, -2, -4, -6, -8};
  CHECK(read_all(model, "decoder/embeddings/weight") == embeddings);
  CHECK(read_all(model, "decoder/projection/weight") == embeddings);  // through the alias and its scale
  CHECK(model.find("decoder/projection/weight_scale") == model.find("decoder/embeddings/weight_scale"));
  float second_row[4];
  model.read_rows_f32(*model.find("decoder/embeddings/weight"), 1, 1, second_row);
  CHECK(std::vector<float>(second_row, second_row + 4) == std::vector<float>{0.5f, 1, 2, 4});
  CHECK(read_all(model, "decoder/layer_0/ffn/linear_0/weight") == std::vector<float>{1, 2, -3, 4});  // one scale
  CHECK(read_all(model, "decoder/layer_0/ffn/linear_2/weight") == std::vector<float>{1, -0.5f});    // int16 default 1000
  CHECK(read_all(model, "decoder/layer_0/ffn/linear_1/weight") == std::vector<float>{1, -0.5f});    // float16
  CHECK(read_all(model, "decoder/position_encodings/encodings") == std::vector<float>{1, -2, 0.5f, 0});  // bfloat16
  check_error([&] { read_all(model, "decoder/lengths"); }, ErrorCode::Unsupported, "is int32");
}

TEST_CASE("binary versions 3 (aliases, item sizes) and the vocabulary variants read") {
  TempDir dir("ct2_versions");
  FakeModel model = synthetic_model();
  model.version = 3;
  model.variables.erase(model.variables.begin() + 7, model.variables.end());  // item sizes cannot say int32, float16, bfloat16
  const fs::path folder = write_model(dir, serialize(model), "");
  fs::remove(folder / "shared_vocabulary.json");
  const std::string source = "a\r\nb\r\n", target = "x\ny\r\n";
  octet::test::write_bytes(folder / "source_vocabulary.txt", source.data(), source.size());
  octet::test::write_bytes(folder / "target_vocabulary.txt", target.data(), target.size());
  const Ct2Model loaded(folder);
  CHECK(loaded.binary_version() == 3);
  CHECK(read_all(loaded, "decoder/projection/weight")[0] == 1.0f);
  // Carriage returns go only when every line has one; <unk> is appended to both.
  CHECK(loaded.source_vocabulary() == std::vector<std::string>{"a", "b", "<unk>"});
  CHECK(loaded.target_vocabulary() == std::vector<std::string>{"x", "y\r", "<unk>"});
}

TEST_CASE("hostile model.bin files and folders give clean errors") {
  TempDir dir("ct2_hostile");
  const auto load = [&](const FakeModel& model) {
    const fs::path folder = write_model(dir, serialize(model));
    return [folder] { Ct2Model{folder}; };
  };
  const FakeModel good = synthetic_model();
  const std::string good_bytes = serialize(good);
  // Every prefix of a valid file fails cleanly.
  for (size_t length = 0; length < good_bytes.size(); ++length) {
    CAPTURE(length);
    const fs::path folder = write_model(dir, good_bytes.substr(0, length));
    check_error([&] { Ct2Model{folder}; }, ErrorCode::Format, "");
  }
  check_error([&] { Ct2Model{write_model(dir, good_bytes + "x")}; }, ErrorCode::Format, "1 bytes follow the last record");

  FakeModel m = good;
  m.version = 7;
  check_error(load(m), ErrorCode::Unsupported, "binary version 7");
  m.version = 1;
  check_error(load(m), ErrorCode::Unsupported, "binary version 1");
  m = good, m.revision = 1;
  check_error(load(m), ErrorCode::Unsupported, "spec revision 1");

  m = good, m.variables[0].dims = std::vector<uint32_t>(200, 1);
  check_error(load(m), ErrorCode::Format, "has rank 200");
  m = good, m.variables[0].dims = {0xFFFFFFFF, 0xFFFFFFFF};
  check_error(load(m), ErrorCode::Format, "its shape overflows");
  m = good, m.variables[0].dims = {65536, 65536};
  check_error(load(m), ErrorCode::Format, "needs 17179869184");
  m = good, m.variables[0].stored_size = 44;
  check_error(load(m), ErrorCode::Format, "holds 44 bytes but shape [3, 4] of float32 needs 48");
  m = good, m.variables[0].dims = {1073741823}, m.variables[0].stored_size = 4294967292;
  check_error(load(m), ErrorCode::Format, "truncated: variable data needs 4294967292 bytes");
  m = good, m.variables[0].dtype = 6;
  check_error(load(m), ErrorCode::Format, "unknown dtype 6");
  m = good, m.version = 3, m.variables.resize(1), m.variables[0].stored_size = 13;
  check_error(load(m), ErrorCode::Format, "holds 13 elements");
  m = good, m.variables.push_back(good.variables[0]);
  check_error(load(m), ErrorCode::Format, "appears twice");
  m = good, m.aliases.push_back({"x", "nothing"});
  check_error(load(m), ErrorCode::Format, "names no variable");
  m = good, m.aliases.push_back({"encoder/num_heads", "decoder/num_heads"});
  check_error(load(m), ErrorCode::Format, "reuses a name");
  m = good, m.variables[0].name = std::string("a\0b", 3);
  check_error(load(m), ErrorCode::Format, "has a NUL inside");

  std::string unterminated = good_bytes;  // the spec name's NUL replaced
  unterminated[4 + 2 + good.spec.size()] = 'x';
  check_error([&] { Ct2Model{write_model(dir, unterminated)}; }, ErrorCode::Format, "not NUL-terminated");
  std::string bad_item_size = serialize([&] {
    FakeModel v3 = good;
    v3.version = 3, v3.variables.resize(1);
    return v3;
  }());
  bad_item_size[4 + 2 + good.spec.size() + 1 + 4 + 4 + 2 + good.variables[0].name.size() + 1 + 1 + 8] = 3;
  check_error([&] { Ct2Model{write_model(dir, bad_item_size)}; }, ErrorCode::Format, "unknown item size 3");

  // Scales that cannot dequantize.
  m = good, m.variables.erase(m.variables.begin() + 6);  // decoder/embeddings/weight_scale
  {
    const Ct2Model model(write_model(dir, serialize(m)));
    check_error([&] { read_all(model, "decoder/embeddings/weight"); }, ErrorCode::Format, "has no \"decoder/embeddings/weight_scale\"");
  }
  m = good, m.variables[6].dims = {2}, m.variables[6].data.resize(8);
  {
    const Ct2Model model(write_model(dir, serialize(m)));
    check_error([&] { read_all(model, "decoder/embeddings/weight"); }, ErrorCode::Format, "not a float scale per row");
  }
  m = good, m.variables[6].data = bytes_of(std::vector<float>{1, 0, 1});
  {
    const Ct2Model model(write_model(dir, serialize(m)));
    check_error([&] { read_all(model, "decoder/embeddings/weight"); }, ErrorCode::Format, "row 1 is not a positive finite");
  }

  // Folders.
  check_error([&] { Ct2Model{write_model(dir, good_bytes, "[1]")}; }, ErrorCode::Format, "config.json: not a JSON object");
  const fs::path no_vocabulary = write_model(dir, good_bytes);
  fs::remove(no_vocabulary / "shared_vocabulary.json");
  check_error([&] { Ct2Model{no_vocabulary}; }, ErrorCode::Io, "has no shared_vocabulary");
  const fs::path bad_vocabulary = write_model(dir, good_bytes);
  octet::test::write_bytes(bad_vocabulary / "shared_vocabulary.json", "[1]", 3);
  check_error([&] { Ct2Model{bad_vocabulary}; }, ErrorCode::Format, "token 0 is not a string");
  check_error([&] { Ct2Model{dir.path() / "nowhere"}; }, ErrorCode::Io, "cannot open");
}
