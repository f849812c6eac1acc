// Chat templates without a Jinja engine: the template a model ships (tokenizer.chat_template) is
// recognized by its markers as one of the common families, and messages are formatted exactly as
// that family's real templates render them (as transformers' apply_chat_template does):
//   ChatML       "<|im_start|>"        Qwen2, Qwen2.5, SmolLM, SmolLM2 (a default system message
//                                      written in the template is honoured)
//   Llama 3      "<|start_header_id|>" Llama 3, and Llama 3.1/3.2 ("Cutting Knowledge Date" header)
//   Llama 2      "[INST]" + "<<SYS>>"  Llama 2 chat
//   Mistral      "[INST]"              Mistral Instruct v0.1/v0.2 (with or without a system prompt)
//   Zephyr       "<|user|>"            Zephyr, TinyLlama chat
//   Gemma        "<start_of_turn>"     Gemma, Gemma 2, Gemma 3
// Anything else is refused (Unsupported) rather than formatted wrongly. Where a real template
// raises (a system message Gemma 2 or Mistral v0.1 cannot take), so does this (InvalidArgument).
#pragma once
#include <span>
#include <string>
#include <string_view>

namespace octet {

struct ChatMessage {
  std::string_view role;  // "system", "user", "assistant"
  std::string_view content;
};

class ChatTemplate {
 public:
  enum class Family { ChatML, Llama3, Llama2, Mistral, Zephyr, Gemma };

  // `jinja_source`: the template as shipped; bos/eos: the texts of the model's BOS and EOS tokens
  // (the templates' bos_token and eos_token). Throws (Unsupported) for an empty or unknown template.
  ChatTemplate(std::string_view jinja_source, std::string bos_token, std::string eos_token);

  std::string apply(std::span<const ChatMessage> messages, bool add_generation_prompt) const;

  // What a chat that keeps its KV cache feeds for the conversation's newest messages: the text
  // after the last assistant message in apply(messages, true), i.e. that reply's end of turn,
  // the messages after it and the generation prompt; all of apply(messages, true) when there is
  // no assistant message. The cache holds each reply as the model generated it, which templates
  // may rewrite (Llama 2 trims it), so the reply itself is never fed again.
  std::string next_turn(std::span<const ChatMessage> messages) const;

  const char* family_name() const;

  // Llama 3.1/3.2 write "Today Date: <date>" in the system header. Templates that call
  // strftime_now use today's date (as transformers does), the others "26 Jul 2024"; set this to
  // override ("%d %b %Y", e.g. "05 Mar 2025").
  std::string date_string;

 private:
  std::string apply_chatml(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
  std::string apply_llama3(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
  std::string apply_llama2(std::span<const ChatMessage> messages) const;
  std::string apply_mistral(std::span<const ChatMessage> messages) const;
  std::string apply_zephyr(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
  std::string apply_gemma(std::span<const ChatMessage> messages, bool add_generation_prompt) const;

  Family family_;
  std::string bos_token_, eos_token_;
  // Variants within a family, read from the template's text.
  std::string default_system_;     // ChatML: the system message used when none is given
  bool has_default_system_ = false;
  bool knowledge_date_header_ = false;  // Llama 3.1+: always a system header with dates
  bool mistral_system_prompt_ = false;  // Mistral " [INST] " (v1) templates take a system prompt
  bool gemma_bos_ = false;              // Gemma 2/3 start with bos_token; Gemma 1 does not
  bool gemma_system_prefix_ = false;    // Gemma 3 puts the system message in the first turn
};

}  // namespace octet
