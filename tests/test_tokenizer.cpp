// The tokenizers against the reference goldens (tests/data/tokenizer, made by Hugging Face
// `tokenizers` and Python `sentencepiece`), streaming detokenization, and error handling.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using nlohmann::json;
using octet::DetokenizeStream;
using octet::Error;
using octet::ErrorCode;
using octet::Tokenizer;
using octet::test::error_code_of;
using octet::test::read_text;

namespace {

const std::string kData = std::string(OCTET_TEST_DATA) + "/tokenizer/";

std::unique_ptr<Tokenizer> bpe_tokenizer(const std::string& tokenizer_json) {
  octet::qbin::Metadata metadata;
  octet::bpe_metadata_from_tokenizer_json(tokenizer_json, metadata);
  return Tokenizer::from_metadata(metadata);
}

std::unique_ptr<Tokenizer> sentencepiece_tokenizer(const std::string& model_path) {
  octet::qbin::Metadata metadata;
  octet::sentencepiece_metadata(read_text(model_path), metadata);
  return Tokenizer::from_metadata(metadata);
}

std::vector<int32_t> ids_of(const json& node) { return node.get<std::vector<int32_t>>(); }

bool is_valid_utf8(const std::string& text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const auto lead = static_cast<uint8_t>(text[pos]);
    const size_t length = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 0;
    if (length == 0 || pos + length > text.size()) return false;
    for (size_t i = 1; i < length; ++i) {
      if ((static_cast<uint8_t>(text[pos + i]) & 0xC0) != 0x80) return false;
    }
    pos += length;
  }
  return true;
}

// Streams `ids` and checks that every piece is whole UTF-8 and that they add up to decode().
void check_stream(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  DetokenizeStream stream(tokenizer);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    CHECK_MESSAGE(is_valid_utf8(piece), "a streamed piece splits a UTF-8 character");
    streamed += piece;
  }
  streamed += stream.finish();
  CHECK(streamed == tokenizer.decode(ids));
}


}  // namespace

TEST_CASE("byte-level BPE matches the Hugging Face goldens") {
  for (const char* name : {"gpt2", "llama3", "qwen2"}) {
    CAPTURE(name);
    const auto tokenizer = bpe_tokenizer(read_text(kData + name + ".tokenizer.json"));
    const json golden = json::parse(read_text(kData + name + ".golden.json"));
    CHECK(tokenizer->vocab_size() == golden["vocab_size"].get<int32_t>());
    for (const json& c : golden["cases"]) {
      const std::string text = c["text"];
      CAPTURE(text);
      const auto ids = ids_of(c["ids"]);
      CHECK(tokenizer->encode(text, false, true) == ids);
      CHECK(tokenizer->encode(text, false, false) == ids_of(c["ids_no_special_parse"]));
      CHECK(tokenizer->encode(text, true, true) == ids_of(c["ids_add_special"]));
      CHECK(tokenizer->decode(ids, false) == c["decoded"].get<std::string>());
      CHECK(tokenizer->decode(ids, true) == c["decoded_skip_special"].get<std::string>());
      check_stream(*tokenizer, ids);
    }
  }
}

TEST_CASE("byte-level BPE special tokens and BOS") {
  const auto llama3 = bpe_tokenizer(read_text(kData + "llama3.tokenizer.json"));
  CHECK(llama3->bos_id() == 795);  // from the TemplateProcessing post-processor
  CHECK(llama3->add_bos());
  CHECK(llama3->is_special(795));
  CHECK_FALSE(llama3->is_special(100));
  CHECK_FALSE(llama3->is_special(800));

  const auto qwen2 = bpe_tokenizer(read_text(kData + "qwen2.tokenizer.json"));
  CHECK(qwen2->bos_id() == -1);
  CHECK_FALSE(qwen2->add_bos());
  CHECK(qwen2->encode("hi", true, true) == qwen2->encode("hi", false, true));
  CHECK(qwen2->is_special(797));
  CHECK_FALSE(qwen2->is_special(798));  // <tool_call> is added but not special
  // Ids outside the vocabulary (a padded output layer) decode to nothing, as in Hugging Face.
  CHECK(qwen2->decode(std::vector<int32_t>{-1, 800, 100000}) == "");
}

