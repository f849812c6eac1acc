// Chat templates: each family formatted exactly as the real Jinja templates render.
//
// The templates below are the ones the models ship (tokenizer_config.json's chat_template,
// JSON-decoded): Qwen2-Instruct, SmolLM-Instruct, SmolLM2-Instruct, Meta-Llama-3-Instruct,
// Llama-3.2-Instruct, Llama-2-chat, Mistral-7B-Instruct v0.1 and v0.2 (v1 template with system
// prompt), Zephyr/TinyLlama-Chat, Gemma 2 and Gemma 3 instruct. The expected strings were produced
// by rendering those templates with transformers (5.23, in /work/main/.venv):
//   from transformers.utils.chat_template_utils import render_jinja_template
//   render_jinja_template(conversations=[messages], chat_template=TEMPLATE,
//       add_generation_prompt=..., bos_token=BOS, eos_token=EOS, date_string="26 Jul 2024")
// for the three conversations of kCases (with a system message, without one, and an unfinished
// one without the generation prompt), and pasted here. nullptr: the real template raises.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cctype>

#include <functional>
#include <string>
#include <vector>

#include "engine/chat_template.h"
#include "engine/error.h"
#include "test_util.h"

using octet::ChatMessage;
using octet::ChatTemplate;
using octet::test::error_code_of;

namespace {

const char* const kQwen2 =
    R"JINJA({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})JINJA";

const char* const kSmolLM =
    R"JINJA({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})JINJA";

const char* const kSmolLM2 =
    R"JINJA({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})JINJA";

const char* const kLlama3 =
    R"JINJA({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %})JINJA";

const char* const kLlama32 =
    R"JINJA({{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)JINJA";

const char* const kLlama2 =
    R"JINJA({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %})JINJA";

const char* const kMistralV01 =
    R"JINJA({{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %})JINJA";

const char* const kMistralV02 =
    R"JINJA({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
)JINJA";

const char* const kZephyr =
    R"JINJA({% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %})JINJA";

const char* const kGemma2 =
    R"JINJA({{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %})JINJA";

const char* const kGemma3 =
    R"JINJA({{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
)JINJA";

struct Case {
  const char* name;
  const char* source;
  const char* bos;
  const char* eos;
  const char* with_system;     // system + user + assistant + user, generation prompt
  const char* without_system;  // user + assistant + user, generation prompt
  const char* no_generation;   // user + assistant, no generation prompt
};

