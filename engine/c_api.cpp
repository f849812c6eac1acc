// The public C API (include/octet.h) over the C++ engine. Every entry point validates its
// arguments and catches every exception: octet::Error becomes its code, std::bad_alloc
// OCTET_ERR_OUT_OF_MEMORY, anything else OCTET_ERR_INTERNAL, with the message kept per thread.
#include "octet.h"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "engine/chat_template.h"
#include "engine/decoding/generator.h"
#include "engine/decoding/sampler.h"
#include "engine/error.h"
#include "engine/model.h"
#include "engine/translator.h"
#include "kernels/kernels.h"

using octet::ErrorCode;
using octet::fail;

struct octet_model {
  std::shared_ptr<const octet::LanguageModel> model;
};

struct octet_translator {
  octet::Translator translator;
};

struct octet_context {
  octet::decoding::Generator generator;
  int32_t n_threads;
};

namespace {

constexpr int32_t kDefaultMaxContext = 4096;

thread_local std::string last_error;

octet_status record_error(octet_status status, const char* message) noexcept {
  try {
    last_error = message;
  } catch (...) {
    last_error.clear();  // no memory for the message: the code still tells what happened
  }
  return status;
}

template <class Body>
octet_status guarded(Body&& body) noexcept {
  try {
    body();
    return OCTET_OK;
  } catch (const octet::Error& e) {
    return record_error(static_cast<octet_status>(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return record_error(OCTET_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return record_error(OCTET_ERR_INTERNAL, e.what());
  } catch (...) {
    return record_error(OCTET_ERR_INTERNAL, "unknown internal error");
  }
}

void require(bool condition, const char* message) {
  if (!condition) fail(ErrorCode::InvalidArgument, message);
}

octet::DType kv_dtype(int32_t kv_type) {
  switch (kv_type) {
    case OCTET_KV_F16: return octet::DType::F16;
    case OCTET_KV_F32: return octet::DType::F32;
    case OCTET_KV_Q8_0: return octet::DType::Q8_0;
  }
  fail(ErrorCode::InvalidArgument, "kv_type " + std::to_string(kv_type) +
                                       " is not OCTET_KV_F16, OCTET_KV_F32 or OCTET_KV_Q8_0");
}

// The capacity convention of octet.h: *length is always the size needed; a buffer too small
// is an error the caller can retry from.
void copy_out(const std::string& text, char* buffer, size_t capacity, size_t* length) {
  *length = text.size();
  if (capacity < text.size())
    fail(ErrorCode::InvalidArgument, "buffer of " + std::to_string(capacity) +
                                         " bytes is too small: the text needs " +
                                         std::to_string(text.size()));
  if (!text.empty()) std::memcpy(buffer, text.data(), text.size());
  if (capacity > text.size()) buffer[text.size()] = '\0';
}

std::string token_text(const octet::Tokenizer& tokenizer, int32_t id) {
  if (id < 0) return {};
  const int32_t ids[1] = {id};
  return tokenizer.decode(ids, /*skip_special=*/false);
}

void use_threads(int32_t n_threads) { omp_set_num_threads(n_threads); }

octet::DType parse_dtype(const char* name, const char* what) {
  octet::DType type;
  if (!octet::kernels::dtype_from_name(name, &type))
    fail(ErrorCode::InvalidArgument, std::string("unknown ") + what + " \"" + name +
                                         "\" (f32, f16, q8_0, q4_0, q4_1)");
  return type;
}

octet::decoding::SamplingParams sampling_params(const octet_generate_params& p) {
  require(std::isfinite(p.temperature) && p.temperature >= 0, "temperature must be >= 0");
  require(p.top_k >= 0, "top_k must be >= 0");
  require(p.top_p >= 0 && p.top_p <= 1, "top_p must be in [0, 1]");
  require(p.min_p >= 0 && p.min_p <= 1, "min_p must be in [0, 1]");
  require(std::isfinite(p.repeat_penalty) && p.repeat_penalty > 0, "repeat_penalty must be > 0");
  require(p.repeat_last_n >= -1, "repeat_last_n must be >= -1");
  octet::decoding::SamplingParams s;
  s.temperature = p.temperature;
  s.top_k = p.top_k;
  s.top_p = p.top_p;
  s.min_p = p.min_p;
  s.repeat_penalty = p.repeat_penalty;
  s.repeat_last_n = p.repeat_last_n;
  s.seed = p.seed;
  return s;
}

octet_stop_reason to_c(octet::decoding::StopReason reason) {
  using octet::decoding::StopReason;
  switch (reason) {
    case StopReason::Eos: return OCTET_STOP_EOS;
    case StopReason::MaxTokens: return OCTET_STOP_MAX_TOKENS;
    case StopReason::StopString: return OCTET_STOP_STRING;
    case StopReason::ContextFull: return OCTET_STOP_CONTEXT_FULL;
    case StopReason::Cancelled: return OCTET_STOP_CANCELLED;
  }
  return OCTET_STOP_EOS;
}

// The conversation formatted by `format` with the model's chat template, copied out.
template <typename Format>
void format_chat(const char* function, const octet_model* model, const octet_chat_message* messages, size_t n_messages,
                 char* text, size_t capacity, size_t* text_len, Format format) {
  const std::string name(function);
  require(model && text_len, (name + ": model and text_len must not be NULL").c_str());
  require(messages || n_messages == 0, (name + ": messages is NULL").c_str());
  require(text || capacity == 0, (name + ": text is NULL with a non-zero capacity").c_str());
  std::vector<octet::ChatMessage> conversation;
  conversation.reserve(n_messages);
  for (size_t i = 0; i < n_messages; ++i) {
    require(messages[i].role && messages[i].content, (name + ": a message's role or content is NULL").c_str());
    conversation.push_back({messages[i].role, messages[i].content});
  }
  const octet::Tokenizer& tokenizer = model->model->tokenizer();
  const std::string source = model->model->file().metadata().str_or("tokenizer.chat_template", std::string());
  const octet::ChatTemplate chat_template(
      source, token_text(tokenizer, tokenizer.bos_id()),
      token_text(tokenizer, tokenizer.eos_ids().empty() ? -1 : tokenizer.eos_ids().front()));
  copy_out(format(chat_template, std::span<const octet::ChatMessage>(conversation)), text, capacity, text_len);
}

}  // namespace

extern "C" {

const char* octet_version(void) { return OCTET_VERSION; }

const char* octet_last_error(void) { return last_error.c_str(); }

const char* octet_kernel_backend(void) { return octet::kernels::backend_name(); }

octet_status octet_set_kernel_backend(const char* name) {
  return guarded([&] {
    require(name != nullptr, "backend name is NULL");
    if (octet::kernels::force_backend(name)) return;
    std::string available;
    for (const char* const* b = octet::kernels::available_backends(); *b; ++b)
      available += std::string(available.empty() ? "" : ", ") + *b;
    const bool known = !std::strcmp(name, "scalar") || !std::strcmp(name, "avx2") ||
                       !std::strcmp(name, "avx512") || !std::strcmp(name, "neon");
    fail(known ? ErrorCode::Unsupported : ErrorCode::InvalidArgument,
         std::string(known ? "this CPU cannot run the kernel backend \"" : "unknown kernel backend \"") +
             name + "\" (available: " + available + ")");
  });
}

// ---- Models --------------------------------------------------------------------------------

void octet_model_params_init(octet_model_params* params) {
  if (params) params->verify_checksums = 1;
}

octet_status octet_model_load(const char* path, const octet_model_params* params, octet_model** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(path != nullptr && out != nullptr, "octet_model_load: path and out must not be NULL");
    octet_model_params defaults;
    octet_model_params_init(&defaults);
    if (!params) params = &defaults;
    auto model = std::make_unique<octet_model>();
    model->model = octet::LanguageModel::load(path, params->verify_checksums != 0);
    *out = model.release();
  });
}

void octet_model_free(octet_model* model) { delete model; }

const char* octet_model_architecture(const octet_model* model) {
  return model ? model->model->architecture().c_str() : "";
}
int32_t octet_model_vocab_size(const octet_model* model) { return model ? model->model->vocab_size() : 0; }
int32_t octet_model_context_length(const octet_model* model) {
  return model ? model->model->context_length() : 0;
}
int32_t octet_model_bos(const octet_model* model) { return model ? model->model->tokenizer().bos_id() : -1; }
int32_t octet_model_eos(const octet_model* model) {
  if (!model) return -1;
  const auto& eos = model->model->tokenizer().eos_ids();
  return eos.empty() ? -1 : eos.front();
}
int octet_model_has_chat_template(const octet_model* model) {
  if (!model) return 0;
  const auto* value = model->model->file().metadata().find("tokenizer.chat_template");
  const auto* text = value ? std::get_if<std::string>(value) : nullptr;
  return text && !text->empty();
}

octet_status octet_tokenize(const octet_model* model, const char* text, size_t text_len, int add_bos,
                            int parse_special, int32_t* ids, size_t capacity, size_t* n_ids) {
  return guarded([&] {
    require(model && n_ids, "octet_tokenize: model and n_ids must not be NULL");
    require(text || text_len == 0, "octet_tokenize: text is NULL");
    require(ids || capacity == 0, "octet_tokenize: ids is NULL with a non-zero capacity");
    const auto tokens = model->model->tokenizer().encode(std::string_view(text ? text : "", text_len),
                                                         add_bos != 0, parse_special != 0);
    *n_ids = tokens.size();
    if (capacity < tokens.size())
      fail(ErrorCode::InvalidArgument, "capacity of " + std::to_string(capacity) +
                                           " ids is too small: the text needs " +
                                           std::to_string(tokens.size()));
    std::copy(tokens.begin(), tokens.end(), ids);
  });
}

octet_status octet_detokenize(const octet_model* model, const int32_t* ids, size_t n_ids, char* text,
                              size_t capacity, size_t* text_len) {
  return guarded([&] {
    require(model && text_len, "octet_detokenize: model and text_len must not be NULL");
    require(ids || n_ids == 0, "octet_detokenize: ids is NULL");
    require(text || capacity == 0, "octet_detokenize: text is NULL with a non-zero capacity");
    const int32_t vocab_size = model->model->vocab_size();
    for (size_t i = 0; i < n_ids; ++i)
      if (ids[i] < 0 || ids[i] >= vocab_size)
        fail(ErrorCode::InvalidArgument, "token id " + std::to_string(ids[i]) + " is outside the vocabulary (" +
                                             std::to_string(vocab_size) + ")");
    copy_out(model->model->tokenizer().decode({ids, n_ids}, /*skip_special=*/true), text, capacity,
             text_len);
  });
}

octet_status octet_chat_format(const octet_model* model, const octet_chat_message* messages,
                               size_t n_messages, int add_generation_prompt, char* text,
                               size_t capacity, size_t* text_len) {
  return guarded([&] {
    format_chat("octet_chat_format", model, messages, n_messages, text, capacity, text_len,
                [&](const octet::ChatTemplate& t, auto conversation) { return t.apply(conversation, add_generation_prompt != 0); });
  });
}

octet_status octet_chat_format_next(const octet_model* model, const octet_chat_message* messages,
                                    size_t n_messages, char* text, size_t capacity, size_t* text_len) {
  return guarded([&] {
    format_chat("octet_chat_format_next", model, messages, n_messages, text, capacity, text_len,
                [](const octet::ChatTemplate& t, auto conversation) { return t.next_turn(conversation); });
  });
}

// ---- Generation ----------------------------------------------------------------------------

void octet_context_params_init(octet_context_params* params) {
  if (!params) return;
  params->context_length = 0;
  params->n_threads = 0;
  params->kv_type = OCTET_KV_F16;
}

octet_status octet_context_create(const octet_model* model, const octet_context_params* params,
                                  octet_context** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(model && out, "octet_context_create: model and out must not be NULL");
    octet_context_params defaults;
    octet_context_params_init(&defaults);
    if (!params) params = &defaults;
    const int32_t model_length = model->model->context_length();
    require(params->context_length >= 0, "context_length must not be negative");
    require(params->n_threads >= 0, "n_threads must not be negative");
    const octet::DType kv_type = kv_dtype(params->kv_type);
    if (params->context_length > model_length)
      fail(ErrorCode::InvalidArgument, "context_length " + std::to_string(params->context_length) +
                                           " is beyond the model's " + std::to_string(model_length) +
                                           " positions");
    const int32_t length =
        params->context_length > 0 ? params->context_length : std::min(model_length, kDefaultMaxContext);
    const int32_t n_threads = params->n_threads > 0 ? params->n_threads : omp_get_num_procs();
    use_threads(n_threads);
    *out = new octet_context{octet::decoding::Generator(model->model, length, kv_type), n_threads};
  });
}

