#include "engine/chat_template.h"

#include <ctime>
#include <vector>

#include "engine/error.h"

namespace octet {

namespace {

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

// Jinja's trim / Python's str.strip() (ASCII whitespace: what chat messages hold in practice).
std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

std::string unescape_jinja_string(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
  }
  return out;
}

// ChatML templates that write a system message of their own when the conversation has none
// (Qwen2: "You are a helpful assistant.") hold it as a string literal
// '<|im_start|>system\n...<|im_end|>\n'. Finds that literal; a '<|im_start|>system\n' literal
// that is closed before <|im_end|> (followed by the caller's content) is not one.
bool find_default_system(std::string_view source, std::string& system) {
  constexpr std::string_view kMarker = "<|im_start|>system";
  constexpr std::string_view kEnd = "<|im_end|>";
  for (size_t at = source.find(kMarker); at != std::string_view::npos;
       at = source.find(kMarker, at + 1)) {
    if (at == 0 || (source[at - 1] != '\'' && source[at - 1] != '"')) continue;
    const char quote = source[at - 1];
    size_t begin = at + kMarker.size();
    if (source.substr(begin, 2) == "\\n") begin += 2;
    else if (source.substr(begin, 1) == "\n") begin += 1;
    else continue;
    const size_t end = source.find(kEnd, begin);
    if (end == std::string_view::npos) continue;
    const std::string_view literal = source.substr(begin, end - begin);
    bool closed = false;  // an unescaped quote ends the literal before <|im_end|>
    for (size_t i = 0; i < literal.size() && !closed; ++i) {
      if (literal[i] == '\\') ++i;
      else closed = literal[i] == quote;
    }
    if (closed) continue;
    system = unescape_jinja_string(literal);
    return true;
  }
  return false;
}

std::string today_date_string() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[32];
  std::strftime(text, sizeof text, "%d %b %Y", &local);
  return text;
}

bool is_system(const ChatMessage& m) { return m.role == "system"; }

}  // namespace

ChatTemplate::ChatTemplate(std::string_view source, std::string bos_token, std::string eos_token)
    : bos_token_(std::move(bos_token)), eos_token_(std::move(eos_token)) {
  if (trim(source).empty()) fail(ErrorCode::Unsupported, "the model has no chat template");
  if (contains(source, "<|im_start|>")) {
    family_ = Family::ChatML;
    has_default_system_ = find_default_system(source, default_system_);
  } else if (contains(source, "<|start_header_id|>")) {
    family_ = Family::Llama3;
    knowledge_date_header_ = contains(source, "Cutting Knowledge Date");
    if (knowledge_date_header_)
      date_string = contains(source, "strftime_now") ? today_date_string() : "26 Jul 2024";
  } else if (contains(source, "<start_of_turn>")) {
    family_ = Family::Gemma;
    gemma_bos_ = contains(source, "bos_token");
    gemma_system_prefix_ = contains(source, "first_user_prefix");
  } else if (contains(source, "[INST]")) {
    if (contains(source, "[AVAILABLE_TOOLS]"))
      fail(ErrorCode::Unsupported,
           "unsupported chat template: Mistral v3 (tool calling, [AVAILABLE_TOOLS])");
    family_ = contains(source, "<<SYS>>") ? Family::Llama2 : Family::Mistral;
    mistral_system_prompt_ = contains(source, "system_message");
  } else if (contains(source, "<|user|>") && !contains(source, "<|end|>")) {
    family_ = Family::Zephyr;  // (Phi-3 uses the same role markers, closed by <|end|>)
  } else {
    const std::string_view start = trim(source).substr(0, 80);
    fail(ErrorCode::Unsupported,
         "unrecognized chat template (it begins \"" + std::string(start) +
             "\"); Octet formats ChatML, Llama 2, Llama 3, Mistral, Zephyr and Gemma templates");
  }
}

const char* ChatTemplate::family_name() const {
  switch (family_) {
    case Family::ChatML: return "chatml";
    case Family::Llama3: return "llama3";
    case Family::Llama2: return "llama2";
    case Family::Mistral: return "mistral";
    case Family::Zephyr: return "zephyr";
    case Family::Gemma: return "gemma";
  }
  return "";
}

std::string ChatTemplate::next_turn(std::span<const ChatMessage> messages) const {
  size_t last_reply = messages.size();
  for (size_t i = 0; i < messages.size(); ++i)
    if (messages[i].role == "assistant") last_reply = i;
  if (last_reply == messages.size()) return apply(messages, true);
  // The reply's place, found through a marker no template rewrites (no spaces to trim, no
  // template syntax, a control character no real reply carries).
  constexpr std::string_view kMarker = "\x01reply\x01";
  std::vector<ChatMessage> marked(messages.begin(), messages.end());
  marked[last_reply].content = kMarker;
  const std::string text = apply(marked, true);
  const size_t at = text.rfind(kMarker);
  if (at == std::string::npos)
    fail(ErrorCode::Unsupported, std::string("the ") + family_name() + " chat template does not write assistant replies");
  return text.substr(at + kMarker.size());
}

