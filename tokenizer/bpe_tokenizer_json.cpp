// tokenizer.json (Hugging Face `tokenizers`) to the "tokenizer.bpe.*" metadata keys.
// Only what byte-level BPE needs is accepted; anything else is refused by name, so that a model
// never runs with a tokenizer that silently differs from its reference.
#include <cctype>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "tokenizer/backends.h"
#include "tokenizer/bpe.h"

namespace octet {
namespace {

using nlohmann::json;
namespace bpe = detail::bpe;

// The pattern ByteLevel(use_regex=true) splits with (GPT-2's).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

[[noreturn]] void unsupported(const std::string& what) {
  fail(ErrorCode::Unsupported, "tokenizer.json: " + what + " is not supported (byte-level BPE only)");
}

std::string type_of(const json& node) { return node.is_object() ? node.value("type", std::string("?")) : "?"; }

// A literal as a PCRE2 pattern: ASCII punctuation escaped, everything else literal.
std::string quote_regex(const std::string& literal) {
  std::string pattern;
  for (char c : literal) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x80 && !std::isalnum(byte)) pattern += '\\';
    pattern += c;
  }
  return pattern;
}

std::string read_normalizer(const json& normalizer) {
  if (normalizer.is_null()) return "none";
  const std::string type = type_of(normalizer);
  if (type == "NFC") return "nfc";
  if (type == "Sequence") {
    std::string result = "none";
    for (const json& step : normalizer.at("normalizers")) {
      if (read_normalizer(step) == "nfc") result = "nfc";
    }
    return result;
  }
  unsupported("normalizer " + type);
}

void append_split_patterns(const json& pre_tokenizer, std::vector<std::string>& patterns, bool& byte_level) {
  const std::string type = type_of(pre_tokenizer);
  if (byte_level) unsupported("pre-tokenizer " + type + " after ByteLevel");
  if (type == "Sequence") {
    for (const json& step : pre_tokenizer.at("pretokenizers")) append_split_patterns(step, patterns, byte_level);
  } else if (type == "Split") {
    const json& pattern = pre_tokenizer.at("pattern");
    const std::string behavior = pre_tokenizer.value("behavior", std::string("?"));
    if (behavior != "Isolated") unsupported("Split behavior " + behavior);
    if (pre_tokenizer.value("invert", false)) unsupported("Split with invert");
    if (pattern.contains("Regex")) {
      patterns.push_back(pattern.at("Regex").get<std::string>());
    } else {
      patterns.push_back(quote_regex(pattern.at("String").get<std::string>()));
    }
  } else if (type == "Digits") {
    patterns.push_back(pre_tokenizer.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
  } else if (type == "ByteLevel") {
    if (pre_tokenizer.value("add_prefix_space", false)) unsupported("ByteLevel add_prefix_space");
    if (pre_tokenizer.value("use_regex", true)) patterns.push_back(kGpt2Pattern);
    byte_level = true;
  } else {
    unsupported("pre-tokenizer " + type);
  }
}

// The BOS that the post-processor's template puts first (Llama 3's "<|begin_of_text|> $A").
int32_t template_bos(const json& post_processor) {
  const std::string type = type_of(post_processor);
  if (type == "Sequence") {
    for (const json& step : post_processor.at("processors")) {
      if (const int32_t bos = template_bos(step); bos >= 0) return bos;
    }
  } else if (type == "TemplateProcessing") {
    const json& first = post_processor.at("single").at(0);
    if (first.contains("SpecialToken")) {
      const json& ids = post_processor.at("special_tokens").at(first.at("SpecialToken").at("id").get<std::string>()).at("ids");
      if (ids.size() == 1) return ids.at(0).get<int32_t>();
    }
  }
  return -1;
}

void read_model(const json& model, const size_t added_count, const std::string& key, qbin::Metadata& out) {
  const std::string type = type_of(model);
  if (type != "BPE") unsupported("model " + type);
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0) {
    unsupported("BPE dropout");
  }
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(affix) && !model[affix].is_null() && !model[affix].get<std::string>().empty()) {
      unsupported(std::string("BPE ") + affix);
    }
  }
  if (model.value("byte_fallback", false)) unsupported("BPE byte_fallback");

  const json& vocab = model.at("vocab");
  // Ids may leave holes, but no larger than the vocabulary itself (a hostile id must not size
  // the table).
  const size_t id_limit = vocab.size() + added_count;
  std::vector<std::string> tokens;
  for (const auto& [token, id_node] : vocab.items()) {
    const auto id = id_node.get<int64_t>();
    if (id < 0 || static_cast<size_t>(id) >= id_limit) {
      fail(ErrorCode::Format, "tokenizer.json: vocabulary id " + std::to_string(id) + " is out of range");
    }
    if (tokens.size() <= static_cast<size_t>(id)) tokens.resize(id + 1);
    tokens[id] = token;
  }

  std::vector<std::string> merges;
  for (const json& merge : model.at("merges")) {
    if (merge.is_string()) {
      merges.push_back(merge.get<std::string>());
      continue;
    }
    // The newer form: a pair of tokens. Stored as "left right", which needs them space-free
    // (byte-level tokens always are: a space is "Ġ").
    if (!merge.is_array() || merge.size() != 2) fail(ErrorCode::Format, "tokenizer.json: bad merge " + merge.dump());
    const auto left = merge[0].get<std::string>(), right = merge[1].get<std::string>();
    if (left.find(' ') != std::string::npos || right.find(' ') != std::string::npos) unsupported("merge " + merge.dump());
    merges.push_back(left + " " + right);
  }

  int32_t unk_id = -1;
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    if (model.value("fuse_unk", false)) unsupported("BPE fuse_unk");
    const std::string unk = model["unk_token"].get<std::string>();
    if (!vocab.contains(unk)) fail(ErrorCode::Format, "tokenizer.json: unk_token '" + unk + "' is not in the vocabulary");
    unk_id = vocab[unk].get<int32_t>();
  }

  out.set(key + "tokens", std::move(tokens));
  out.set(key + "merges", std::move(merges));
  out.set(key + "ignore_merges", model.value("ignore_merges", false));
  out.set(key + "unk_id", unk_id);
}