void octet_context_free(octet_context* context) { delete context; }

void octet_context_reset(octet_context* context) {
  if (context) context->generator.reset();
}

int32_t octet_context_used(const octet_context* context) {
  return context ? context->generator.used() : 0;
}

void octet_generate_params_init(octet_generate_params* params) {
  if (!params) return;
  *params = octet_generate_params{};
  params->max_tokens = 128;
  params->temperature = 0.8f;
  params->top_k = 40;
  params->top_p = 0.95f;
  params->min_p = 0.05f;
  params->repeat_penalty = 1.1f;
  params->repeat_last_n = 64;
  params->seed = 0;
  params->stop = nullptr;
  params->n_stop = 0;
  params->add_bos = 1;
  params->parse_special = 1;
}

octet_status octet_generate(octet_context* context, const char* prompt, size_t prompt_len,
                            const octet_generate_params* params, octet_text_callback callback,
                            void* user_data, octet_generate_stats* stats) {
  return guarded([&] {
    require(context != nullptr, "octet_generate: context is NULL");
    require(prompt || prompt_len == 0, "octet_generate: prompt is NULL");
    octet_generate_params defaults;
    octet_generate_params_init(&defaults);
    if (!params) params = &defaults;
    require(params->max_tokens >= 0, "max_tokens must not be negative");
    require(params->stop || params->n_stop == 0, "stop is NULL with n_stop > 0");
    octet::decoding::GenerationOptions options;
    options.max_tokens = params->max_tokens;
    for (size_t i = 0; i < params->n_stop; ++i) {
      require(params->stop[i] != nullptr, "a stop string is NULL");
      options.stop_strings.emplace_back(params->stop[i]);
    }
    const octet::LanguageModel& model = context->generator.model();
    octet::decoding::Sampler sampler(model.vocab_size(), sampling_params(*params));

    use_threads(context->n_threads);
    const bool at_start = context->generator.used() == 0;
    const auto prompt_ids = model.tokenizer().encode(std::string_view(prompt ? prompt : "", prompt_len),
                                                     params->add_bos != 0 && at_start,
                                                     params->parse_special != 0);
    const auto on_text = [&](std::string_view piece) {
      return callback == nullptr || callback(piece.data(), piece.size(), user_data) == 0;
    };
    const auto result = context->generator.generate(prompt_ids, options, sampler, on_text);
    if (stats) {
      stats->prompt_tokens = result.prompt_tokens;
      stats->generated_tokens = result.generated_tokens;
      stats->prompt_seconds = result.prompt_seconds;
      stats->generate_seconds = result.generate_seconds;
      stats->stop_reason = to_c(result.stop_reason);
    }
    if (result.stop_reason == octet::decoding::StopReason::Cancelled)
      fail(ErrorCode::Cancelled, "generation cancelled by the callback");
  });
}

