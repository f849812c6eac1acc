// generate: text generation and interactive chat from a .qbin model, on the public C API only.
// stdout carries the generated text alone, streamed as it comes; timings go to stderr.
#include <octet.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"

namespace {

using cli::die;
using cli::parse_number;
using cli::seconds_since;

const char* const kUsage = R"(usage: generate --model MODEL.qbin [--prompt TEXT | --chat] [options]

  --model PATH          model file (.qbin, see octet-convert)
  --prompt TEXT         text to continue
  -n, --max-tokens N    tokens to generate per reply (default 128)
  --temperature T       0: greedy (default 0.8)
  --top-k K             0: off (default 40)
  --top-p P             1: off (default 0.95)
  --min-p M             0: off (default 0.05)
  --repeat-penalty R    1: off (default 1.1)
  --repeat-last-n N     tokens the penalty looks back over (default 64)
  --seed S              random seed (default: from the clock)
  --stop STR            stop before this text (repeatable)
  --threads N           0: all cores (default)
  --context N           context length in tokens (default: the model's, at most 4096)
  --kv-type T           KV cache type: f16 (default), f32, or q8_0 (~53% of f16's memory;
                        head_dim must be a multiple of 32)
  --chat                interactive chat: one user message per stdin line, until EOF
  --system TEXT         system message for --chat
  --kernels NAME        force a kernel backend: scalar, avx2, avx512
  -h, --help            this help
)";

struct Options {
  std::string model;
  std::string prompt;
  bool has_prompt = false;
  bool chat = false;
  std::string system;
  std::string kernels;
  int32_t threads = 0;
  int32_t context = 0;
  int32_t kv_type = OCTET_KV_F16;
  std::vector<std::string> stop;
  octet_generate_params generate{};
};

void check(octet_status status, const char* what) {
  if (status != OCTET_OK) die(std::string(what) + ": " + octet_last_error());
}

int64_t parse_integer(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0') die(flag + ": not an integer: \"" + text + "\"");
  return value;
}

uint64_t parse_seed(const char* text) {
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0' || text[0] == '-') die(std::string("--seed: not a non-negative integer: \"") + text + "\"");
  return value;
}

Options parse_arguments(int argc, char** argv) {
  Options o;
  octet_generate_params_init(&o.generate);
  o.generate.seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (flag == "--chat") {
      o.chat = true;
      continue;
    }
    if (i + 1 >= argc) die(flag + ": missing value (see --help)");
    const char* value = argv[++i];
    if (flag == "--model") o.model = value;
    else if (flag == "--prompt") {
      o.prompt = value;
      o.has_prompt = true;
    }
    else if (flag == "-n" || flag == "--max-tokens") o.generate.max_tokens = parse_integer(flag, value);
    else if (flag == "--temperature") o.generate.temperature = parse_number(flag, value);
    else if (flag == "--top-k") o.generate.top_k = parse_integer(flag, value);
    else if (flag == "--top-p") o.generate.top_p = parse_number(flag, value);
    else if (flag == "--min-p") o.generate.min_p = parse_number(flag, value);
    else if (flag == "--repeat-penalty") o.generate.repeat_penalty = parse_number(flag, value);
    else if (flag == "--repeat-last-n") o.generate.repeat_last_n = parse_integer(flag, value);
    else if (flag == "--seed") o.generate.seed = parse_seed(value);
    else if (flag == "--stop") o.stop.push_back(value);
    else if (flag == "--threads") o.threads = parse_integer(flag, value);
    else if (flag == "--context") o.context = parse_integer(flag, value);
    else if (flag == "--kv-type") o.kv_type = cli::parse_kv_type(value);
    else if (flag == "--system") o.system = value;
    else if (flag == "--kernels") o.kernels = value;
    else die("unknown option " + flag + " (see --help)");
  }
  if (o.model.empty()) die("--model is required (see --help)");
  if (!o.chat && !o.has_prompt) die("give --prompt TEXT, or --chat (see --help)");
  if (o.chat && o.has_prompt) die("--prompt and --chat do not go together");
  if (!o.system.empty() && !o.chat) die("--system needs --chat");
  return o;
}

// Streams each piece to stdout as it comes, keeping a copy (chat history needs the reply).
int print_piece(const char* text, size_t len, void* reply) {
  std::fwrite(text, 1, len, stdout);
  std::fflush(stdout);
  static_cast<std::string*>(reply)->append(text, len);
  return 0;
}

const char* stop_reason_name(octet_stop_reason reason) {
  switch (reason) {
    case OCTET_STOP_EOS: return "end of text";
    case OCTET_STOP_MAX_TOKENS: return "max tokens";
    case OCTET_STOP_STRING: return "stop string";
    case OCTET_STOP_CONTEXT_FULL: return "context full";
    case OCTET_STOP_CANCELLED: return "cancelled";
  }
  return "";
}