const Case kCases[] = {
    {"qwen2", kQwen2, "<s>", "</s>",
     "<|im_start|>system\nYou are terse. <|im_end|>\n<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n<|im_start|>assistant\n",
     "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n<|im_start|>assistant\n",
     "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n"},
    {"smollm", kSmolLM, "<s>", "</s>",
     "<|im_start|>system\nYou are terse. <|im_end|>\n<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n<|im_start|>assistant\n",
     "<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n<|im_start|>assistant\n",
     "<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n"},
    {"smollm2", kSmolLM2, "<s>", "</s>",
     "<|im_start|>system\nYou are terse. <|im_end|>\n<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n<|im_start|>assistant\n",
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n<|im_start|>assistant\n",
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n Hi there!<|im_end|>\n<|im_start|>assistant\n  Hello, how can I help?  <|im_end|>\n"},
    {"llama3", kLlama3, "<|begin_of_text|>", "<|eot_id|>",
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello, how can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
     "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello, how can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
     "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello, how can I help?<|eot_id|>"},
    {"llama3.2", kLlama32, "<|begin_of_text|>", "<|eot_id|>",
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello, how can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello, how can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello, how can I help?<|eot_id|>"},
    {"llama2", kLlama2, "<s>", "</s>",
     "<s>[INST] <<SYS>>\nYou are terse. \n<</SYS>>\n\n Hi there! [/INST] Hello, how can I help? </s><s>[INST] What is 2+2? [/INST]",
     "<s>[INST] Hi there! [/INST] Hello, how can I help? </s><s>[INST] What is 2+2? [/INST]",
     "<s>[INST] Hi there! [/INST] Hello, how can I help? </s>"},
    {"mistral-v0.1", kMistralV01, "<s>", "</s>",
     nullptr,
     "<s>[INST]  Hi there! [/INST]  Hello, how can I help?  </s>[INST] What is 2+2?\n [/INST]",
     "<s>[INST]  Hi there! [/INST]  Hello, how can I help?  </s>"},
    {"mistral-v0.2", kMistralV02, "<s>", "</s>",
     "<s> [INST] You are terse. \n\n Hi there! [/INST]   Hello, how can I help?  </s> [INST] What is 2+2?\n [/INST]",
     "<s> [INST]  Hi there! [/INST]   Hello, how can I help?  </s> [INST] What is 2+2?\n [/INST]",
     "<s> [INST]  Hi there! [/INST]   Hello, how can I help?  </s>"},
    {"zephyr", kZephyr, "<s>", "</s>",
     "<|system|>\nYou are terse. </s>\n<|user|>\n Hi there!</s>\n<|assistant|>\n  Hello, how can I help?  </s>\n<|user|>\nWhat is 2+2?\n</s>\n<|assistant|>\n",
     "<|user|>\n Hi there!</s>\n<|assistant|>\n  Hello, how can I help?  </s>\n<|user|>\nWhat is 2+2?\n</s>\n<|assistant|>\n",
     "<|user|>\n Hi there!</s>\n<|assistant|>\n  Hello, how can I help?  </s>\n"},
    {"gemma2", kGemma2, "<bos>", "<eos>",
     nullptr,
     "<bos><start_of_turn>user\nHi there!<end_of_turn>\n<start_of_turn>model\nHello, how can I help?<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
     "<bos><start_of_turn>user\nHi there!<end_of_turn>\n<start_of_turn>model\nHello, how can I help?<end_of_turn>\n"},
    {"gemma3", kGemma3, "<bos>", "<eos>",
     "<bos><start_of_turn>user\nYou are terse. \n\nHi there!<end_of_turn>\n<start_of_turn>model\nHello, how can I help?<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
     "<bos><start_of_turn>user\nHi there!<end_of_turn>\n<start_of_turn>model\nHello, how can I help?<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
     "<bos><start_of_turn>user\nHi there!<end_of_turn>\n<start_of_turn>model\nHello, how can I help?<end_of_turn>\n"},
};

const std::vector<ChatMessage> kSystem = {{"system", "You are terse. "}};
const std::vector<ChatMessage> kConversation = {{"user", " Hi there!"},
                                                {"assistant", "  Hello, how can I help?  "},
                                                {"user", "What is 2+2?\n"}};

std::vector<ChatMessage> operator+(std::vector<ChatMessage> a, const std::vector<ChatMessage>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("every family renders as its real template") {
  for (const Case& c : kCases) {
    CAPTURE(c.name);
    ChatTemplate chat(c.source, c.bos, c.eos);
    chat.date_string = "26 Jul 2024";
    if (c.with_system) {
      CHECK(chat.apply(kSystem + kConversation, true) == c.with_system);
    } else {
      CHECK(error_code_of([&] { chat.apply(kSystem + kConversation, true); }) ==
            octet::ErrorCode::InvalidArgument);
    }
    CHECK(chat.apply(kConversation, true) == c.without_system);
    const std::vector<ChatMessage> unfinished(kConversation.begin(), kConversation.begin() + 2);
    CHECK(chat.apply(unfinished, false) == c.no_generation);
  }
}

TEST_CASE("the next turn of a kept context is what follows the last reply, and never the reply again") {
  for (const Case& c : kCases) {
    CAPTURE(c.name);
    ChatTemplate chat(c.source, c.bos, c.eos);
    chat.date_string = "26 Jul 2024";
    const std::string full = c.without_system;
    const std::string next = chat.next_turn(kConversation);
    // The full rendering is: everything up to and including the reply as the template writes
    // it, then `next`. The reply (trimmed or not) ends what comes before.
    REQUIRE(full.size() >= next.size());
    CHECK(full.compare(full.size() - next.size(), next.size(), next) == 0);
    std::string before = full.substr(0, full.size() - next.size());
    while (!before.empty() && std::isspace(static_cast<unsigned char>(before.back()))) before.pop_back();
    CHECK(before.ends_with("Hello, how can I help?"));
    CHECK(next.find("What is 2+2?") != std::string::npos);
    CHECK(next.find("Hello, how can I help?") == std::string::npos);
    CHECK(next.find("Hi there!") == std::string::npos);
    // Before any reply, the whole conversation.
    const std::vector<ChatMessage> first(kConversation.begin(), kConversation.begin() + 1);
    CHECK(chat.next_turn(first) == chat.apply(first, true));
  }
  // Llama 2 writes ' ' + trim(reply) + ' ' + eos: the next turn starts after the reply, with the
  // space and EOS the model's own reply tokens do not hold.
  ChatTemplate llama2(kLlama2, "<s>", "</s>");
  CHECK(llama2.next_turn(kConversation) == " </s><s>[INST] What is 2+2? [/INST]");
}

TEST_CASE("families are recognized by their markers") {
  CHECK(std::string(ChatTemplate(kQwen2, "", "").family_name()) == "chatml");
  CHECK(std::string(ChatTemplate(kLlama32, "", "").family_name()) == "llama3");
  CHECK(std::string(ChatTemplate(kLlama2, "", "").family_name()) == "llama2");
  CHECK(std::string(ChatTemplate(kMistralV01, "", "").family_name()) == "mistral");
  CHECK(std::string(ChatTemplate(kZephyr, "", "").family_name()) == "zephyr");
  CHECK(std::string(ChatTemplate(kGemma3, "", "").family_name()) == "gemma");
}

TEST_CASE("Llama 3.2 writes today's date when the template asks strftime_now") {
  const ChatTemplate chat(kLlama32, "<|begin_of_text|>", "<|eot_id|>");
  REQUIRE(chat.date_string.size() == 11);  // "%d %b %Y", e.g. "05 Mar 2025"
  CHECK(chat.apply(kConversation, true).find("Today Date: " + chat.date_string + "\n\n") !=
        std::string::npos);
}

TEST_CASE("an unknown or missing template is refused, naming it") {
  const char* alpaca = "{% for message in messages %}### Instruction: {{ message['content'] }}{% endfor %}";
  try {
    ChatTemplate chat(alpaca, "", "");
    FAIL("accepted an unknown template");
  } catch (const octet::Error& e) {
    CHECK(e.code() == octet::ErrorCode::Unsupported);
    CHECK(std::string(e.what()).find("### Instruction") != std::string::npos);
  }
  CHECK(error_code_of([] { ChatTemplate("", "", ""); }) == octet::ErrorCode::Unsupported);
  CHECK(error_code_of([] { ChatTemplate("  \n", "", ""); }) == octet::ErrorCode::Unsupported);
  // Phi-3 shares Zephyr's role markers but closes turns with <|end|>.
  CHECK(error_code_of([] {
          ChatTemplate("{% for message in messages %}{{'<|user|>' + '\n' + message['content'] + "
                       "'<|end|>'}}{% endfor %}",
                       "", "");
        }) == octet::ErrorCode::Unsupported);
  CHECK(error_code_of([] { ChatTemplate("{{ '[AVAILABLE_TOOLS] [' }}{{ '[INST] ' }}", "", ""); }) ==
        octet::ErrorCode::Unsupported);
}

TEST_CASE("a system message after the first is refused where templates cannot place it") {
  const ChatTemplate llama(kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  CHECK(error_code_of([&] { llama.apply(kConversation + kSystem, true); }) == octet::ErrorCode::InvalidArgument);
  // ChatML renders any role anywhere.
  const ChatTemplate chatml(kSmolLM, "", "");
  CHECK(chatml.apply(kSystem, false) == "<|im_start|>system\nYou are terse. <|im_end|>\n");
}

TEST_CASE("an empty conversation") {
  CHECK(ChatTemplate(kQwen2, "", "").apply({}, true) == "<|im_start|>assistant\n");
  CHECK(ChatTemplate(kGemma2, "<bos>", "<eos>").apply({}, true) == "<bos><start_of_turn>model\n");
}