// ---- Translation ---------------------------------------------------------------------------

namespace {

// The storage behind an octet_translation_results: the C views point into it.
struct TranslationStorage {
  std::vector<octet::Translation> translations;
  std::vector<std::vector<octet_hypothesis>> hypotheses;
  std::vector<octet_translation> views;
};

}  // namespace

void octet_translator_params_init(octet_translator_params* params) {
  if (params) {
    params->verify_checksums = 1;
    params->kv_type = OCTET_KV_F16;
  }
}

octet_status octet_translator_load(const char* path, const octet_translator_params* params,
                                   octet_translator** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(path != nullptr && out != nullptr, "octet_translator_load: path and out must not be NULL");
    octet_translator_params defaults;
    octet_translator_params_init(&defaults);
    if (!params) params = &defaults;
    const octet::DType kv_type = kv_dtype(params->kv_type);
    *out = new octet_translator{
        octet::Translator(octet::EncDecModel::load(path, params->verify_checksums != 0), kv_type)};
  });
}

void octet_translator_free(octet_translator* translator) { delete translator; }

void octet_translate_params_init(const octet_translator* translator, octet_translate_params* params) {
  if (!params) return;
  const octet::TranslationOptions o =
      translator ? translator->translator.default_options() : octet::TranslationOptions{};
  *params = octet_translate_params{};
  params->beam_size = o.beam_size;
  params->n_best = o.n_best;
  params->length_penalty = o.length_penalty;
  params->max_length = o.max_length;
  params->max_length_ratio = o.max_length_ratio;
  params->batch_size = o.batch_size;
  params->max_batch_tokens = o.max_batch_tokens;
  params->no_repeat_ngram_size = o.no_repeat_ngram_size;
  params->repetition_penalty = o.repetition_penalty;
  params->prefix = nullptr;
  params->n_threads = 0;
  params->callback = nullptr;
  params->user_data = nullptr;
}

