// The translation tokenizer kinds: SentencePiece with a vocabulary list (MarianMT: ids are
// positions in vocab.json) against MarianTokenizer's goldens (tests/data/marian/<name>/goldens.json),
// and the whitespace kind (CTranslate2 vocabularies). Metadata is built here by hand from the
// fixture files, as docs/qbin.md (encdec) describes it; the converter's own output is checked
// against the same goldens in test_convert_marian.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <filesystem>
#include <functional>

#include "engine/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using json = nlohmann::json;
using octet::DetokenizeStream;
using octet::Error;
using octet::ErrorCode;
using octet::Tokenizer;
using octet::test::error_code_of;
using octet::qbin::Metadata;
namespace fs = std::filesystem;

namespace {

const fs::path kMarian = octet::test::test_data("marian");

std::vector<std::string> fixtures() {
  std::vector<std::string> names;
  for (const char* name : {"marian_shared", "marian_separate"})
    if (fs::exists(kMarian / name / "goldens.json")) names.push_back(name);
  REQUIRE_FALSE(names.empty());
  return names;
}

std::vector<std::string> vocab_list(const fs::path& vocab_json) {
  const json vocab = octet::test::read_json(vocab_json);
  std::vector<std::string> tokens;
  for (const auto& [token, id] : vocab.items()) {
    const size_t at = id.get<size_t>();
    if (tokens.size() <= at) tokens.resize(at + 1);
    tokens[at] = token;
  }
  return tokens;
}

int32_t position_of(const std::vector<std::string>& tokens, const std::string& token) {
  const auto found = std::find(tokens.begin(), tokens.end(), token);
  REQUIRE(found != tokens.end());
  return static_cast<int32_t>(found - tokens.begin());
}

// What the converter writes for one side of a Marian model.
Metadata marian_metadata(const std::string& name, bool target) {
  const fs::path folder = kMarian / name;
  const bool separate = octet::test::read_json(folder / "tokenizer_config.json").value("separate_vocabs", false);
  Metadata metadata;
  octet::sentencepiece_metadata(octet::test::read_text(folder / (target ? "target.spm" : "source.spm")), metadata);
  const std::vector<std::string> tokens = vocab_list(folder / (target && separate ? "target_vocab.json" : "vocab.json"));
  const int32_t eos = position_of(tokens, "</s>"), unk = position_of(tokens, "<unk>"), pad = position_of(tokens, "<pad>");
  metadata.set("tokenizer.vocab", tokens);
  metadata.set("tokenizer.unk_id", unk);
  metadata.set("tokenizer.special_ids", std::vector<int32_t>{eos, unk, pad});
  metadata.set("tokenizer.bos_id", int32_t{-1});
  metadata.set("tokenizer.eos_ids", std::vector<int32_t>{eos});
  metadata.set("tokenizer.add_bos", false);
  metadata.set("tokenizer.add_eos", true);
  metadata.set("tokenizer.split_language_code", true);
  return metadata;
}

std::string decoded_by_stream(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  DetokenizeStream stream(tokenizer);
  std::string text;
  for (int32_t id : ids) text += stream.push(id);
  return text + stream.finish();
}

TEST_CASE("Marian source: ids are MarianTokenizer's, text + </s>") {
  for (const std::string& name : fixtures()) {
    CAPTURE(name);
    const auto source = Tokenizer::from_metadata(marian_metadata(name, false));
    const json goldens = octet::test::read_json(kMarian / name / "goldens.json");
    REQUIRE(goldens["cases"].size() >= 20);
    for (const json& golden : goldens["cases"]) {
      const std::string text = golden["text"];
      CAPTURE(text);
      CHECK(source->encode(text, true, true) == golden["input_ids"].get<std::vector<int32_t>>());
    }
  }
}

TEST_CASE("Marian target: encoding and decoding as MarianTokenizer") {
  for (const std::string& name : fixtures()) {
    CAPTURE(name);
    const auto target = Tokenizer::from_metadata(marian_metadata(name, true));
    const json goldens = octet::test::read_json(kMarian / name / "goldens.json");
    REQUIRE(goldens["targets"].size() >= 5);
    for (const json& golden : goldens["targets"]) {
      const std::string text = golden["text"];
      CAPTURE(text);
      const std::vector<int32_t> ids = golden["ids"];
      CHECK(target->encode(text, true, true) == ids);
      CHECK(target->decode(ids) == golden["decoded"].get<std::string>());
    }
    // Generated ids of a random model: decode(skip_special_tokens=True), also streamed.
    for (const json& golden : goldens["cases"]) {
      std::vector<json> outputs = {golden["greedy"]};
      for (const json& beam : golden["beam"]) outputs.push_back(beam);
      for (const json& output : outputs) {
        const std::vector<int32_t> ids = output["ids"];
        CAPTURE(ids);
        CHECK(target->decode(ids) == output["text"].get<std::string>());
        CHECK(decoded_by_stream(*target, ids) == output["text"].get<std::string>());
      }
    }
  }
}

TEST_CASE("Marian: special tokens and language codes in text, as MarianTokenizer") {
  // Expected ids from MarianTokenizer (transformers 5.23.0) on marian_shared.
  const auto source = Tokenizer::from_metadata(marian_metadata("marian_shared", false));
  const auto target = Tokenizer::from_metadata(marian_metadata("marian_shared", true));
  // A leading >>code<< is one token (here not in the vocabulary: <unk>); elsewhere it is text.
  CHECK(source->encode(">>de<< Hello", true, true) == std::vector<int32_t>{1, 2, 121, 3, 102, 8, 0});
  CHECK(source->encode(">>de<<Hello", true, true) == std::vector<int32_t>{1, 2, 121, 3, 102, 8, 0});
  CHECK(target->encode(">>de<< Hello", true, true) == std::vector<int32_t>{1, 2, 121, 357, 8, 0});
  CHECK(source->encode("x >>de<< y", true, true) == std::vector<int32_t>{2, 67, 2, 124, 124, 13, 3, 160, 160, 2, 32, 0});
  // Special tokens written in the text are their ids; the text between is encoded on its own.
  CHECK(source->encode("Hello</s> world", true, true) == std::vector<int32_t>{2, 121, 3, 102, 8, 0, 68, 40, 23, 13, 0});
  CHECK(target->encode("Hello</s> world", true, true) == std::vector<int32_t>{2, 121, 357, 8, 0, 2, 56, 8, 11, 23, 13, 0});
  CHECK(source->encode("<pad>x<unk>y", true, true) == std::vector<int32_t>{406, 2, 67, 1, 2, 32, 0});
  CHECK(source->encode(" Hello  ", true, true) == std::vector<int32_t>{2, 121, 3, 102, 8, 0});
  // Without special tokens: no </s>, and "</s>" in the text is plain text.
  CHECK(source->encode("Hello", false, true) == std::vector<int32_t>{2, 121, 3, 102, 8});
  CHECK(source->encode("</s>", false, false) != std::vector<int32_t>{0});

  const std::vector<int32_t> ids = {406, 1, 2, 121, 3, 102, 8, 68, 40, 23, 13, 20, 0};
  CHECK(source->decode(ids, false) == "<pad> <unk> Hello world.</s>");
  CHECK(source->decode(ids, true) == "Hello world.");
  CHECK(source->vocab_size() == 407);
  CHECK(source->is_special(406));
  CHECK(source->is_special(1));
  CHECK_FALSE(source->is_special(2));
  CHECK(source->is_eos(0));
  CHECK(source->bos_id() == -1);
}

Metadata whitespace_metadata() {
  Metadata metadata;
  metadata.set("tokenizer.kind", std::string("whitespace"));
  metadata.set("tokenizer.vocab", std::vector<std::string>{"<blank>", "<s>", "</s>", "a", "b", "ß", "<unk>"});
  metadata.set("tokenizer.unk_id", int32_t{6});
  metadata.set("tokenizer.special_ids", std::vector<int32_t>{0, 1, 2});
  metadata.set("tokenizer.bos_id", int32_t{1});
  metadata.set("tokenizer.eos_ids", std::vector<int32_t>{2});
  metadata.set("tokenizer.add_bos", false);
  metadata.set("tokenizer.add_eos", false);
  return metadata;
}

TEST_CASE("whitespace: tokens between runs of spaces, looked up; decoding joins with one space") {
  Metadata metadata = whitespace_metadata();
  auto tokenizer = Tokenizer::from_metadata(metadata);
  CHECK(tokenizer->encode("a b ß", true, true) == std::vector<int32_t>{3, 4, 5});
  CHECK(tokenizer->encode("  a\t\tb\n", true, false) == std::vector<int32_t>{3, 4});
  CHECK(tokenizer->encode("a c ab", true, true) == std::vector<int32_t>{3, 6, 6});
  CHECK(tokenizer->encode("</s> a", false, false) == std::vector<int32_t>{2, 3});  // tokens are tokens
  CHECK(tokenizer->encode("", true, true).empty());
  CHECK(tokenizer->decode({{1, 3, 4, 5, 2, 99}}) == "a b ß");
  CHECK(tokenizer->decode({{1, 3, 4, 2}}, false) == "<s> a b </s>");
  CHECK(decoded_by_stream(*tokenizer, {1, 3, 5, 4, 2}) == "a ß b");
  CHECK(tokenizer->vocab_size() == 7);
  CHECK(tokenizer->is_special(0));
  CHECK_FALSE(tokenizer->is_special(6));

  metadata.set("tokenizer.add_bos", true);
  metadata.set("tokenizer.add_eos", true);
  tokenizer = Tokenizer::from_metadata(metadata);
  CHECK(tokenizer->encode("a b", true, false) == std::vector<int32_t>{1, 3, 4, 2});
  CHECK(tokenizer->encode("a b", false, false) == std::vector<int32_t>{3, 4});
  CHECK(error_code_of([&] { tokenizer->encode("a \xff", true, false); }) == ErrorCode::InvalidArgument);
}

TEST_CASE("vocabulary lists: inconsistent metadata is a format error") {
  auto broken = [](const std::function<void(Metadata&)>& edit) {
    Metadata metadata = whitespace_metadata();
    edit(metadata);
    return error_code_of([&] { Tokenizer::from_metadata(metadata); });
  };
  CHECK(broken([](Metadata& m) { m.set("tokenizer.unk_id", int32_t{7}); }) == ErrorCode::Format);
  CHECK(broken([](Metadata& m) { m.set("tokenizer.unk_id", int32_t{-1}); }) == ErrorCode::Format);
  CHECK(broken([](Metadata& m) { m.set("tokenizer.special_ids", std::vector<int32_t>{0, 70}); }) == ErrorCode::Format);
  CHECK(broken([](Metadata& m) { m.set("tokenizer.vocab", std::vector<std::string>{}); }) == ErrorCode::Format);
  CHECK(broken([](Metadata& m) { m.set("tokenizer.eos_ids", std::vector<int32_t>{7}); }) == ErrorCode::Format);
  CHECK(broken([](Metadata& m) { m.set("tokenizer.vocab", std::string("a b")); }) == ErrorCode::Format);
  CHECK(broken([](Metadata& m) { m.set("tokenizer.kind", std::string("wordpiece")); }) == ErrorCode::Unsupported);

  Metadata sentencepiece = marian_metadata("marian_shared", false);
  sentencepiece.set("tokenizer.unk_id", int32_t{407});
  CHECK(error_code_of([&] { Tokenizer::from_metadata(sentencepiece); }) == ErrorCode::Format);
}

}  // namespace
