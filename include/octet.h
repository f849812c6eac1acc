/* Octet: int8/int4 inference for language models and translation. The public C API.
 *
 * Conventions
 * - Every function that can fail returns octet_status; OCTET_OK is 0. On failure,
 *   octet_last_error() returns a message for the calling thread's last failed call.
 * - Handles are opaque. No C++ exception ever crosses this boundary.
 * - Thread safety: an octet_model is read-only after loading and may be shared by any number of
 *   threads; an octet_context belongs to one thread at a time (make one context per thread).
 * - Strings are UTF-8 and passed with explicit lengths where they are outputs.
 */
#ifndef OCTET_H
#define OCTET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum octet_status {
  OCTET_OK = 0,
  OCTET_ERR_INVALID_ARGUMENT = 1, /* a caller passed something unusable */
  OCTET_ERR_IO = 2,               /* a file could not be opened, read, written or mapped */
  OCTET_ERR_FORMAT = 3,           /* a file is truncated, corrupt or of an unknown version */
  OCTET_ERR_UNSUPPORTED = 4,      /* valid input Octet does not handle (architecture, dtype) */
  OCTET_ERR_OUT_OF_MEMORY = 5,
  OCTET_ERR_CANCELLED = 6,        /* a callback asked to stop */
  OCTET_ERR_INTERNAL = 7
} octet_status;

const char* octet_version(void);
/* Message of the calling thread's last failed call ("" if none). Valid until its next call. */
const char* octet_last_error(void);
/* The kernel backend in use ("scalar", "avx2", "avx512", "neon"). */
const char* octet_kernel_backend(void);
/* Force a kernel backend for the whole process (e.g. "scalar"). Fails if this CPU cannot run it. */
octet_status octet_set_kernel_backend(const char* name);

/* ---- Models ---------------------------------------------------------------------------- */

typedef struct octet_model octet_model;

typedef struct octet_model_params {
  int verify_checksums; /* 1 (default): check every tensor's checksum while loading */
} octet_model_params;

void octet_model_params_init(octet_model_params* params);
octet_status octet_model_load(const char* path, const octet_model_params* params, octet_model** out);
void octet_model_free(octet_model* model);

const char* octet_model_architecture(const octet_model* model); /* e.g. "llama" */
int32_t octet_model_vocab_size(const octet_model* model);
int32_t octet_model_context_length(const octet_model* model); /* max positions it was trained for */
int32_t octet_model_bos(const octet_model* model);           /* -1 when none */
int32_t octet_model_eos(const octet_model* model);           /* the first EOS id, -1 when none */
/* 1 when the model carries a chat template (instruct models). */
int octet_model_has_chat_template(const octet_model* model);

/* Text to ids. Writes at most `capacity` ids and sets *n_ids to the number the text needs; a
 * capacity too small gives OCTET_ERR_INVALID_ARGUMENT with *n_ids set, so callers can retry.
 * parse_special: special tokens written in the text ("<|im_start|>") become their ids. */
octet_status octet_tokenize(const octet_model* model, const char* text, size_t text_len, int add_bos,
                            int parse_special, int32_t* ids, size_t capacity, size_t* n_ids);
/* Ids to text, special tokens skipped. Same capacity convention, in bytes (no terminator is
 * counted; one is written when there is room). */
octet_status octet_detokenize(const octet_model* model, const int32_t* ids, size_t n_ids, char* text,
                              size_t capacity, size_t* text_len);

typedef struct octet_chat_message {
  const char* role; /* "system", "user", "assistant" */
  const char* content;
} octet_chat_message;
/* Formats a conversation with the model's chat template (same capacity convention). */
octet_status octet_chat_format(const octet_model* model, const octet_chat_message* messages,
                               size_t n_messages, int add_generation_prompt, char* text,
                               size_t capacity, size_t* text_len);
/* For a chat that keeps its context between turns: the text to generate from after the user's
 * newest message. That is what follows the last assistant message in the formatted conversation
 * (its end of turn, the newer messages, the generation prompt), or the whole formatted
 * conversation while it has no assistant message. The context must hold each earlier reply as
 * it was generated: templates may rewrite a reply (Llama 2 trims it), so it is never sent again.
 * Same capacity convention. */
octet_status octet_chat_format_next(const octet_model* model, const octet_chat_message* messages,
                                    size_t n_messages, char* text, size_t capacity, size_t* text_len);

/* ---- Generation ------------------------------------------------------------------------ */

typedef struct octet_context octet_context;