TEST_CASE("BPE streaming never splits a character that byte tokens spell out") {
  // The small test vocabularies spell CJK and emoji out in single bytes.
  const auto tokenizer = bpe_tokenizer(read_text(kData + "gpt2.tokenizer.json"));
  const auto ids = tokenizer->encode("中文 🍕 👨‍👩‍👧 é", false, true);
  REQUIRE(ids.size() > 10);
  check_stream(*tokenizer, ids);

  // A character left incomplete at the end comes out as U+FFFD, in finish().
  const std::vector<int32_t> truncated(ids.begin(), ids.begin() + 1);
  DetokenizeStream stream(*tokenizer);
  CHECK(stream.push(truncated[0]).empty());
  CHECK(stream.finish() == "\xEF\xBF\xBD");
}

TEST_CASE("streaming a long text equals decoding it") {
  // Long enough that the stream keeps only a window of recent ids.
  std::string corpus;
  for (const json& text : json::parse(read_text(kData + "corpus.json"))) corpus += text.get<std::string>() + "\n";
  for (const char* name : {"gpt2", "llama3", "qwen2"}) {
    CAPTURE(name);
    const auto tokenizer = bpe_tokenizer(read_text(kData + name + ".tokenizer.json"));
    const auto ids = tokenizer->encode(corpus, false, true);
    REQUIRE(ids.size() > 1000);
    check_stream(*tokenizer, ids);
  }
  const auto spm = sentencepiece_tokenizer(kData + "llama_spm.model");
  const auto ids = spm->encode(corpus, true, false);
  REQUIRE(ids.size() > 1000);
  check_stream(*spm, ids);
}

TEST_CASE("SentencePiece matches the sentencepiece goldens") {
  const auto tokenizer = sentencepiece_tokenizer(kData + "llama_spm.model");
  const json golden = json::parse(read_text(kData + "llama_spm.golden.json"));
  CHECK(tokenizer->vocab_size() == golden["vocab_size"].get<int32_t>());
  CHECK(tokenizer->bos_id() == 1);
  CHECK(tokenizer->eos_ids() == std::vector<int32_t>{2});
  for (const json& c : golden["cases"]) {
    const std::string text = c["text"];
    CAPTURE(text);
    const auto ids = ids_of(c["ids"]);
    CHECK(tokenizer->encode(text, false, false) == ids);
    CHECK(tokenizer->encode(text, true, false) == ids_of(c["ids_add_bos"]));
    CHECK(tokenizer->decode(ids) == c["decoded"].get<std::string>());
    check_stream(*tokenizer, ids);
  }
}

TEST_CASE("SentencePiece on stories260K's tok512.model") {
  const auto tokenizer = sentencepiece_tokenizer(std::string(OCTET_SHARED) + "/models/stories260K/tok512.model");
  CHECK(tokenizer->vocab_size() == 512);
  CHECK(tokenizer->bos_id() == 1);
  CHECK(tokenizer->add_bos());
  CHECK(tokenizer->is_eos(2));
  CHECK(tokenizer->is_special(1));
  CHECK_FALSE(tokenizer->is_special(403));

  // Ids from Python sentencepiece.
  const std::vector<int32_t> once = {403, 407, 261, 378};
  CHECK(tokenizer->encode("Once upon a time", false, true) == once);
  std::vector<int32_t> with_bos = {1};
  with_bos.insert(with_bos.end(), once.begin(), once.end());
  CHECK(tokenizer->encode("Once upon a time", true, true) == with_bos);
  CHECK(tokenizer->decode(with_bos) == "Once upon a time");
  CHECK(tokenizer->decode(with_bos, false) == "<s>Once upon a time");

  const std::string story = "Once upon a time, there was a little girl. She liked 123 red balls!";
  CHECK(tokenizer->decode(tokenizer->encode(story, true, true)) == story);
  check_stream(*tokenizer, tokenizer->encode(story, true, true));

  // Control pieces written in the text: ids with parse_special, plain text without.
  std::vector<int32_t> parsed = {1};
  parsed.insert(parsed.end(), once.begin(), once.end());
  parsed.push_back(2);
  CHECK(tokenizer->encode("<s>Once upon a time</s>", false, true) == parsed);
  CHECK(tokenizer->encode("x<s>y", false, false) == std::vector<int32_t>{410, 444, 504, 419, 505, 422});
  CHECK(tokenizer->decode(parsed, false) == "<s>Once upon a time</s>");
}

TEST_CASE("a tokenizer under another metadata prefix") {
  octet::qbin::Metadata metadata;
  octet::sentencepiece_metadata(read_text(kData + "llama_spm.model"), metadata, "target_tokenizer");
  octet::bpe_metadata_from_tokenizer_json(read_text(kData + "qwen2.tokenizer.json"), metadata);
  CHECK(Tokenizer::from_metadata(metadata, "target_tokenizer")->vocab_size() == 600);
  CHECK(Tokenizer::from_metadata(metadata)->vocab_size() == 800);

  // The converter's values win over the defaults.
  metadata.set("tokenizer.eos_ids", std::vector<int32_t>{795, 797});
  metadata.set("tokenizer.bos_id", int32_t{796});
  const auto overridden = Tokenizer::from_metadata(metadata);
  CHECK(overridden->is_eos(797));
  CHECK(overridden->bos_id() == 796);
  metadata.set("tokenizer.eos_ids", std::vector<int32_t>{800});
  CHECK(error_code_of([&] { Tokenizer::from_metadata(metadata); }) == ErrorCode::Format);
}

