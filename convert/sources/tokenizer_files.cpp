#include "convert/sources/tokenizer_files.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <functional>
#include <optional>

#include "engine/error.h"
#include "tokenizer/tokenizer.h"

namespace octet::convert {
namespace {

using json = nlohmann::json;
// The id of a token spelled as tokenizer_config.json spells it, if the vocabulary has it.
using TokenLookup = std::function<std::optional<int32_t>(const std::string&)>;

// tokenizer_config.json writes special tokens as a string or as {"content": "<s>", ...}.
std::optional<std::string> token_text(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  return std::nullopt;
}

int32_t resolve_token(const HfConfig& tokenizer_config, const char* key, const TokenLookup& lookup) {
  const std::optional<std::string> text = token_text(*tokenizer_config.find(key));
  if (!text) fail(ErrorCode::Format, tokenizer_config.where() + ": \"" + key + "\" is neither a string nor a token object");
  const std::optional<int32_t> id = lookup(*text);
  if (!id) fail(ErrorCode::Format, tokenizer_config.where() + ": " + key + " \"" + *text + "\" is not in the vocabulary");
  return *id;
}

// An id or a list of ids (generation_config.json's eos_token_id may be either).
std::vector<int32_t> token_ids(const HfConfig& config, const char* key) {
  const json* value = config.find(key);
  if (value == nullptr) return {};
  const json list = value->is_array() ? *value : json::array({*value});
  std::vector<int32_t> ids;
  for (const json& id : list) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      fail(ErrorCode::Format, config.where() + ": \"" + key + "\" holds " + id.dump() + ", not a token id");
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return ids;
}

std::optional<HfConfig> load_if_present(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return std::nullopt;
  return HfConfig::load(path);
}

// tokenizer_config.json's chat_template: a string, or a list of named templates ("default" is
// the one chat uses); newer exports put it in chat_template.jinja instead.
std::optional<std::string> chat_template(const std::filesystem::path& folder, const std::optional<HfConfig>& tokenizer_config) {
  if (tokenizer_config) {
    if (const json* value = tokenizer_config->find("chat_template")) {
      if (value->is_string()) return value->get<std::string>();
      if (value->is_array())
        for (const json& named : *value)
          if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
              named["template"].is_string())
            return named["template"].get<std::string>();
    }
  }
  if (std::filesystem::exists(folder / "chat_template.jinja")) return read_text_file(folder / "chat_template.jinja");
  return std::nullopt;
}

// The tokenizer layer stores the model (and BOS/EOS as the model defines them); the processor
// kept here resolves token strings named in tokenizer_config.json.
std::shared_ptr<sentencepiece::SentencePieceProcessor> add_sentencepiece(const std::filesystem::path& model_file,
                                                                         qbin::Metadata& out) {
  const std::string bytes = read_text_file(model_file);
  sentencepiece_metadata(bytes, out);
  auto processor = std::make_shared<sentencepiece::SentencePieceProcessor>();
  if (!processor->LoadFromSerializedProto(bytes).ok())
    fail(ErrorCode::Format, model_file.string() + ": not a valid SentencePiece model");
  return processor;
}

}  // namespace

void add_sentencepiece_tokenizer(const std::filesystem::path& model_file, qbin::Metadata& out) {
  add_sentencepiece(model_file, out);
}

void add_hf_tokenizer(const std::filesystem::path& folder, const HfConfig& config, qbin::Metadata& out) {
  const std::optional<HfConfig> tokenizer_config = load_if_present(folder / "tokenizer_config.json");
  const std::optional<HfConfig> generation_config = load_if_present(folder / "generation_config.json");

  TokenLookup lookup;
  json tokenizer_json;  // BPE: the vocabulary for lookups
  if (std::filesystem::exists(folder / "tokenizer.model")) {
    auto processor = add_sentencepiece(folder / "tokenizer.model", out);
    lookup = [processor](const std::string& piece) -> std::optional<int32_t> {
      const int id = processor->PieceToId(piece);
      if (processor->IdToPiece(id) != piece) return std::nullopt;  // unknown pieces map to <unk>
      return id;
    };
  } else if (std::filesystem::exists(folder / "tokenizer.json")) {
    const std::string text = read_text_file(folder / "tokenizer.json");
    bpe_metadata_from_tokenizer_json(text, out);
    tokenizer_json = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!tokenizer_json.is_object()) fail(ErrorCode::Format, (folder / "tokenizer.json").string() + ": not a JSON object");
    // The tokenizer layer has checked the structure: added_tokens entries and model.vocab.
    lookup = [&tokenizer_json](const std::string& token) -> std::optional<int32_t> {
      for (const json& added : tokenizer_json.value("added_tokens", json::array()))
        if (added.value("content", "") == token) return added.at("id").get<int32_t>();
      const json::json_pointer in_vocab = json::json_pointer("/model/vocab") / token;
      if (tokenizer_json.contains(in_vocab) && tokenizer_json.at(in_vocab).is_number_integer())
        return tokenizer_json.at(in_vocab).get<int32_t>();
      return std::nullopt;
    };
  } else {
    fail(ErrorCode::Io, folder.string() + " has no tokenizer: expected tokenizer.model (SentencePiece) or tokenizer.json (byte-level BPE)");
  }

  // BOS: tokenizer_config.json's bos_token when it names one (null means none, as in Qwen2), else
  // what the tokenizer files define.
  int32_t bos_id = out.i32_or("tokenizer.bos_id", -1);
  if (tokenizer_config && tokenizer_config->json().contains("bos_token"))
    bos_id = tokenizer_config->has("bos_token") ? resolve_token(*tokenizer_config, "bos_token", lookup) : -1;
  out.set("tokenizer.bos_id", bos_id);

  // EOS: every id generation_config.json lists, in its order, then tokenizer_config.json's.
  std::vector<int32_t> eos_ids = generation_config ? token_ids(*generation_config, "eos_token_id") : std::vector<int32_t>{};
  if (tokenizer_config && tokenizer_config->has("eos_token")) {
    const int32_t id = resolve_token(*tokenizer_config, "eos_token", lookup);
    if (std::find(eos_ids.begin(), eos_ids.end(), id) == eos_ids.end()) eos_ids.push_back(id);
  }
  if (eos_ids.empty()) eos_ids = token_ids(config, "eos_token_id");
  if (eos_ids.empty() && out.has("tokenizer.eos_ids")) eos_ids = out.i32_array("tokenizer.eos_ids");
  out.set("tokenizer.eos_ids", eos_ids);

  // add_bos: tokenizer_config.json's add_bos_token, else what the tokenizer files imply (the
  // SentencePiece model's BOS, or a tokenizer.json post-processor that puts BOS first, as Llama 3's does).
  bool add_bos = out.boolean_or("tokenizer.add_bos", false);
  if (tokenizer_config && tokenizer_config->has("add_bos_token")) add_bos = tokenizer_config->boolean_or("add_bos_token", false);
  out.set("tokenizer.add_bos", add_bos && bos_id >= 0);

  if (const std::optional<std::string> chat = chat_template(folder, tokenizer_config))
    out.set("tokenizer.chat_template", *chat);
}

}  // namespace octet::convert
