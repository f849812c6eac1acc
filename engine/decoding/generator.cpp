#include "engine/decoding/generator.h"

#include <chrono>

#include "engine/decoding/stop_strings.h"
#include "engine/error.h"

namespace octet::decoding {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Generator::Generator(std::shared_ptr<const LanguageModel> model, int32_t context_length, DType kv_type)
    : model_(std::move(model)), state_(model_->new_state(context_length, kv_type)) {
  tokens_.reserve(state_->capacity());
}

void Generator::reset() {
  state_->reset();
  tokens_.clear();
}

GenerationStats Generator::generate(std::span<const int32_t> prompt, const GenerationOptions& options,
                                    Sampler& sampler, const TextCallback& on_text) {
  if (options.max_tokens < 0) fail(ErrorCode::InvalidArgument, "max_tokens must not be negative");
  // Tokens not yet in the KV cache: the last sampled token of the previous call, then the prompt.
  const size_t evaluated = static_cast<size_t>(state_->used());
  if (tokens_.size() + prompt.size() == evaluated)
    fail(ErrorCode::InvalidArgument, "nothing to generate from: the prompt and the context are empty");
  if (tokens_.size() + prompt.size() > static_cast<size_t>(state_->capacity()))
    fail(ErrorCode::InvalidArgument,
         "the prompt (" + std::to_string(prompt.size()) + " tokens) does not fit in the context: " +
             std::to_string(tokens_.size()) + " of " + std::to_string(state_->capacity()) +
             " positions are used");

  GenerationStats stats;
  stats.prompt_tokens = static_cast<int32_t>(prompt.size());
  auto start = std::chrono::steady_clock::now();
  tokens_.insert(tokens_.end(), prompt.begin(), prompt.end());
  batch_.assign(tokens_.begin() + evaluated, tokens_.end());
  const float* logits = state_->forward(batch_);
  stats.prompt_seconds = seconds_since(start);

  start = std::chrono::steady_clock::now();
  const Tokenizer& tokenizer = model_->tokenizer();
  const size_t vocab_size = static_cast<size_t>(model_->vocab_size());
  DetokenizeStream detokenizer(tokenizer);
  StopStringMatcher matcher(options.stop_strings);
  bool cancelled = false;
  auto emit = [&](std::string_view text) {
    if (!text.empty() && on_text && !on_text(text)) cancelled = true;
  };

  StopReason reason = StopReason::MaxTokens;
  while (stats.generated_tokens < options.max_tokens) {
    const int32_t id = sampler.sample({logits, vocab_size}, tokens_);
    if (tokenizer.is_eos(id)) {
      reason = StopReason::Eos;
      break;
    }
    tokens_.push_back(id);
    ++stats.generated_tokens;
    emit(matcher.push(detokenizer.push(id)));
    if (cancelled) break;
    if (matcher.stopped()) {
      reason = StopReason::StopString;
      break;
    }
    if (stats.generated_tokens == options.max_tokens) break;  // no need to evaluate the last one
    if (state_->used() >= state_->capacity()) {
      tokens_.pop_back();  // emitted, but no position is left to hold it
      reason = StopReason::ContextFull;
      break;
    }
    batch_.assign(1, id);
    logits = state_->forward(batch_);
  }
  if (!cancelled && reason != StopReason::StopString) {
    emit(matcher.push(detokenizer.finish()));
    if (!cancelled && matcher.stopped()) reason = StopReason::StopString;
    if (!cancelled) emit(matcher.finish());
  }
  stats.stop_reason = cancelled ? StopReason::Cancelled : reason;
  stats.generate_seconds = seconds_since(start);
  return stats;
}

}  // namespace octet::decoding