octet_status octet_translate(octet_translator* translator, const char* const* sentences, size_t n,
                             const octet_translate_params* params, octet_translation_results** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(translator && out, "octet_translate: translator and out must not be NULL");
    require(sentences || n == 0, "octet_translate: sentences is NULL");
    octet_translate_params defaults;
    octet_translate_params_init(translator, &defaults);
    if (!params) params = &defaults;
    require(params->n_threads >= 0, "n_threads must not be negative");
    octet::TranslationOptions options;
    options.beam_size = params->beam_size;
    options.n_best = params->n_best;
    options.length_penalty = params->length_penalty;
    options.max_length = params->max_length;
    options.max_length_ratio = params->max_length_ratio;
    options.batch_size = params->batch_size;
    options.max_batch_tokens = params->max_batch_tokens;
    options.no_repeat_ngram_size = params->no_repeat_ngram_size;
    options.repetition_penalty = params->repetition_penalty;
    if (params->prefix) options.prefix = params->prefix;
    std::vector<std::string> inputs;
    inputs.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (!sentences[i]) fail(ErrorCode::InvalidArgument, "octet_translate: sentence " + std::to_string(i + 1) + " is NULL");
      inputs.emplace_back(sentences[i]);
    }
    octet::TranslationStream stream;
    if (params->callback) {
      stream = [&](size_t sentence, std::string_view text) {
        return params->callback(sentence, text.data(), text.size(), params->user_data) == 0;
      };
    }
    use_threads(params->n_threads > 0 ? params->n_threads : omp_get_num_procs());

    auto storage = std::make_unique<TranslationStorage>();
    storage->translations = translator->translator.translate(inputs, options, stream);
    for (const octet::Translation& translation : storage->translations) {
      auto& views = storage->hypotheses.emplace_back();
      for (const auto& h : translation)
        views.push_back({h.text.c_str(), h.text.size(), h.score, static_cast<int32_t>(h.tokens.size())});
    }
    for (const auto& views : storage->hypotheses) storage->views.push_back({views.data(), views.size()});
    auto results = std::make_unique<octet_translation_results>();
    results->translations = storage->views.data();
    results->n_translations = storage->views.size();
    results->internal = storage.release();
    *out = results.release();
  });
}

