// The translation side of the converter (the "encdec" architecture): MarianMT folders
// (tests/data/marian, made by transformers) from safetensors and from pytorch_model.bin, and the
// CTranslate2 aren-transliteration model in f32 and int8. Tensors are checked against the source
// files, read here through the source readers but mapped by hand; tokenization against
// MarianTokenizer's goldens; and broken or hostile folders must give clean errors.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "convert/convert.h"
#include "convert/sources/ctranslate2.h"
#include "convert/sources/pytorch.h"
#include "convert/sources/safetensors.h"
#include "engine/error.h"
#include "engine/qbin.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace octet;
using octet::test::check_error;
using octet::test::TempDir;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const fs::path kMarian = octet::test::test_data("marian");
const fs::path kAren = octet::test::shared_data("models/ctranslate2-aren-transliteration");

convert::Options all_f32() {
  convert::Options options;
  options.quant = DType::F32;
  return options;
}

fs::path convert_to(const fs::path& input, const fs::path& output, const convert::Options& options = all_f32()) {
  convert::convert(input.string(), output.string(), options, nullptr);
  return output;
}

std::vector<float> tensor_f32(const qbin::File& file, const std::string& name) {
  const qbin::TensorInfo* info = file.find(name);
  REQUIRE_MESSAGE(info != nullptr, name);
  REQUIRE_MESSAGE(info->dtype == DType::F32, name);
  std::vector<float> values(static_cast<size_t>(info->elements()));
  std::memcpy(values.data(), file.data(*info), info->size);
  return values;
}