std::string ChatTemplate::apply(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  for (size_t i = 1; i < messages.size(); ++i)
    if (is_system(messages[i]) && family_ != Family::ChatML)
      fail(ErrorCode::InvalidArgument,
           std::string("a system message must come first (") + family_name() + " chat template)");
  switch (family_) {
    case Family::ChatML: return apply_chatml(messages, add_generation_prompt);
    case Family::Llama3: return apply_llama3(messages, add_generation_prompt);
    case Family::Llama2: return apply_llama2(messages);
    case Family::Mistral: return apply_mistral(messages);
    case Family::Zephyr: return apply_zephyr(messages, add_generation_prompt);
    case Family::Gemma: return apply_gemma(messages, add_generation_prompt);
  }
  return {};
}

std::string ChatTemplate::apply_chatml(std::span<const ChatMessage> messages,
                                       bool add_generation_prompt) const {
  std::string out;
  if (has_default_system_ && !messages.empty() && !is_system(messages[0]))
    out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
  for (const auto& m : messages) {
    out += "<|im_start|>";
    out += m.role;
    out += '\n';
    out += m.content;
    out += "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string ChatTemplate::apply_llama3(std::span<const ChatMessage> messages,
                                       bool add_generation_prompt) const {
  std::string out;
  if (knowledge_date_header_) {
    // Llama 3.1/3.2: the system header is always there, the caller's system message inside it.
    std::string_view system;
    if (!messages.empty() && is_system(messages[0])) {
      system = trim(messages[0].content);
      messages = messages.subspan(1);
    }
    out += bos_token_;
    out += "<|start_header_id|>system<|end_header_id|>\n\n";
    out += "Cutting Knowledge Date: December 2023\n";
    out += "Today Date: " + date_string + "\n\n";
    out += system;
    out += "<|eot_id|>";
  } else if (!messages.empty()) {
    out += bos_token_;  // Llama 3: written before the first message
  }
  for (const auto& m : messages) {
    out += "<|start_header_id|>";
    out += m.role;
    out += "<|end_header_id|>\n\n";
    out += trim(m.content);
    out += "<|eot_id|>";
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// The Llama 2 template takes no generation prompt: a conversation ending with a user turn
// already ends with " [/INST]".
std::string ChatTemplate::apply_llama2(std::span<const ChatMessage> messages) const {
  std::string system;
  const bool has_system = !messages.empty() && is_system(messages[0]);
  if (has_system) {
    system = "<<SYS>>\n" + std::string(messages[0].content) + "\n<</SYS>>\n\n";
    messages = messages.subspan(1);
  }
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string content = (i == 0 ? system : std::string()) + std::string(messages[i].content);
    if (messages[i].role == "user") {
      out += bos_token_ + "[INST] ";
      out += trim(content);
      out += " [/INST]";
    } else if (messages[i].role == "assistant") {
      out += ' ';
      out += trim(content);
      out += ' ' + eos_token_;
    }
  }
  return out;
}

std::string ChatTemplate::apply_mistral(std::span<const ChatMessage> messages) const {
  std::string system;
  if (!messages.empty() && is_system(messages[0])) {
    if (!mistral_system_prompt_)
      fail(ErrorCode::InvalidArgument,
           "this model's chat template (Mistral) supports only user and assistant roles");
    system = std::string(messages[0].content) + "\n\n";
    messages = messages.subspan(1);
  }
  // v1 templates (those with a system prompt) put a space before [INST] and before each answer.
  const std::string_view space = mistral_system_prompt_ ? " " : "";
  std::string out = bos_token_;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (m.role == "user") {
      out += space;
      out += "[INST] ";
      if (i == 0) out += system;
      out += m.content;
      out += " [/INST]";
    } else if (m.role == "assistant") {
      out += space;
      out += m.content;
      out += eos_token_;
    } else {
      fail(ErrorCode::InvalidArgument, "the Mistral chat template takes user and assistant messages, not \"" +
                                           std::string(m.role) + "\"");
    }
  }
  return out;
}

std::string ChatTemplate::apply_zephyr(std::span<const ChatMessage> messages,
                                       bool add_generation_prompt) const {
  std::string out;
  for (const auto& m : messages) {
    if (m.role != "user" && m.role != "system" && m.role != "assistant") continue;
    out += "<|";
    out += m.role;
    out += "|>\n";
    out += m.content;
    out += eos_token_ + "\n";
  }
  // Written inside the template's loop, after the last message: none for an empty conversation.
  if (add_generation_prompt && !messages.empty()) out += "<|assistant|>\n";
  return out;
}

std::string ChatTemplate::apply_gemma(std::span<const ChatMessage> messages,
                                      bool add_generation_prompt) const {
  std::string first_user_prefix;
  if (!messages.empty() && is_system(messages[0])) {
    if (!gemma_system_prefix_)
      fail(ErrorCode::InvalidArgument, "this model's chat template (Gemma) does not support a system message");
    first_user_prefix = std::string(messages[0].content) + "\n\n";  // Gemma 3: not trimmed
    messages = messages.subspan(1);
  }
  std::string out = gemma_bos_ ? bos_token_ : std::string();
  for (size_t i = 0; i < messages.size(); ++i) {
    out += "<start_of_turn>";
    out += messages[i].role == "assistant" ? std::string_view("model") : messages[i].role;
    out += '\n';
    if (i == 0) out += first_user_prefix;
    out += trim(messages[i].content);
    out += "<end_of_turn>\n";
  }
  if (add_generation_prompt) out += "<start_of_turn>model\n";
  return out;
}

}  // namespace octet
