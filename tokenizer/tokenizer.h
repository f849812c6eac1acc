// Text <-> token ids, exact to the reference tokenizers: SentencePiece models through the
// SentencePiece library, byte-level BPE (tokenizer.json: GPT-2, Llama 3, Qwen2, SmolLM) by our own
// code. Both are built from the .qbin metadata (docs/qbin.md, keys "tokenizer.*").
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/qbin.h"

namespace octet {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text to ids. With parse_special, added/special tokens written literally in the text (for
  // example "<|im_start|>" from a chat template) become their ids; otherwise they are plain text.
  // add_bos prepends the BOS id when the model has one and wants it (tokenizer.add_bos).
  // Throws octet::Error (InvalidArgument) on invalid UTF-8.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const = 0;
  // Ids to text, as the reference decoder does (special tokens skipped when skip_special).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = true) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual bool is_special(int32_t id) const = 0;  // control / added-special tokens
  int32_t bos_id() const { return bos_id_; }      // -1 when none
  bool add_bos() const { return add_bos_; }
  // Every id that ends generation (eos_token_id may be a list in generation_config.json).
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool is_eos(int32_t id) const;

  // Builds the tokenizer the metadata describes under `prefix` ("tokenizer", or e.g.
  // "target_tokenizer" for a translation model's second one); throws (Format/Unsupported).
  static std::unique_ptr<Tokenizer> from_metadata(const qbin::Metadata& metadata,
                                                  std::string_view prefix = "tokenizer");

 protected:
  int32_t bos_id_ = -1;
  bool add_bos_ = false;
  std::vector<int32_t> eos_ids_;
};

// Turns a stream of ids into text pieces for streaming output: each push returns the newly
// settled text, never splitting a UTF-8 character, and the concatenation of all pushes plus
// finish() equals tokenizer.decode(all ids).
class DetokenizeStream {
 public:
  explicit DetokenizeStream(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;
  size_t emitted_ = 0;  // bytes of decode(ids_) already returned
};

// Fills the "tokenizer.*" metadata keys from the files a model folder ships. Used by the converter.
// tokenizer.json: byte-level BPE (vocab, merges, pre-tokenizer kind, added tokens);
// throws (Unsupported) for tokenizer.json models of another kind, naming it.
void bpe_metadata_from_tokenizer_json(std::string_view json_text, qbin::Metadata& out,
                                      std::string_view prefix = "tokenizer");
// tokenizer.model (or source.spm...): the SentencePiece model bytes, checked to load.
void sentencepiece_metadata(const std::string& model_bytes, qbin::Metadata& out,
                            std::string_view prefix = "tokenizer");

}  // namespace octet