void report(const octet_generate_stats& s) {
  // On a terminal the text just streamed may not end its line: start the report on a new one.
  if (isatty(STDOUT_FILENO) && isatty(STDERR_FILENO)) std::fputc('\n', stderr);
  std::fprintf(stderr, "prompt: %d tokens in %.3f s (%.1f tokens/s); generation: %d tokens in %.3f s (%.1f tokens/s); stop: %s\n",
               s.prompt_tokens, s.prompt_seconds, s.prompt_seconds > 0 ? s.prompt_tokens / s.prompt_seconds : 0.0,
               s.generated_tokens, s.generate_seconds,
               s.generate_seconds > 0 ? s.generated_tokens / s.generate_seconds : 0.0, stop_reason_name(s.stop_reason));
}

// The text a chat turn generates from (octet_chat_format_next): the conversation's newest part.
std::string chat_next_turn(const octet_model* model, const std::vector<std::string>& roles,
                           const std::vector<std::string>& contents) {
  std::vector<octet_chat_message> messages;
  for (size_t i = 0; i < roles.size(); ++i) messages.push_back({roles[i].c_str(), contents[i].c_str()});
  size_t length = 0;
  octet_chat_format_next(model, messages.data(), messages.size(), nullptr, 0, &length);  // size it
  std::string text(length, '\0');
  check(octet_chat_format_next(model, messages.data(), messages.size(), text.data(), text.size() + 1, &length),
        "chat template");
  return text;
}

// Chat keeps the KV cache between turns: each turn sends only what the formatted conversation
// adds after the last reply, which the context holds as it was generated.
void run_chat(const octet_model* model, octet_context* context, Options& options) {
  const bool templated = octet_model_has_chat_template(model);
  if (!templated) std::fprintf(stderr, "note: this model has no chat template; lines are sent as plain text\n");
  if (!templated && !options.system.empty()) die("--system needs a model with a chat template");
  std::vector<std::string> roles, contents;
  if (!options.system.empty()) roles.push_back("system"), contents.push_back(options.system);
  const bool interactive = isatty(STDIN_FILENO);
  std::string line;
  while (true) {
    if (interactive) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    roles.push_back("user");
    contents.push_back(line);
    std::string prompt = line;
    if (templated) {
      prompt = chat_next_turn(model, roles, contents);
      options.generate.add_bos = 0;  // the template writes BOS itself where the model wants one
    }
    std::string reply;
    octet_generate_stats stats{};
    check(octet_generate(context, prompt.data(), prompt.size(), &options.generate, print_piece, &reply, &stats),
          "generate");
    std::fputc('\n', stdout);
    std::fflush(stdout);
    report(stats);
    roles.push_back("assistant");
    contents.push_back(reply);
    if (stats.stop_reason == OCTET_STOP_CONTEXT_FULL) {
      std::fprintf(stderr, "note: the context is full; starting a new conversation\n");
      octet_context_reset(context);
      roles.resize(options.system.empty() ? 0 : 1);
      contents.resize(roles.size());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_arguments(argc, argv);
  if (!options.kernels.empty()) check(octet_set_kernel_backend(options.kernels.c_str()), "--kernels");

  const auto load_start = std::chrono::steady_clock::now();
  octet_model* model = nullptr;
  check(octet_model_load(options.model.c_str(), nullptr, &model), "loading the model");
  std::fprintf(stderr, "loaded %s (%s, %d tokens of vocabulary) in %.3f s, kernels: %s\n", options.model.c_str(),
               octet_model_architecture(model), octet_model_vocab_size(model), seconds_since(load_start),
               octet_kernel_backend());

  octet_context_params context_params;
  octet_context_params_init(&context_params);
  context_params.context_length = options.context;
  context_params.n_threads = options.threads;
  context_params.kv_type = options.kv_type;
  octet_context* context = nullptr;
  check(octet_context_create(model, &context_params, &context), "creating the context");

  std::vector<const char*> stop;
  for (const auto& s : options.stop) stop.push_back(s.c_str());
  options.generate.stop = stop.data();
  options.generate.n_stop = stop.size();

  if (options.chat) {
    run_chat(model, context, options);
  } else {
    std::string text;
    octet_generate_stats stats{};
    check(octet_generate(context, options.prompt.data(), options.prompt.size(), &options.generate, print_piece,
                         &text, &stats),
          "generate");
    report(stats);
  }
  octet_context_free(context);
  octet_model_free(model);
  return 0;
}
