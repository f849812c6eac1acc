/* The public C API driven from C11, as a chat app embeds it: error paths, then a real model
 * (stories260K, converted with octet_convert into a temporary file). One line per check; the exit
 * status is non-zero when any check fails. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <octet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;

static void check(int ok, const char* what) {
  printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

/* Streaming: collects the pieces; cancels after `cancel_after` pieces when it is positive. */
typedef struct {
  char text[8192];
  size_t length;
  int pieces;
  int cancel_after;
  int split_utf8; /* a piece started with a UTF-8 continuation byte */
} stream;

static int collect(const char* text, size_t len, void* user_data) {
  stream* s = (stream*)user_data;
  if (len > 0 && ((unsigned char)text[0] & 0xC0) == 0x80) s->split_utf8 = 1;
  if (s->length + len < sizeof s->text) {
    memcpy(s->text + s->length, text, len);
    s->length += len;
    s->text[s->length] = '\0';
  }
  ++s->pieces;
  return s->cancel_after > 0 && s->pieces >= s->cancel_after;
}

static octet_status generate(octet_context* context, const char* prompt, const octet_generate_params* params,
                             stream* out, octet_generate_stats* stats) {
  memset(out, 0, sizeof *out);
  return octet_generate(context, prompt, strlen(prompt), params, collect, out, stats);
}

static void test_error_paths(const char* temp_dir) {
  octet_model* model = (octet_model*)1;
  check(octet_model_load(NULL, NULL, &model) == OCTET_ERR_INVALID_ARGUMENT && model == NULL,
        "model_load(NULL path) -> INVALID_ARGUMENT, *out = NULL");
  check(strlen(octet_last_error()) > 0, "last_error explains it");
  check(octet_model_load("x.qbin", NULL, NULL) == OCTET_ERR_INVALID_ARGUMENT, "model_load(NULL out) -> INVALID_ARGUMENT");
  check(octet_model_load("/nonexistent/model.qbin", NULL, &model) == OCTET_ERR_IO && model == NULL,
        "missing file -> IO");
  check(strstr(octet_last_error(), "/nonexistent/model.qbin") != NULL, "IO message names the file");

  char garbage_path[512];
  snprintf(garbage_path, sizeof garbage_path, "%s/garbage.qbin", temp_dir);
  FILE* f = fopen(garbage_path, "wb");
  for (int i = 0; i < 4096; ++i) fputc((i * 7919) & 0xFF, f);
  fclose(f);
  check(octet_model_load(garbage_path, NULL, &model) == OCTET_ERR_FORMAT && model == NULL, "garbage file -> FORMAT");
  check(strlen(octet_last_error()) > 0, "FORMAT has a message");
  remove(garbage_path);

  size_t n = 0;
  check(octet_tokenize(NULL, "a", 1, 1, 0, NULL, 0, &n) == OCTET_ERR_INVALID_ARGUMENT, "tokenize(NULL model)");
  check(octet_detokenize(NULL, NULL, 0, NULL, 0, &n) == OCTET_ERR_INVALID_ARGUMENT, "detokenize(NULL model)");
  check(octet_chat_format(NULL, NULL, 0, 1, NULL, 0, &n) == OCTET_ERR_INVALID_ARGUMENT, "chat_format(NULL model)");
  check(octet_chat_format_next(NULL, NULL, 0, NULL, 0, &n) == OCTET_ERR_INVALID_ARGUMENT, "chat_format_next(NULL model)");
  octet_context* context = (octet_context*)1;
  check(octet_context_create(NULL, NULL, &context) == OCTET_ERR_INVALID_ARGUMENT && context == NULL,
        "context_create(NULL model)");
  check(octet_generate(NULL, "a", 1, NULL, NULL, NULL, NULL) == OCTET_ERR_INVALID_ARGUMENT, "generate(NULL context)");
  check(octet_convert(NULL, "out.qbin", NULL, NULL, NULL, NULL) == OCTET_ERR_INVALID_ARGUMENT, "convert(NULL input)");
  check(octet_set_kernel_backend(NULL) == OCTET_ERR_INVALID_ARGUMENT, "set_kernel_backend(NULL)");
  check(octet_set_kernel_backend("no-such-backend") == OCTET_ERR_INVALID_ARGUMENT, "unknown backend refused");
  check(strlen(octet_kernel_backend()) > 0, "a kernel backend is active");
  /* NULL handles are harmless where nothing can be reported. */
  octet_model_free(NULL);
  octet_context_free(NULL);
  octet_context_reset(NULL);
  check(octet_model_vocab_size(NULL) == 0 && octet_context_used(NULL) == 0, "getters on NULL");
}