TEST_CASE("invalid UTF-8 is an InvalidArgument error") {
  const auto bpe = bpe_tokenizer(read_text(kData + "qwen2.tokenizer.json"));
  const auto spm = sentencepiece_tokenizer(kData + "llama_spm.model");
  for (const std::string bad : {"\xFF", "abc\xC3", "\xC0\xAF", "\xED\xA0\x80", "ok \xE2\x82 ok", "\xF4\x90\x80\x80"}) {
    CAPTURE(bad);
    CHECK(error_code_of([&] { bpe->encode(bad, false, true); }) == ErrorCode::InvalidArgument);
    CHECK(error_code_of([&] { spm->encode(bad, true, false); }) == ErrorCode::InvalidArgument);
  }
}

TEST_CASE("a corrupt or unsupported tokenizer.json is refused cleanly") {
  const json gpt2 = json::parse(read_text(kData + "gpt2.tokenizer.json"));
  const auto refuse = [](const json& doc, ErrorCode expected, const std::string& named) {
    octet::qbin::Metadata metadata;
    try {
      octet::bpe_metadata_from_tokenizer_json(doc.dump(), metadata);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == expected);
      CHECK_MESSAGE(std::string(e.what()).find(named) != std::string::npos, e.what());
    }
    CHECK(metadata.all().empty());  // nothing half-written
  };

  octet::qbin::Metadata metadata;
  CHECK(error_code_of([&] { octet::bpe_metadata_from_tokenizer_json("{\"model\": ", metadata); }) ==
        ErrorCode::Format);
  CHECK(error_code_of([&] { octet::bpe_metadata_from_tokenizer_json("[1, 2]", metadata); }) == ErrorCode::Format);

  json doc = gpt2;
  doc["model"]["type"] = "WordPiece";
  refuse(doc, ErrorCode::Unsupported, "WordPiece");
  doc["model"]["type"] = "Unigram";
  refuse(doc, ErrorCode::Unsupported, "Unigram");
  doc = gpt2;
  doc["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  refuse(doc, ErrorCode::Unsupported, "Metaspace");
  doc = gpt2;
  doc["normalizer"] = {{"type", "Lowercase"}};
  refuse(doc, ErrorCode::Unsupported, "Lowercase");
  doc = gpt2;
  doc["decoder"] = {{"type", "WordPiece"}};
  refuse(doc, ErrorCode::Unsupported, "decoder WordPiece");
  doc = gpt2;
  doc["model"]["byte_fallback"] = true;
  refuse(doc, ErrorCode::Unsupported, "byte_fallback");
  doc = gpt2;
  doc["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}},
                                              {"behavior", "Isolated"}, {"invert", false}};
  refuse(doc, ErrorCode::Unsupported, "(unclosed");

  doc = gpt2;
  doc.erase("model");
  refuse(doc, ErrorCode::Format, "model");
  doc = gpt2;
  doc["model"]["merges"].push_back(json::array({"not_a_token", "x"}));
  refuse(doc, ErrorCode::Format, "not_a_token");
  doc = gpt2;
  doc["model"]["vocab"]["huge"] = 2000000000;
  refuse(doc, ErrorCode::Format, "2000000000");
  doc = gpt2;
  doc["model"]["vocab"] = "not a map";
  refuse(doc, ErrorCode::Format, "tokenizer.json");

  octet::qbin::Metadata unknown_kind;
  unknown_kind.set("tokenizer.kind", std::string("wordpiece"));
  CHECK(error_code_of([&] { Tokenizer::from_metadata(unknown_kind); }) == ErrorCode::Unsupported);
  CHECK(error_code_of([&] { Tokenizer::from_metadata(octet::qbin::Metadata()); }) == ErrorCode::Format);

  octet::qbin::Metadata bad_model;
  bad_model.set("tokenizer.kind", std::string("sentencepiece"));
  bad_model.set("tokenizer.sentencepiece.model", octet::qbin::Bytes{1, 2, 3});
  CHECK(error_code_of([&] { Tokenizer::from_metadata(bad_model); }) == ErrorCode::Format);
}