void read_added_tokens(const json& added_tokens, const std::string& key, qbin::Metadata& out) {
  std::vector<int32_t> ids, flags;
  std::vector<std::string> contents;
  for (const json& token : added_tokens) {
    const bool special = token.value("special", false);
    ids.push_back(token.at("id").get<int32_t>());
    contents.push_back(token.at("content").get<std::string>());
    flags.push_back((special ? bpe::kSpecial : 0) |
                    (token.value("normalized", !special) ? bpe::kNormalized : 0) |  // HF's default
                    (token.value("lstrip", false) ? bpe::kLstrip : 0) |
                    (token.value("rstrip", false) ? bpe::kRstrip : 0) |
                    (token.value("single_word", false) ? bpe::kSingleWord : 0));
  }
  out.set(key + "added_ids", std::move(ids));
  out.set(key + "added_contents", std::move(contents));
  out.set(key + "added_flags", std::move(flags));
}

}  // namespace

void bpe_metadata_from_tokenizer_json(std::string_view json_text, qbin::Metadata& out, std::string_view prefix) {
  const std::string p(prefix), key = p + ".bpe.";
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::exception& e) {
    fail(ErrorCode::Format, std::string("tokenizer.json is not valid JSON: ") + e.what());
  }

  qbin::Metadata metadata;
  try {
    if (!doc.is_object()) fail(ErrorCode::Format, "tokenizer.json is not a JSON object");
    const json empty;
    const json& added_tokens = doc.contains("added_tokens") ? doc["added_tokens"] : empty;
    read_model(doc.at("model"), added_tokens.size(), key, metadata);
    read_added_tokens(added_tokens, key, metadata);
    metadata.set(key + "normalizer", read_normalizer(doc.value("normalizer", json())));

    std::vector<std::string> patterns;
    bool byte_level = false;
    const json pre_tokenizer = doc.value("pre_tokenizer", json());
    if (!pre_tokenizer.is_null()) append_split_patterns(pre_tokenizer, patterns, byte_level);
    if (!byte_level) unsupported("a pre-tokenizer without ByteLevel");
    metadata.set(key + "split_patterns", std::move(patterns));

    const json decoder = doc.value("decoder", json());
    if (type_of(decoder) != "ByteLevel") unsupported("decoder " + (decoder.is_null() ? "null" : type_of(decoder)));

    const int32_t bos_id = template_bos(doc.value("post_processor", json()));
    metadata.set(p + ".kind", std::string("bpe"));
    metadata.set(p + ".bos_id", bos_id);
    metadata.set(p + ".add_bos", bos_id >= 0);
    metadata.set(p + ".eos_ids", std::vector<int32_t>{});  // not in tokenizer.json: the converter's job
  } catch (const json::exception& e) {
    fail(ErrorCode::Format, std::string("tokenizer.json has an unexpected structure: ") + e.what());
  }

  // Building the tokenizer checks the merges, ids and patterns now rather than at load time.
  Tokenizer::from_metadata(metadata, p);
  for (const auto& [name, value] : metadata.all()) out.set(name, value);
}

}  // namespace octet