static void test_model(const char* temp_dir) {
  char model_path[512];
  snprintf(model_path, sizeof model_path, "%s/stories260K.qbin", temp_dir);
  octet_convert_params convert_params;
  octet_convert_params_init(&convert_params);
  convert_params.tokenizer_path = OCTET_SHARED "/models/stories260K/tok512.model";
  octet_convert_stats convert_stats;
  const octet_status converted = octet_convert(OCTET_SHARED "/models/stories260K/stories260K.bin", model_path,
                                               &convert_params, NULL, NULL, &convert_stats);
  check(converted == OCTET_OK, "convert stories260K.bin (q8_0)");
  if (converted != OCTET_OK) {
    printf("      %s\n", octet_last_error());
    return;
  }
  check(convert_stats.tensors > 0 && convert_stats.bytes > 0, "convert stats filled");

  octet_model* model = NULL;
  check(octet_model_load(model_path, NULL, &model) == OCTET_OK && model != NULL, "load the converted model");
  if (!model) {
    printf("      %s\n", octet_last_error());
    remove(model_path);
    return;
  }
  check(strcmp(octet_model_architecture(model), "llama") == 0, "architecture is llama");
  check(octet_model_vocab_size(model) == 512, "vocab size 512");
  check(octet_model_bos(model) == 1 && octet_model_eos(model) == 2, "BOS 1, EOS 2");
  check(!octet_model_has_chat_template(model), "no chat template");

  /* Tokenize / detokenize round trip, with the capacity convention. */
  const char* text = "Once upon a time, there was a little girl named Lily.";
  size_t n_ids = 0;
  check(octet_tokenize(model, text, strlen(text), 1, 0, NULL, 0, &n_ids) == OCTET_ERR_INVALID_ARGUMENT && n_ids > 1,
        "tokenize with no room reports the count");
  int32_t ids[256];
  check(octet_tokenize(model, text, strlen(text), 1, 0, ids, 256, &n_ids) == OCTET_OK && ids[0] == 1,
        "tokenize (BOS first)");
  char decoded[512];
  size_t decoded_len = 0;
  check(octet_detokenize(model, ids, n_ids, decoded, 4, &decoded_len) == OCTET_ERR_INVALID_ARGUMENT &&
            decoded_len == strlen(text),
        "detokenize with a small buffer reports the length");
  check(octet_detokenize(model, ids, n_ids, decoded, sizeof decoded, &decoded_len) == OCTET_OK &&
            decoded_len == strlen(text) && strcmp(decoded, text) == 0,
        "detokenize(tokenize(text)) == text");
  int32_t bad_id = 100000;
  check(octet_detokenize(model, &bad_id, 1, decoded, sizeof decoded, &decoded_len) == OCTET_ERR_INVALID_ARGUMENT,
        "out-of-range id refused");
  octet_chat_message hello = {"user", "hi"};
  check(octet_chat_format(model, &hello, 1, 1, decoded, sizeof decoded, &decoded_len) == OCTET_ERR_UNSUPPORTED,
        "chat_format without a template -> UNSUPPORTED");
  check(octet_chat_format_next(model, &hello, 1, decoded, sizeof decoded, &decoded_len) == OCTET_ERR_UNSUPPORTED,
        "chat_format_next without a template -> UNSUPPORTED");

  octet_context_params context_params;
  octet_context_params_init(&context_params);
  context_params.n_threads = 2;
  octet_context* context = NULL;
  check(octet_context_create(model, &context_params, &context) == OCTET_OK, "create a context");
  context_params.context_length = 1 << 20;
  octet_context* too_long = NULL;
  check(octet_context_create(model, &context_params, &too_long) == OCTET_ERR_INVALID_ARGUMENT,
        "context beyond the model's length refused");
  context_params.context_length = 0;
  context_params.kv_type = 7;
  check(octet_context_create(model, &context_params, &too_long) == OCTET_ERR_INVALID_ARGUMENT && too_long == NULL,
        "unknown kv_type refused");
  check(strstr(octet_last_error(), "kv_type 7") != NULL, "the message names the kv_type");
  context_params.kv_type = OCTET_KV_Q8_0;
  check(octet_context_create(model, &context_params, &too_long) == OCTET_ERR_INVALID_ARGUMENT && too_long == NULL &&
            strstr(octet_last_error(), "head_dim") != NULL,
        "OCTET_KV_Q8_0 refused for stories260K's 8-wide heads, naming head_dim");

  octet_generate_params greedy;
  octet_generate_params_init(&greedy);
  greedy.temperature = 0;
  greedy.max_tokens = 40;
  static stream first, second;
  octet_generate_stats stats;
  check(generate(context, "Once upon a time", &greedy, &first, &stats) == OCTET_OK && first.length > 0,
        "greedy generation");
  printf("      \"Once upon a time%s\"\n", first.text);
  check(stats.prompt_tokens > 0 && stats.generated_tokens > 0, "stats count tokens");
  check(stats.generated_tokens <= 40, "max_tokens respected");
  check(octet_context_used(context) == stats.prompt_tokens + stats.generated_tokens,
        "context holds prompt + generated tokens");
  check(!first.split_utf8, "no piece splits a UTF-8 character");
  octet_context_reset(context);
  check(octet_context_used(context) == 0, "reset empties the context");
  check(generate(context, "Once upon a time", &greedy, &second, NULL) == OCTET_OK && strcmp(first.text, second.text) == 0,
        "greedy twice gives the same text");

  /* Streaming: several pieces, concatenating to the full text. */
  octet_context_reset(context);
  greedy.max_tokens = 25;
  check(generate(context, "Once upon a time", &greedy, &first, &stats) == OCTET_OK && first.pieces > 1,
        "streaming gives several pieces");
  check(stats.stop_reason != OCTET_STOP_MAX_TOKENS || stats.generated_tokens == 25,
        "exactly max_tokens when it stops there");

  /* Cancel from the callback. */
  octet_context_reset(context);
  static stream cancelled;
  memset(&cancelled, 0, sizeof cancelled);
  cancelled.cancel_after = 2;
  check(octet_generate(context, "Once upon a time", 16, &greedy, collect, &cancelled, &stats) == OCTET_ERR_CANCELLED,
        "cancel from the callback -> CANCELLED");
  check(stats.stop_reason == OCTET_STOP_CANCELLED && cancelled.pieces == 2, "stopped at the cancelling piece");

  /* Seeded sampling. */
  octet_generate_params sampled;
  octet_generate_params_init(&sampled);
  sampled.temperature = 1.0f;
  sampled.max_tokens = 30;
  sampled.seed = 1234;
  octet_context_reset(context);
  check(generate(context, "Once upon a time", &sampled, &first, NULL) == OCTET_OK, "sampled generation");
  octet_context_reset(context);
  check(generate(context, "Once upon a time", &sampled, &second, NULL) == OCTET_OK && strcmp(first.text, second.text) == 0,
        "same seed, same text");
  int differs = 0;
  for (uint64_t seed = 1; seed <= 5 && !differs; ++seed) {
    sampled.seed = seed;
    octet_context_reset(context);
    generate(context, "Once upon a time", &sampled, &second, NULL);
    differs = strcmp(first.text, second.text) != 0;
  }
  check(differs, "other seeds, other text");

  /* Stop strings and incremental generation. */
  octet_context_reset(context);
  greedy.max_tokens = 40;
  check(generate(context, "Once upon a time", &greedy, &first, NULL) == OCTET_OK, "reference text");
  /* Stop at the second word of the reference text: the output is the text before it. */
  const char* space = strchr(first.text + 1, ' ');
  if (space) {
    char stop_word[64];
    snprintf(stop_word, sizeof stop_word, "%.*s", (int)(strcspn(space + 1, " ,.") + 1), space);
    const char* stops[1] = {stop_word};
    octet_generate_params stopping = greedy;
    stopping.stop = stops;
    stopping.n_stop = 1;
    octet_context_reset(context);
    check(generate(context, "Once upon a time", &stopping, &second, &stats) == OCTET_OK &&
              stats.stop_reason == OCTET_STOP_STRING && second.length == (size_t)(space - first.text) &&
              strncmp(first.text, second.text, second.length) == 0,
          "a stop string cuts the text before it");
  }
  octet_context_reset(context);
  greedy.max_tokens = 10;
  check(generate(context, "Once upon a time", &greedy, &first, &stats) == OCTET_OK, "first turn");
  const int32_t used = octet_context_used(context);
  check(generate(context, " The end.", &greedy, &second, &stats) == OCTET_OK &&
            octet_context_used(context) == used + stats.prompt_tokens + stats.generated_tokens,
        "a second call continues the same context");

  greedy.max_tokens = -1;
  check(generate(context, "x", &greedy, &first, NULL) == OCTET_ERR_INVALID_ARGUMENT, "negative max_tokens refused");

  octet_context_free(context);
  octet_model_free(model);
  remove(model_path);
}