typedef enum octet_kv_type {
  OCTET_KV_F16 = 0, /* half the memory of f32; llama.cpp's default too */
  OCTET_KV_F32 = 1,
  /* Q8_0 blocks (32 int8 + an f16 scale), as llama.cpp's --cache-type-k q8_0: ~53% of f16's
   * memory. Each cached key and value is rounded to within 1/254 (~0.4%) of its block's largest,
   * about 20x f16's error, and the logits move about 20x more than with f16. Needs a head_dim
   * that is a multiple of 32, else octet_context_create returns OCTET_ERR_INVALID_ARGUMENT. */
  OCTET_KV_Q8_0 = 2
} octet_kv_type;

typedef struct octet_context_params {
  int32_t context_length; /* KV cache positions; 0: the model's, capped at 4096 */
  int32_t n_threads;      /* 0: all cores */
  int32_t kv_type;        /* an octet_kv_type (default OCTET_KV_F16) */
} octet_context_params;

void octet_context_params_init(octet_context_params* params);
octet_status octet_context_create(const octet_model* model, const octet_context_params* params,
                                  octet_context** out);
void octet_context_free(octet_context* context);
/* Forget the conversation: the next generate starts from an empty KV cache. */
void octet_context_reset(octet_context* context);
/* Positions used so far (prompt + generated tokens of every generate since the last reset). */
int32_t octet_context_used(const octet_context* context);

typedef struct octet_generate_params {
  int32_t max_tokens;     /* default 128 */
  float temperature;      /* 0: greedy. default 0.8 */
  int32_t top_k;          /* 0: off. default 40 */
  float top_p;            /* 1: off. default 0.95 */
  float min_p;            /* 0: off. default 0.05 */
  float repeat_penalty;   /* 1: off. default 1.1 */
  int32_t repeat_last_n;  /* tokens the penalty looks back over; default 64 */
  uint64_t seed;          /* same seed + same inputs: same text */
  const char* const* stop; /* stop strings (not included in the output) */
  size_t n_stop;
  int add_bos;            /* prepend BOS when the context is empty (default 1) */
  int parse_special;      /* special tokens in the prompt text become ids (default 1) */
} octet_generate_params;

void octet_generate_params_init(octet_generate_params* params);

/* Called with each new piece of text, never splitting a UTF-8 character. Return non-zero to
 * stop generating (octet_generate then returns OCTET_ERR_CANCELLED). */
typedef int (*octet_text_callback)(const char* text, size_t len, void* user_data);

typedef enum octet_stop_reason {
  OCTET_STOP_EOS = 0,
  OCTET_STOP_MAX_TOKENS = 1,
  OCTET_STOP_STRING = 2,
  OCTET_STOP_CONTEXT_FULL = 3,
  OCTET_STOP_CANCELLED = 4
} octet_stop_reason;

typedef struct octet_generate_stats {
  int32_t prompt_tokens;
  int32_t generated_tokens;
  double prompt_seconds;
  double generate_seconds;
  octet_stop_reason stop_reason;
} octet_generate_stats;

/* Appends `prompt` to the context's conversation and generates a continuation, streaming it to
 * `callback` (may be NULL). stats may be NULL. */
octet_status octet_generate(octet_context* context, const char* prompt, size_t prompt_len,
                            const octet_generate_params* params, octet_text_callback callback,
                            void* user_data, octet_generate_stats* stats);

/* ---- Translation ------------------------------------------------------------------------- */

/* An encoder-decoder translation model (general.architecture "encdec": MarianMT, CTranslate2
 * Transformers) with the state to run it. It belongs to one thread at a time; load one per thread
 * to translate in parallel (the weights are mapped, so they are shared by the OS). */
typedef struct octet_translator octet_translator;

typedef struct octet_translator_params {
  int verify_checksums; /* 1 (default): check every tensor's checksum while loading */
  /* The decoder's cached keys and values (self- and cross-attention): OCTET_KV_F16 (default,
   * half the memory traffic of a step), OCTET_KV_F32 (an f32 model's logits to float rounding) or
   * OCTET_KV_Q8_0 (53% of f16's memory, 8 bits per value; for a model whose attention heads are a
   * multiple of 32 wide, as every opus-mt model's 64, else OCTET_ERR_INVALID_ARGUMENT). */
  int32_t kv_type;
} octet_translator_params;

void octet_translator_params_init(octet_translator_params* params);
octet_status octet_translator_load(const char* path, const octet_translator_params* params,
                                   octet_translator** out);
void octet_translator_free(octet_translator* translator);