void octet_translation_results_free(octet_translation_results* results) {
  if (!results) return;
  delete static_cast<TranslationStorage*>(results->internal);
  delete results;
}

// ---- Conversion ----------------------------------------------------------------------------

void octet_convert_params_init(octet_convert_params* params) {
  if (!params) return;
  params->quant = "q8_0";
  params->embedding_type = nullptr;
  params->output_type = nullptr;
  params->tokenizer_path = nullptr;
}

octet_status octet_convert(const char* input, const char* output, const octet_convert_params* params,
                           octet_progress_callback progress, void* user_data, octet_convert_stats* stats) {
  return guarded([&] {
    require(input && output, "octet_convert: input and output must not be NULL");
    octet_convert_params defaults;
    octet_convert_params_init(&defaults);
    if (!params) params = &defaults;
    octet::convert::Options options;
    options.quant = parse_dtype(params->quant ? params->quant : "q8_0", "quantization type");
    if (params->embedding_type) options.embedding_type = parse_dtype(params->embedding_type, "embedding type");
    if (params->output_type) options.output_type = parse_dtype(params->output_type, "output type");
    if (params->tokenizer_path) options.tokenizer_path = params->tokenizer_path;
    octet::convert::Progress on_progress;
    if (progress)
      on_progress = [&](uint64_t done, uint64_t total, const std::string& tensor) {
        progress(done, total, tensor.c_str(), user_data);
      };
    const auto result = octet::convert::convert(input, output, options, on_progress);
    if (stats) {
      stats->tensors = result.tensors;
      stats->bytes = result.bytes;
      stats->parameters = result.parameters;
      stats->bits_per_weight = result.bits_per_weight;
      stats->seconds = result.seconds;
    }
  });
}

}  // extern "C"