/* llama2.c's run.c, greedy for 200 steps from BOS (its test_all.py): the streamed pieces must
 * concatenate to exactly this text. f32 weights, no repetition penalty, as run.c computes. */
static const char* const kReference =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she "
    "saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to "
    "the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't "
    "find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to "
    "do.\"\nLily didn't want to help her mom, so she";

static void test_reference_text(const char* temp_dir) {
  char model_path[512];
  snprintf(model_path, sizeof model_path, "%s/stories260K-f32.qbin", temp_dir);
  octet_convert_params convert_params;
  octet_convert_params_init(&convert_params);
  convert_params.quant = "f32";
  convert_params.tokenizer_path = OCTET_SHARED "/models/stories260K/tok512.model";
  octet_model* model = NULL;
  octet_context* context = NULL;
  const int ready =
      octet_convert(OCTET_SHARED "/models/stories260K/stories260K.bin", model_path, &convert_params, NULL, NULL,
                    NULL) == OCTET_OK &&
      octet_model_load(model_path, NULL, &model) == OCTET_OK && octet_context_create(model, NULL, &context) == OCTET_OK;
  check(ready, "convert (f32), load and create a context");
  if (ready) {
    octet_generate_params params;
    octet_generate_params_init(&params);
    params.temperature = 0;
    params.repeat_penalty = 1;
    params.max_tokens = 200; /* run.c: 200 steps from BOS, each printing one token */
    static stream out;
    octet_generate_stats stats;
    check(generate(context, "", &params, &out, &stats) == OCTET_OK && out.pieces > 100, "greedy from BOS, streamed");
    check(strncmp(out.text, kReference, strlen(kReference)) == 0, "streamed pieces concatenate to run.c's text");
    if (strncmp(out.text, kReference, strlen(kReference)) != 0) printf("      got: %s\n", out.text);
  } else {
    printf("      %s\n", octet_last_error());
  }
  octet_context_free(context);
  octet_model_free(model);
  remove(model_path);
}