/* Called with newly settled text of sentence `sentence` (an index into the input), never
 * splitting a UTF-8 character. Return non-zero to stop (octet_translate then returns
 * OCTET_ERR_CANCELLED). With a callback, sentences are translated one at a time, in order. */
typedef int (*octet_translation_callback)(size_t sentence, const char* text, size_t len, void* user_data);

typedef struct octet_translate_params {
  int32_t beam_size;            /* 1: greedy. default: the model's (generation_config), else 4 */
  int32_t n_best;               /* hypotheses per sentence, <= beam_size. default 1 */
  float length_penalty;         /* score = sum of log-probs / length^length_penalty. default: the model's, else 1 */
  int32_t max_length;           /* generated tokens, EOS included, capped at the model's positions.
                                   default: the model's max_length - 1 (it counts the start token), else 256 */
  float max_length_ratio;       /* > 0: also at most ceil(ratio x source tokens). default 0 (off) */
  int32_t batch_size;           /* sentences per batch. default 32 */
  int32_t max_batch_tokens;     /* source tokens per batch, 0: no limit. default 16384 */
  int32_t no_repeat_ngram_size; /* 0: off. default: the model's, else 0 */
  float repetition_penalty;     /* 1: off (HF semantics). default 1 */
  const char* prefix;           /* target text every translation starts with; NULL or "": none */
  /* 0 (default): all cores. With several batches, up to n_threads of them run side by side, one
   * thread each (a decoder state each: more memory); a single batch, or a stream, has all the
   * threads inside each op. */
  int32_t n_threads;
  octet_translation_callback callback; /* NULL (default): no streaming */
  void* user_data;
} octet_translate_params;

/* Fills params with the defaults above; with a translator, its model's own defaults. */
void octet_translate_params_init(const octet_translator* translator, octet_translate_params* params);

typedef struct octet_hypothesis {
  const char* text;  /* NUL-terminated; text_len bytes */
  size_t text_len;
  float score;       /* length-normalised log probability; 0 for a source of no tokens */
  int32_t n_tokens;  /* target tokens, prefix included, EOS excluded */
} octet_hypothesis;

typedef struct octet_translation {
  const octet_hypothesis* hypotheses; /* best first */
  size_t n_hypotheses;                /* n_best (fewer only if the search found fewer) */
} octet_translation;

typedef struct octet_translation_results {
  const octet_translation* translations; /* one per input sentence, in input order */
  size_t n_translations;
  void* internal; /* owned storage; do not touch */
} octet_translation_results;

/* Translates n sentences (UTF-8, one sentence or line each; NULL-free). An empty sentence is
 * translated from what the tokenizer makes of it (a Marian model: EOS alone, as transformers
 * does); one that makes no tokens at all gives empty hypotheses. A sentence longer than the model's positions is split at sentence ends and
 * its parts' translations joined; one that cannot be split short enough is an error naming it
 * ("sentence 3 ...", counting from 1), as is invalid UTF-8. On success *out holds the results,
 * to be freed with octet_translation_results_free. params may be NULL (model defaults). */
octet_status octet_translate(octet_translator* translator, const char* const* sentences, size_t n,
                             const octet_translate_params* params, octet_translation_results** out);
void octet_translation_results_free(octet_translation_results* results);

/* ---- Conversion -------------------------------------------------------------------------- */

typedef struct octet_convert_params {
  const char* quant;          /* "f32", "f16", "q8_0" (default), "q4_0", "q4_1" */
  const char* embedding_type; /* type for the token embedding; NULL: same as quant */
  const char* output_type;    /* type for the output head; NULL: same as quant */
  const char* tokenizer_path; /* llama2.c checkpoints: the SentencePiece .model; NULL: look beside */
} octet_convert_params;

void octet_convert_params_init(octet_convert_params* params);
/* Called as tensors are written: done and total in bytes of output; `name` is the tensor. */
typedef void (*octet_progress_callback)(uint64_t done, uint64_t total, const char* name, void* user_data);

typedef struct octet_convert_stats {
  int64_t tensors;
  uint64_t bytes;
  int64_t parameters;
  double bits_per_weight; /* over the matrices that were quantized */
  double seconds;
} octet_convert_stats;

/* Converts a checkpoint (Hugging Face folder, or llama2.c .bin) into one .qbin file. */
octet_status octet_convert(const char* input, const char* output, const octet_convert_params* params,
                           octet_progress_callback progress, void* user_data, octet_convert_stats* stats);

#ifdef __cplusplus
}
#endif
#endif /* OCTET_H */
