// What decoding and the C API see of a language model: a read-only model, shared across threads,
// and per-conversation state (KV cache + scratch arena, sized once at creation, nothing
// allocated per token). Model families implement these in one file each (engine/llama.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "engine/qbin.h"
#include "tokenizer/tokenizer.h"

namespace octet {

class DecoderState;

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  // Opens a .qbin, validates it and builds the model its general.architecture names; throws
  // octet::Error (Unsupported) for an unknown architecture, (Format) for a broken file.
  static std::shared_ptr<const LanguageModel> load(const std::string& path, bool verify_checksums = true);

  virtual const std::string& architecture() const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t context_length() const = 0;
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const qbin::File& file() const { return *file_; }

  // New conversation state holding up to `context_length` positions, its KV cache of kv_type
  // (F32, F16 in half the memory, or Q8_0 in ~53% of F16's when head_dim is a multiple of 32).
  virtual std::unique_ptr<DecoderState> new_state(int32_t context_length, DType kv_type) const = 0;
  std::unique_ptr<DecoderState> new_state(int32_t context_length) const { return new_state(context_length, DType::F32); }

 protected:
  std::shared_ptr<const qbin::File> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

class DecoderState {
 public:
  virtual ~DecoderState() = default;
  // Runs `tokens` at positions used() .. used()+n-1 as one batch (GEMM, not token by token) and
  // appends them to the KV cache. Returns the logits of the last token (vocab_size floats, valid
  // until the next call). When all_logits is not null it also receives n x vocab_size logits.
  // Throws (InvalidArgument) when the tokens do not fit in capacity() or an id is out of range.
  virtual const float* forward(std::span<const int32_t> tokens, float* all_logits = nullptr) = 0;
  virtual int32_t used() const = 0;
  virtual int32_t capacity() const = 0;
  virtual void reset() = 0;
};

}  // namespace octet