double max_difference(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

fs::path copy_folder(const fs::path& from, const fs::path& to) {
  fs::create_directories(to.parent_path());
  fs::copy(from, to, fs::copy_options::recursive);
  for (const auto& entry : fs::recursive_directory_iterator(to))  // fixtures may be read-only
    fs::permissions(entry.path(), fs::perms::owner_write, fs::perm_options::add);
  return to;
}

// ---- Marian -----------------------------------------------------------------------------------

std::vector<std::string> marian_fixtures() {
  std::vector<std::string> names;
  for (const char* name : {"marian_shared", "marian_separate"})
    if (fs::exists(kMarian / name / "config.json")) names.push_back(name);
  REQUIRE_FALSE(names.empty());
  return names;
}

// transformers' MarianSinusoidalPositionalEmbedding, in double as numpy computes it.
std::vector<float> marian_positions(int64_t rows, int64_t dim) {
  std::vector<float> table(static_cast<size_t>(rows * dim));
  const int64_t sentinel = (dim + 1) / 2;
  for (int64_t pos = 0; pos < rows; ++pos)
    for (int64_t j = 0; j < dim; ++j) {
      const double angle = static_cast<double>(pos) / std::pow(10000.0, 2.0 * static_cast<double>(j / 2) / static_cast<double>(dim));
      const int64_t column = j % 2 == 0 ? j / 2 : sentinel + j / 2;
      table[static_cast<size_t>(pos * dim + column)] = static_cast<float>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  return table;
}

std::vector<float> safetensors_values(const convert::SafetensorsCheckpoint& checkpoint, const std::string& name) {
  const convert::SafetensorsTensor* tensor = checkpoint.find(name);
  REQUIRE_MESSAGE(tensor != nullptr, name);
  std::vector<float> values(static_cast<size_t>(tensor->elements()));
  convert::read_rows_f32(*tensor, 0, tensor->rows(), values.data());
  return values;
}

// Octet's name -> transformers' for the tensors of one Marian layer.
std::string hf_layer_name(const std::string& name) {
  static const std::vector<std::pair<std::string, std::string>> kParts = {
      {"self_attn_norm", "self_attn_layer_norm"}, {"cross_attn_norm", "encoder_attn_layer_norm"},
      {"attn_norm", "self_attn_layer_norm"},      {"ffn_norm", "final_layer_norm"},
      {"cross_attn_q", "encoder_attn.q_proj"},    {"cross_attn_k", "encoder_attn.k_proj"},
      {"cross_attn_v", "encoder_attn.v_proj"},    {"cross_attn_out", "encoder_attn.out_proj"},
      {"self_attn_q", "self_attn.q_proj"},        {"self_attn_k", "self_attn.k_proj"},
      {"self_attn_v", "self_attn.v_proj"},        {"self_attn_out", "self_attn.out_proj"},
      {"attn_q", "self_attn.q_proj"},             {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},             {"attn_out", "self_attn.out_proj"},
      {"ffn_up", "fc1"},                          {"ffn_down", "fc2"}};
  const size_t layer_end = name.find('.', name.find(".layers.") + 8);
  const size_t part_end = name.rfind('.');
  const std::string part = name.substr(layer_end + 1, part_end - layer_end - 1);
  for (const auto& [octet_part, hf_part] : kParts)
    if (part == octet_part) return "model." + name.substr(0, layer_end + 1) + hf_part + name.substr(part_end);
  FAIL("unmapped tensor " << name);
  return {};
}

TEST_CASE("Marian: safetensors and pytorch_model.bin give byte-identical files") {
  for (const std::string& name : marian_fixtures()) {
    CAPTURE(name);
    TempDir temp("marian_bytes");
    // The same folder name, since it is the model's name in the metadata.
    const fs::path pytorch_only = copy_folder(kMarian / name, temp / "pytorch" / name);
    fs::remove(pytorch_only / "model.safetensors");
    for (DType quant : {DType::F32, DType::Q8_0, DType::Q4_0}) {
      convert::Options options;
      options.quant = quant;
      const auto from_safetensors = test::read_bytes(convert_to(kMarian / name, temp / "a.qbin", options));
      const auto from_pytorch = test::read_bytes(convert_to(pytorch_only, temp / "b.qbin", options));
      CHECK(from_safetensors.size() == from_pytorch.size());
      CHECK(from_safetensors == from_pytorch);
    }
  }
}

TEST_CASE("Marian: every tensor equals the checkpoint's, positions equal transformers' table") {
  for (const std::string& name : marian_fixtures()) {
    CAPTURE(name);
    TempDir temp("marian_tensors");
    const auto file = qbin::File::open(convert_to(kMarian / name, temp / "model.qbin").string());
    const json config = test::read_json(kMarian / name / "config.json");
    const convert::SafetensorsCheckpoint checkpoint(kMarian / name);
    const bool shared = config.value("share_encoder_decoder_embeddings", true);
    const int64_t dim = config["d_model"], positions = config["max_position_embeddings"];

    const std::vector<float> table = marian_positions(positions, dim);
    CHECK(max_difference(tensor_f32(*file, "encoder.position.weight"), table) < 1e-6);
    CHECK(max_difference(tensor_f32(*file, "decoder.position.weight"), table) < 1e-6);
    // Older exports store the table too: it is the same one.
    const convert::PytorchCheckpoint pytorch(kMarian / name);
    if (const convert::PytorchTensor* stored = pytorch.find("model.encoder.embed_positions.weight")) {
      std::vector<float> values(static_cast<size_t>(stored->elements()));
      convert::read_rows_f32(*stored, 0, stored->rows(), values.data());
      CHECK(max_difference(values, table) < 1e-6);
    }

    CHECK(tensor_f32(*file, "encoder.embedding.weight") ==
          safetensors_values(checkpoint, shared ? "model.shared.weight" : "model.encoder.embed_tokens.weight"));
    CHECK((file->find("decoder.embedding.weight") == nullptr) == shared);
    if (!shared)
      CHECK(tensor_f32(*file, "decoder.embedding.weight") == safetensors_values(checkpoint, "model.decoder.embed_tokens.weight"));
    if (config.value("tie_word_embeddings", true))
      CHECK(file->find("output.weight") == nullptr);
    else
      CHECK(tensor_f32(*file, "output.weight") == safetensors_values(checkpoint, "lm_head.weight"));
    CHECK(tensor_f32(*file, "output.bias") == safetensors_values(checkpoint, "final_logits_bias"));

    int checked = 0;
    for (const qbin::TensorInfo& tensor : file->tensors()) {
      if (tensor.name.find(".layers.") == std::string::npos) continue;
      CHECK_MESSAGE(tensor_f32(*file, tensor.name) == safetensors_values(checkpoint, hf_layer_name(tensor.name)), tensor.name);
      ++checked;
    }
    // Per encoder layer: 4 projections + norm + 2 FFN linears + norm, each a weight and a bias;
    // the decoder adds cross-attention's 4 projections + norm.
    CHECK(checked == config["encoder_layers"].get<int>() * 16 + config["decoder_layers"].get<int>() * 26);
  }
}

TEST_CASE("Marian: the embedded tokenizers reproduce MarianTokenizer's ids") {
  for (const std::string& name : marian_fixtures()) {
    CAPTURE(name);
    TempDir temp("marian_goldens");
    convert::Options options;  // the default q8_0: tokenizers do not depend on it
    const auto file = qbin::File::open(convert_to(kMarian / name, temp / "model.qbin", options).string());
    const auto source = Tokenizer::from_metadata(file->metadata(), "source_tokenizer");
    const auto target = Tokenizer::from_metadata(file->metadata(), "target_tokenizer");
    const json goldens = test::read_json(kMarian / name / "goldens.json");
    REQUIRE(goldens["cases"].size() >= 20);
    for (const json& golden : goldens["cases"]) {
      CAPTURE(golden["text"].get<std::string>());
      CHECK(source->encode(golden["text"].get<std::string>(), true, true) == golden["input_ids"].get<std::vector<int32_t>>());
      CHECK(target->decode(golden["greedy"]["ids"].get<std::vector<int32_t>>()) == golden["greedy"]["text"].get<std::string>());
    }
    REQUIRE(goldens["targets"].size() >= 5);
    for (const json& golden : goldens["targets"]) {
      CAPTURE(golden["text"].get<std::string>());
      CHECK(target->encode(golden["text"].get<std::string>(), true, true) == golden["ids"].get<std::vector<int32_t>>());
      CHECK(target->decode(golden["ids"].get<std::vector<int32_t>>()) == golden["decoded"].get<std::string>());
    }
    CHECK(file->metadata().i32("encdec.eos_id") == goldens["eos_token_id"].get<int32_t>());
    CHECK(file->metadata().i32("encdec.pad_id") == goldens["pad_token_id"].get<int32_t>());
    CHECK(file->metadata().i32("encdec.decoder_start_id") == goldens["decoder_start_token_id"].get<int32_t>());
  }
}

TEST_CASE("Marian: metadata") {
  TempDir temp("marian_metadata");
  const auto file = qbin::File::open(convert_to(kMarian / "marian_shared", temp / "model.qbin").string());
  const qbin::Metadata& m = file->metadata();
  CHECK(m.str("general.architecture") == "encdec");
  CHECK(m.str("general.source") == "huggingface");
  CHECK(m.str("general.name") == "marian_shared");
  CHECK(m.u32("encdec.d_model") == 32);
  CHECK(m.u32("encdec.n_heads") == 4);
  CHECK(m.u32("encdec.ffn_dim") == 64);
  CHECK(m.u32("encdec.encoder_layers") == 2);
  CHECK(m.u32("encdec.decoder_layers") == 2);
  CHECK(m.u32("encdec.source_vocab_size") == 407);
  CHECK(m.u32("encdec.target_vocab_size") == 407);
  CHECK(m.u32("encdec.max_positions") == 64);
  CHECK_FALSE(m.boolean("encdec.pre_norm"));
  CHECK(m.str("encdec.activation") == "swish");
  CHECK(m.f32("encdec.embedding_scale") == doctest::Approx(std::sqrt(32.0)));
  CHECK(m.f32("encdec.norm_eps") == doctest::Approx(1e-5));
  CHECK(m.i32("encdec.decoder_start_id") == 406);
  CHECK(m.i32("encdec.eos_id") == 0);
  CHECK(m.i32("encdec.pad_id") == 406);
  CHECK(m.i32("encdec.unk_id") == 1);
  CHECK(m.u32("generation.num_beams") == 4);
  CHECK(m.u32("generation.max_length") == 512);
  CHECK(m.i32_array("generation.bad_words_ids") == std::vector<int32_t>{406});
  CHECK(m.i32("generation.forced_eos_token_id") == 0);
  CHECK_FALSE(m.has("generation.length_penalty"));  // only what the file sets
  for (const char* prefix : {"source_tokenizer", "target_tokenizer"}) {
    CAPTURE(prefix);
    const std::string p = prefix;
    CHECK(m.str(p + ".kind") == "sentencepiece");
    CHECK(m.str_array(p + ".vocab").size() == 407);
    CHECK(m.i32_array(p + ".eos_ids") == std::vector<int32_t>{0});
    CHECK(m.boolean(p + ".add_eos"));
  }
  const std::string source_spm = test::read_text(kMarian / "marian_shared" / "source.spm");
  const qbin::Bytes& stored = m.bytes("source_tokenizer.sentencepiece.model");
  CHECK(std::string(stored.begin(), stored.end()) == source_spm);
}

// ---- CTranslate2 ------------------------------------------------------------------------------

// CTranslate2's SinusoidalPositionEncoder (src/layers/common.cc), in float as it computes it.
std::vector<float> ct2_positions(int64_t rows, int64_t depth) {
  const float increment = std::log(10000.0f) / static_cast<float>(depth / 2 - 1);
  std::vector<float> table(static_cast<size_t>(rows * depth));
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < depth / 2; ++i) {
      const float scaled = static_cast<float>(t + 1) * std::exp(-increment * static_cast<float>(i));
      table[static_cast<size_t>(t * depth + i)] = std::sin(scaled);
      table[static_cast<size_t>(t * depth + depth / 2 + i)] = std::cos(scaled);
    }
  return table;
}

// Rows [first, first + count) (or, for a vector, elements) of a CTranslate2 variable, as f32.
std::vector<float> ct2_values(const convert::Ct2Model& model, const std::string& name, int64_t first = 0, int64_t count = -1) {
  const convert::Ct2Variable* variable = model.find(name);
  REQUIRE_MESSAGE(variable != nullptr, name);
  std::vector<float> all(static_cast<size_t>(variable->elements()));
  model.read_rows_f32(*variable, 0, variable->rows(), all.data());
  const int64_t unit = variable->shape.size() == 1 ? 1 : variable->cols();
  if (count < 0) count = variable->elements() / unit - first;
  return {all.begin() + first * unit, all.begin() + (first + count) * unit};
}

// Octet's tensor -> the CTranslate2 variable and slice it comes from (d: d_model).
std::vector<float> ct2_source(const convert::Ct2Model& model, const std::string& name, int64_t d) {
  const bool bias = name.ends_with(".bias");
  const std::string suffix = bias ? "/bias" : "/weight";
  if (name == "output.weight" || name == "output.bias") return ct2_values(model, "decoder/projection" + suffix);
  const std::string stack = name.substr(0, name.find('.'));
  if (name.find(".layers.") == std::string::npos) {
    if (name.find("embedding.weight") != std::string::npos) return ct2_values(model, stack + "/embeddings/weight");
    return ct2_values(model, stack + "/layer_norm" + (bias ? "/beta" : "/gamma"));
  }
  const size_t layer_start = name.find(".layers.") + 8, layer_end = name.find('.', layer_start);
  const std::string layer = stack + "/layer_" + name.substr(layer_start, layer_end - layer_start) + "/";
  const std::string part = name.substr(layer_end + 1, name.rfind('.') - layer_end - 1);
  const std::string norm = bias ? "/layer_norm/beta" : "/layer_norm/gamma";
  const std::string self = layer + "self_attention", cross = layer + "attention";
  if (part == "ffn_up") return ct2_values(model, layer + "ffn/linear_0" + suffix);
  if (part == "ffn_down") return ct2_values(model, layer + "ffn/linear_1" + suffix);
  if (part == "ffn_norm") return ct2_values(model, layer + "ffn" + norm);
  if (part == "attn_norm" || part == "self_attn_norm") return ct2_values(model, self + norm);
  if (part == "cross_attn_norm") return ct2_values(model, cross + norm);
  if (part == "attn_out" || part == "self_attn_out") return ct2_values(model, self + "/linear_1" + suffix);
  if (part == "cross_attn_out") return ct2_values(model, cross + "/linear_2" + suffix);
  const int64_t slot = part.ends_with("_q") ? 0 : part.ends_with("_k") ? 1 : 2;
  if (part.starts_with("cross")) {
    if (slot == 0) return ct2_values(model, cross + "/linear_0" + suffix);
    return ct2_values(model, cross + "/linear_1" + suffix, (slot - 1) * d, d);
  }
  return ct2_values(model, self + "/linear_0" + suffix, slot * d, d);
}

TEST_CASE("CTranslate2 aren: f32 tensors are the model's variables, split and renamed") {
  TempDir temp("ct2_f32");
  const auto file = qbin::File::open(convert_to(kAren, temp / "aren.qbin").string());
  const convert::Ct2Model model(kAren);
  const qbin::Metadata& m = file->metadata();
  CHECK(m.str("general.architecture") == "encdec");
  CHECK(m.str("general.source") == "ctranslate2");
  CHECK(m.u32("encdec.d_model") == 32);
  CHECK(m.u32("encdec.n_heads") == 8);
  CHECK(m.u32("encdec.ffn_dim") == 128);
  CHECK(m.u32("encdec.encoder_layers") == 6);
  CHECK(m.u32("encdec.decoder_layers") == 6);
  CHECK(m.u32("encdec.source_vocab_size") == model.source_vocabulary().size());
  CHECK(m.u32("encdec.target_vocab_size") == model.target_vocabulary().size());
  CHECK(m.boolean("encdec.pre_norm"));
  CHECK(m.str("encdec.activation") == "relu");
  CHECK(m.f32("encdec.embedding_scale") == doctest::Approx(std::sqrt(32.0)));
  CHECK(m.f32("encdec.norm_eps") == doctest::Approx(1e-5));
  CHECK(m.i32("encdec.decoder_start_id") == 1);
  CHECK(m.i32("encdec.eos_id") == 2);
  CHECK(m.i32("encdec.unk_id") == static_cast<int32_t>(model.target_vocabulary().size()) - 1);  // appended
  CHECK(m.str("source_tokenizer.kind") == "whitespace");

  const int64_t positions = m.u32("encdec.max_positions");
  CHECK(max_difference(tensor_f32(*file, "encoder.position.weight"), ct2_positions(positions, 32)) < 1e-6);
  CHECK(max_difference(tensor_f32(*file, "decoder.position.weight"), ct2_positions(positions, 32)) < 1e-6);
  int compared = 0;
  for (const qbin::TensorInfo& tensor : file->tensors()) {
    if (tensor.name.find("position") != std::string::npos) continue;
    CHECK_MESSAGE(tensor_f32(*file, tensor.name) == ct2_source(model, tensor.name, 32), tensor.name);
    ++compared;
  }
  // Embeddings, 6 x 16 encoder and 6 x 26 decoder tensors, 2 final norms, the output head.
  CHECK(compared == 2 + 6 * 16 + 6 * 26 + 4 + 2);
}

TEST_CASE("CTranslate2 aren: int8 dequantizes to the f32 model within a step, then requantizes") {
  TempDir temp("ct2_int8");
  // int8/ holds only model.bin: the vocabularies are the f32 model's.
  const fs::path int8_folder = temp / "aren-int8";
  fs::create_directories(int8_folder);
  for (const char* file : {"int8/model.bin", "source_vocabulary.txt", "target_vocabulary.txt"})
    fs::copy_file(kAren / file, int8_folder / fs::path(file).filename());
  const auto f32 = qbin::File::open(convert_to(kAren, temp / "f32.qbin").string());
  const auto int8 = qbin::File::open(convert_to(int8_folder, temp / "int8.qbin").string());
  REQUIRE(f32->tensors().size() == int8->tensors().size());
  const convert::Ct2Model int8_model(int8_folder);
  for (const qbin::TensorInfo& tensor : f32->tensors()) {
    CAPTURE(tensor.name);
    const qbin::TensorInfo* other = int8->find(tensor.name);
    REQUIRE(other != nullptr);
    CHECK(other->shape == tensor.shape);
    const std::vector<float> exact = tensor_f32(*f32, tensor.name), dequantized = tensor_f32(*int8, tensor.name);
    // int8 rows carry q / scale with scale = 127 / max|row|, q truncated (CTranslate2 before
    // round_before_cast): within one step of the original.
    const int64_t cols = tensor.cols();
    double worst_steps = 0;
    for (int64_t row = 0; row < tensor.rows(); ++row) {
      float row_max = 0;
      for (int64_t c = 0; c < cols; ++c) row_max = std::max(row_max, std::fabs(exact[row * cols + c]));
      for (int64_t c = 0; c < cols; ++c)
        worst_steps = std::max(worst_steps, std::fabs(dequantized[row * cols + c] - exact[row * cols + c]) / (row_max / 127 + 1e-12));
    }
    CHECK(worst_steps <= 1.0001);
    if (tensor.name.find("position") == std::string::npos)
      CHECK(dequantized == ct2_source(int8_model, tensor.name, 32));
  }

  // Stored as q8_0: a second rounding, to blocks of 32 with an fp16 scale each.
  convert::Options q8;
  q8.quant = DType::Q8_0;
  const auto requantized = qbin::File::open(convert_to(int8_folder, temp / "q8.qbin", q8).string());
  const qbin::TensorInfo* weight = requantized->find("decoder.layers.0.cross_attn_k.weight");
  REQUIRE(weight != nullptr);
  CHECK(weight->dtype == DType::Q8_0);
  CHECK(requantized->metadata().str("general.quantization").starts_with("q8_0"));
}

TEST_CASE("CTranslate2 aren: whitespace tokenizers reproduce the published example") {
  TempDir temp("ct2_tokens");
  const auto file = qbin::File::open(convert_to(kAren, temp / "aren.qbin").string());
  const auto source = Tokenizer::from_metadata(file->metadata(), "source_tokenizer");
  const auto target = Tokenizer::from_metadata(file->metadata(), "target_tokenizer");
  const convert::Ct2Model model(kAren);
  auto ids_of = [](const std::vector<std::string>& vocabulary, const std::vector<std::string>& tokens) {
    std::vector<int32_t> ids;
    for (const std::string& token : tokens)
      ids.push_back(static_cast<int32_t>(std::find(vocabulary.begin(), vocabulary.end(), token) - vocabulary.begin()));
    return ids;
  };
  const std::vector<int32_t> source_ids = ids_of(model.source_vocabulary(), {"آ", "ت", "ز", "م", "و", "ن"});
  CHECK(source->encode("آ ت ز م و ن", true, false) == source_ids);  // no BOS/EOS on the source
  CHECK(source->encode("  آ ت\tز م و ن ", true, false) == source_ids);
  CHECK(source->encode("آ x", true, false).back() == model.source_vocabulary().size() - 1);  // <unk>

  std::vector<int32_t> output = ids_of(model.target_vocabulary(), {"a", "t", "z", "m", "o", "n"});
  output.insert(output.begin(), 1);  // <s>
  output.push_back(2);               // </s>
  CHECK(target->decode(output) == "a t z m o n");
  CHECK(target->decode(output, false) == "<s> a t z m o n </s>");
  CHECK(target->is_eos(2));
  CHECK(target->bos_id() == 1);
}

// ---- broken and hostile inputs -------------------------------------------------------------

void edit_json(const fs::path& path, const std::function<void(json&)>& edit) {
  json value = test::read_json(path);
  edit(value);
  const std::string text = value.dump();
  test::write_bytes(path, text.data(), text.size());
}

TEST_CASE("Marian: broken and hostile folders are clean errors, and leave no output behind") {
  TempDir temp("marian_hostile");
  int case_number = 0;
  // A fresh copy of marian_shared, changed by `edit`, must fail with `code` and `part` in the message.
  auto check_broken = [&](const std::function<void(const fs::path&)>& edit, ErrorCode code, const std::string& part) {
    const fs::path folder = copy_folder(kMarian / "marian_shared", temp / std::to_string(case_number++) / "marian_shared");
    edit(folder);
    const fs::path output = folder.parent_path() / "out.qbin";
    check_error([&] { convert_to(folder, output); }, code, part);
    CHECK_FALSE(fs::exists(output));
  };
  auto config = [](std::function<void(json&)> edit) {
    return [edit](const fs::path& folder) { edit_json(folder / "config.json", edit); };
  };
  auto write = [](const std::string& file, const std::string& text) {
    return [file, text](const fs::path& folder) { test::write_bytes(folder / file, text.data(), text.size()); };
  };

  check_broken(config([](json& c) { c["d_model"] = 1e12; }), ErrorCode::Format, "d_model");
  check_broken(config([](json& c) { c["d_model"] = 64; c["encoder_attention_heads"] = c["decoder_attention_heads"] = 4; }),
               ErrorCode::Format, "shape");
  check_broken(config([](json& c) { c["vocab_size"] = 1 << 30; }), ErrorCode::Format, "vocab_size");
  check_broken(config([](json& c) { c["max_position_embeddings"] = 100000000; }), ErrorCode::Format, "position table");
  check_broken(config([](json& c) { c["encoder_layers"] = -2; }), ErrorCode::Format, "encoder_layers");
  check_broken(config([](json& c) { c["encoder_attention_heads"] = c["decoder_attention_heads"] = 5; }), ErrorCode::Format,
               "heads");
  check_broken(config([](json& c) { c["decoder_attention_heads"] = 8; }), ErrorCode::Unsupported, "attention heads");
  check_broken(config([](json& c) { c["activation_function"] = "tanh"; }), ErrorCode::Unsupported, "activation_function");
  check_broken(config([](json& c) { c["activation_function"] = 3; }), ErrorCode::Format, "activation_function");
  check_broken(config([](json& c) { c["eos_token_id"] = 5000; }), ErrorCode::Format, "EOS token id 5000");
  check_broken(config([](json& c) { c["pad_token_id"] = 406.5; }), ErrorCode::Format, "pad_token_id");
  check_broken(config([](json& c) { c["decoder_start_token_id"] = 407; }), ErrorCode::Format, "decoder start");
  check_broken([](const fs::path& f) { fs::remove(f / "source.spm"); }, ErrorCode::Io, "source.spm");
  check_broken(write("target.spm", "not a model"), ErrorCode::Format, "SentencePiece");
  check_broken(write("vocab.json", "[\"a\", \"b\"]"), ErrorCode::Format, "not a JSON object");
  check_broken(write("vocab.json", "{\"a\": 0, \"b\": "), ErrorCode::Format, "not a JSON object");
  check_broken(write("vocab.json", "{\"</s>\": 0, \"<unk>\": -1}"), ErrorCode::Format, "<unk>");
  check_broken(write("vocab.json", "{\"</s>\": 0, \"<unk>\": 1e300}"), ErrorCode::Format, "<unk>");
  check_broken(write("vocab.json", "{\"</s>\": 0, \"<unk>\": 0, \"<pad>\": 2}"), ErrorCode::Format, "two tokens");
  check_broken(write("vocab.json", "{\"</s>\": 0, \"<pad>\": 1}"), ErrorCode::Format, "\"<unk>\"");
  check_broken(write("vocab.json", "{\"</s>\": 0, \"<unk>\": 1, \"<pad>\": 5000}"), ErrorCode::Format, "more than the model");
  check_broken([](const fs::path& f) { edit_json(f / "tokenizer_config.json", [](json& c) { c["separate_vocabs"] = true; }); },
               ErrorCode::Io, "target_vocab.json");
  check_broken([](const fs::path& f) { edit_json(f / "tokenizer_config.json", [](json& c) { c["eos_token"] = 7; }); },
               ErrorCode::Format, "eos_token");
  check_broken([](const fs::path& f) { edit_json(f / "generation_config.json", [](json& c) { c["bad_words_ids"] = "x"; }); },
               ErrorCode::Format, "bad_words_ids");
  check_broken([](const fs::path& f) { edit_json(f / "generation_config.json", [](json& c) { c["bad_words_ids"] = {{1, 9999}}; }); },
               ErrorCode::Format, "bad_words_ids");
  check_broken([](const fs::path& f) { edit_json(f / "generation_config.json", [](json& c) { c["num_beams"] = 0; }); },
               ErrorCode::Format, "num_beams");
  check_broken([](const fs::path& f) { fs::remove(f / "model.safetensors"), fs::remove(f / "pytorch_model.bin"); }, ErrorCode::Io,
               "no weights");
  check_broken([](const fs::path& f) { fs::resize_file(f / "model.safetensors", 1000); }, ErrorCode::Format, "model.safetensors");
  check_broken(
      [](const fs::path& f) {
        fs::remove(f / "model.safetensors");
        fs::resize_file(f / "pytorch_model.bin", fs::file_size(f / "pytorch_model.bin") / 2);
      },
      ErrorCode::Format, "pytorch_model.bin");
}

// model.bin (binary version 4, as CTranslate2 writes it) from a list of variables and aliases.
struct Ct2Record {
  std::string name;
  convert::Ct2DataType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

void write_ct2_model(const fs::path& path, const std::vector<Ct2Record>& variables,
                     const std::vector<std::pair<std::string, std::string>>& aliases) {
  std::vector<uint8_t> out;
  auto put = [&](const void* data, size_t size) {
    out.insert(out.end(), static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + size);
  };
  auto u32 = [&](uint32_t value) { put(&value, 4); };
  auto text = [&](const std::string& value) {
    const auto length = static_cast<uint16_t>(value.size() + 1);
    put(&length, 2);
    put(value.c_str(), value.size() + 1);
  };
  u32(4);
  text("TransformerSpec");
  u32(4);
  u32(static_cast<uint32_t>(variables.size()));
  for (const Ct2Record& variable : variables) {
    text(variable.name);
    out.push_back(static_cast<uint8_t>(variable.shape.size()));
    for (int64_t d : variable.shape) u32(static_cast<uint32_t>(d));
    out.push_back(static_cast<uint8_t>(variable.dtype));
    u32(static_cast<uint32_t>(variable.data.size()));
    put(variable.data.data(), variable.data.size());
  }
  u32(static_cast<uint32_t>(aliases.size()));
  for (const auto& [alias, name] : aliases) text(alias), text(name);
  test::write_bytes(path, out.data(), out.size());
}

std::vector<Ct2Record> aren_records() {
  const convert::Ct2Model model(kAren);
  std::vector<Ct2Record> records;
  for (const auto& [name, variable] : model.variables())
    records.push_back({name, variable.dtype, variable.shape, {variable.data, variable.data + variable.size}});
  return records;
}

Ct2Record int8_scalar(const std::string& name, int8_t value) {
  return {name, convert::Ct2DataType::Int8, {}, {static_cast<uint8_t>(value)}};
}

TEST_CASE("CTranslate2: aliases, attributes and features outside encdec") {
  TempDir temp("ct2_features");
  int case_number = 0;
  // The aren model rewritten with `edit` applied to its variables.
  auto rewritten = [&](const std::function<void(std::vector<Ct2Record>&)>& edit,
                       const std::vector<std::pair<std::string, std::string>>& aliases = {}) {
    const fs::path folder = temp / ("aren" + std::to_string(case_number++));
    fs::create_directories(folder);
    for (const char* file : {"source_vocabulary.txt", "target_vocabulary.txt"}) fs::copy_file(kAren / file, folder / file);
    std::vector<Ct2Record> records = aren_records();
    edit(records);
    write_ct2_model(folder / "model.bin", records, aliases);
    return folder;
  };
  auto remove = [](std::vector<Ct2Record>& records, const std::string& name) {
    std::erase_if(records, [&](const Ct2Record& r) { return r.name == name; });
  };

  // Rewritten as is (version 4, revision-5 attribute names) it converts to the same tensors.
  const auto original = qbin::File::open(convert_to(kAren, temp / "original.qbin").string());
  const fs::path explicit_attributes = rewritten([](std::vector<Ct2Record>& records) {
    for (const char* stack : {"encoder", "decoder"}) {
      records.push_back(int8_scalar(std::string(stack) + "/activation", 0));
      records.push_back(int8_scalar(std::string(stack) + "/pre_norm", 1));
      records.push_back({std::string(stack) + "/num_heads", convert::Ct2DataType::Int32, {}, {8, 0, 0, 0}});
    }
    records.push_back(int8_scalar("decoder/alibi", 0));  // a feature, switched off
  });
  const auto again = qbin::File::open(convert_to(explicit_attributes, temp / "again.qbin").string());
  REQUIRE(again->tensors().size() == original->tensors().size());
  for (const qbin::TensorInfo& tensor : original->tensors())
    CHECK_MESSAGE(tensor_f32(*again, tensor.name) == tensor_f32(*original, tensor.name), tensor.name);

  // The output head as an alias of the decoder embedding: tied, so no output.weight.
  const fs::path tied = rewritten([&](std::vector<Ct2Record>& records) { remove(records, "decoder/projection/weight"); },
                                  {{"decoder/projection/weight", "decoder/embeddings/weight"}});
  const auto tied_file = qbin::File::open(convert_to(tied, temp / "tied.qbin").string());
  CHECK(tied_file->find("output.weight") == nullptr);
  CHECK(tied_file->find("output.bias") != nullptr);

  auto check_refused = [&](const fs::path& folder, ErrorCode code, const std::string& part) {
    check_error([&] { convert_to(folder, temp / "refused.qbin"); }, code, part);
    CHECK_FALSE(fs::exists(temp / "refused.qbin"));
  };
  check_refused(rewritten([](auto& r) { r.push_back(int8_scalar("encoder/activation", 5)), r.push_back(int8_scalar("decoder/activation", 5)); }),
                ErrorCode::Unsupported, "activation 5");
  check_refused(rewritten([](auto& r) { r.push_back(int8_scalar("decoder/pre_norm", 0)); }), ErrorCode::Unsupported, "norm placement");
  check_refused(rewritten([](auto& r) { r.push_back(int8_scalar("decoder/alibi", 1)); }), ErrorCode::Unsupported, "decoder/alibi");
  check_refused(rewritten([](auto& r) { r.push_back({"decoder/layer_0/ffn/linear_0_noact/weight", convert::Ct2DataType::Float32, {128, 32}, std::vector<uint8_t>(128 * 32 * 4)}); }),
                ErrorCode::Unsupported, "linear_0_noact");
  check_refused(rewritten([&](auto& r) { remove(r, "encoder/layer_norm/beta"); }), ErrorCode::Unsupported, "RMSNorm");
  check_refused(rewritten([&](auto& r) { remove(r, "decoder/layer_3/attention/linear_1/weight"); }), ErrorCode::Format,
                "decoder/layer_3/attention/linear_1/weight");
  check_refused(rewritten([&](auto& r) { remove(r, "encoder/layer_norm/beta"), remove(r, "encoder/layer_norm/gamma"); }),
                ErrorCode::Unsupported, "final norms");
  check_refused(rewritten([](auto& r) {
                  for (Ct2Record& record : r)
                    if (record.name == "decoder/embeddings/weight") {  // one row more than the vocabulary
                      record.shape[0] += 1;
                      record.data.resize(record.data.size() + 32 * 4);
                    }
                }),
                ErrorCode::Format, "vocabularies");

  // Vocabulary files that do not match the embeddings, and a truncated model.bin.
  const fs::path short_vocabulary = copy_folder(kAren, temp / "short_vocabulary");
  test::write_bytes(short_vocabulary / "target_vocabulary.txt", "a\nb\n", 4);
  check_refused(short_vocabulary, ErrorCode::Format, "vocabularies");
  const fs::path no_vocabulary = copy_folder(kAren, temp / "no_vocabulary");
  fs::remove(no_vocabulary / "source_vocabulary.txt");
  check_refused(no_vocabulary, ErrorCode::Io, "vocabulary");
  const fs::path truncated = copy_folder(kAren, temp / "truncated");
  fs::resize_file(truncated / "model.bin", 5000);
  check_refused(truncated, ErrorCode::Format, "model.bin");
  convert::Options with_tokenizer = all_f32();
  with_tokenizer.tokenizer_path = "x.model";
  check_error([&] { convert_to(kAren, temp / "x.qbin", with_tokenizer); }, ErrorCode::InvalidArgument, "tokenizer path");
}

}  // namespace
