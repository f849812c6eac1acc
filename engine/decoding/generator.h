// The generation loop: a conversation with a language model, kept in its KV cache between calls
// so chat is incremental. Each generate() evaluates the new prompt tokens in one forward call, then
// samples token by token, streaming text until EOS, max tokens, a full context, a stop string or
// a cancelling callback.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/decoding/sampler.h"
#include "engine/model.h"

namespace octet::decoding {

enum class StopReason { Eos, MaxTokens, StopString, ContextFull, Cancelled };

struct GenerationOptions {
  int32_t max_tokens = 128;
  std::vector<std::string> stop_strings;  // cut the output before the first one (not emitted)
};

struct GenerationStats {
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;  // sampled tokens, EOS not counted
  double prompt_seconds = 0;
  double generate_seconds = 0;
  StopReason stop_reason = StopReason::MaxTokens;
};

// Receives each settled piece of text (never a split UTF-8 character); returns false to cancel.
using TextCallback = std::function<bool(std::string_view)>;

class Generator {
 public:
  Generator(std::shared_ptr<const LanguageModel> model, int32_t context_length, DType kv_type = DType::F32);

  // Appends `prompt` to the conversation and generates a continuation. The sampled tokens join
  // the conversation (the last one is evaluated at the start of the next call), except an EOS,
  // which ends the turn: the next prompt brings its own end-of-turn text, as chat templates
  // render it. Throws (InvalidArgument) when the prompt does not fit in the context.
  GenerationStats generate(std::span<const int32_t> prompt, const GenerationOptions& options,
                           Sampler& sampler, const TextCallback& on_text);

  void reset();
  // Positions the conversation takes: tokens in the KV cache plus one sampled, not yet evaluated.
  int32_t used() const { return static_cast<int32_t>(tokens_.size()); }
  const LanguageModel& model() const { return *model_; }

 private:
  std::shared_ptr<const LanguageModel> model_;
  std::unique_ptr<DecoderState> state_;
  std::vector<int32_t> tokens_;  // the whole conversation; the KV cache holds all but maybe the last
  std::vector<int32_t> batch_;   // tokens to evaluate next
};

}  // namespace octet::decoding