/* A random llama2.c checkpoint with 32-wide heads (stories260K's are 8 wide, less than a Q8_0 block):
 * dim 64, 2 heads, 1 layer, ffn 64, stories260K's 512-token vocabulary, 32 positions. */
static int write_checkpoint_heads_of_32(const char* path) {
  const int32_t header[7] = {64, 64, 1, 2, 2, 512, 32}; /* dim, hidden, layers, heads, kv heads, vocab, seq */
  /* embedding, attention norm, q k v o, ffn norm, w1 w2 w3, final norm, legacy freq_cis (32 x 32) */
  const long floats = 512 * 64 + 64 + 4 * 64 * 64 + 64 + 3 * 64 * 64 + 64 + 32 * 32;
  FILE* f = fopen(path, "wb");
  if (!f) return 0;
  fwrite(header, sizeof header, 1, f);
  uint32_t random = 12345;
  for (long i = 0; i < floats; ++i) {
    random = random * 1664525u + 1013904223u;
    const float x = ((float)(random >> 8) / 16777216.0f - 0.5f) * 0.5f;
    fwrite(&x, sizeof x, 1, f);
  }
  return fclose(f) == 0;
}

static void test_q8_0_kv_cache(const char* temp_dir) {
  char checkpoint_path[512], model_path[512];
  snprintf(checkpoint_path, sizeof checkpoint_path, "%s/heads32.bin", temp_dir);
  snprintf(model_path, sizeof model_path, "%s/heads32.qbin", temp_dir);
  octet_convert_params convert_params;
  octet_convert_params_init(&convert_params);
  convert_params.tokenizer_path = OCTET_SHARED "/models/stories260K/tok512.model";
  octet_model* model = NULL;
  octet_context* context = NULL;
  octet_context_params context_params;
  octet_context_params_init(&context_params);
  context_params.kv_type = OCTET_KV_Q8_0;
  const int ready = write_checkpoint_heads_of_32(checkpoint_path) &&
                    octet_convert(checkpoint_path, model_path, &convert_params, NULL, NULL, NULL) == OCTET_OK &&
                    octet_model_load(model_path, NULL, &model) == OCTET_OK &&
                    octet_context_create(model, &context_params, &context) == OCTET_OK;
  check(ready, "OCTET_KV_Q8_0 accepted for a model with 32-wide heads");
  if (ready) {
    octet_generate_params greedy;
    octet_generate_params_init(&greedy);
    greedy.temperature = 0;
    greedy.max_tokens = 20;
    static stream out;
    octet_generate_stats stats;
    check(generate(context, "Once upon a time", &greedy, &out, &stats) == OCTET_OK && stats.generated_tokens > 0,
          "greedy generation with a q8_0 KV cache");
  } else {
    printf("      %s\n", octet_last_error());
  }
  octet_context_free(context);
  octet_model_free(model);
  remove(model_path);
  remove(checkpoint_path);
}

int main(void) {
  printf("octet %s, kernels %s\n", octet_version(), octet_kernel_backend());
  char temp_dir[] = "/tmp/octet_c_test_XXXXXX";
  if (!mkdtemp(temp_dir)) {
    printf("FAIL: cannot create a temporary folder\n");
    return 1;
  }
  test_error_paths(temp_dir);
  test_model(temp_dir);
  test_reference_text(temp_dir);
  test_q8_0_kv_cache(temp_dir);
  rmdir(temp_dir);
  printf("%s: %d failed check(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
