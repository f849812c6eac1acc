// translate: one sentence per line in, one translation per line out, in order. Built on the
// public C API only (include/octet.h).
//
// Lines are read and translated a chunk at a time (the library sorts each chunk by length into
// batches), so a file of any size streams through in bounded memory.
#include <octet.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"

namespace {

using cli::die;
using cli::parse_number;
using cli::seconds_since;

const char* const kUsage = R"(usage: translate --model MODEL.qbin [options] < input > output

Reads one sentence per line (UTF-8) and writes one translation per line, in the same order;
an empty line is translated like any other (as transformers does: Marian's source is then EOS alone).

  --model PATH          translation model (.qbin, architecture encdec)
  --input FILE          read from FILE instead of stdin
  --output FILE         write to FILE instead of stdout
  --beam N              beam size, 1 = greedy (default: the model's, else 4)
  --n-best N            print N hypotheses per input in the Moses/Marian n-best layout,
                          "LINE ||| TRANSLATION ||| SCORE", LINE counting from 0
  --scores              with one hypothesis: print "TRANSLATION ||| SCORE"
  --length-penalty X    score = sum of log-probs / length^X (default: the model's, else 1)
  --max-length N        at most N generated tokens (default: the model's)
  --max-length-ratio X  and at most X times the source tokens (default: off)
  --batch-size N        sentences per batch (default 32)
  --prefix TEXT         every translation starts with TEXT
  --threads N           threads (default: all cores)
  --kv-type T           the decoder's cached keys and values: f16 (default, half the memory
                          traffic), f32, or q8_0 (53% of f16's memory; heads of 32, 64, ...)
  --stream              print each translation as it settles (one sentence at a time)
  --quiet               no progress or summary on stderr
)";

struct Options {
  std::string model, input, output, prefix;
  int32_t kv_type = OCTET_KV_F16;
  int32_t beam = 0, n_best = 1, batch_size = 0, max_length = 0, threads = 0;
  float length_penalty = 0, max_length_ratio = 0;
  bool has_length_penalty = false, scores = false, stream = false, quiet = false;
};

int64_t parse_integer(const std::string& flag, const char* text, int64_t min) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || value < min || value > INT32_MAX) {
    die(flag + ": expected an integer >= " + std::to_string(min) + ", got \"" + text + "\"");
  }
  return value;
}

Options parse_arguments(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (flag == "--scores") o.scores = true;
    else if (flag == "--stream") o.stream = true;
    else if (flag == "--quiet") o.quiet = true;
    else {
      if (i + 1 >= argc) die(flag + ": missing value (see --help)");
      const char* value = argv[++i];
      if (flag == "--model") o.model = value;
      else if (flag == "--input") o.input = value;
      else if (flag == "--output") o.output = value;
      else if (flag == "--prefix") o.prefix = value;
      else if (flag == "--beam") o.beam = parse_integer(flag, value, 1);
      else if (flag == "--n-best") o.n_best = parse_integer(flag, value, 1);
      else if (flag == "--batch-size") o.batch_size = parse_integer(flag, value, 1);
      else if (flag == "--max-length") o.max_length = parse_integer(flag, value, 1);
      else if (flag == "--threads") o.threads = parse_integer(flag, value, 1);
      else if (flag == "--max-length-ratio") o.max_length_ratio = parse_number(flag, value);
      else if (flag == "--length-penalty") o.length_penalty = parse_number(flag, value), o.has_length_penalty = true;
      else if (flag == "--kv-type") o.kv_type = cli::parse_kv_type(value);
      else die("unknown option " + flag + " (see --help)");
    }
  }
  if (o.model.empty()) die("--model is required (see --help)");
  if (o.stream && (o.n_best > 1 || o.scores)) die("--stream prints the best translation only: not with --n-best or --scores");
  return o;
}

// The first byte offset where `text` is not valid UTF-8, or npos.
size_t invalid_utf8_at(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    size_t length;
    uint32_t min, code;
    if (c < 0x80) length = 1, min = 0, code = c;
    else if ((c & 0xE0) == 0xC0) length = 2, min = 0x80, code = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) length = 3, min = 0x800, code = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) length = 4, min = 0x10000, code = c & 0x07;
    else return i;
    if (i + length > n) return i;
    for (size_t k = 1; k < length; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      code = (code << 6) | (s[i + k] & 0x3F);
    }
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;  // overlong, surrogate
    i += length;
  }
  return std::string::npos;
}

// A translation on one output line: any newline a model produced becomes a space.
std::string one_line(const octet_hypothesis& h) {
  std::string text(h.text, h.text_len);
  for (char& ch : text) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  return text;
}

int print_settled(size_t, const char* text, size_t len, void* out) {
  std::string piece(text, len);
  for (char& ch : piece) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  std::fwrite(piece.data(), 1, piece.size(), static_cast<FILE*>(out));
  std::fflush(static_cast<FILE*>(out));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse_arguments(argc, argv);

  octet_translator* translator = nullptr;
  octet_translator_params load_params;
  octet_translator_params_init(&load_params);
  load_params.kv_type = options.kv_type;
  if (octet_translator_load(options.model.c_str(), &load_params, &translator) != OCTET_OK) {
    die("loading " + options.model + ": " + octet_last_error());
  }
  octet_translate_params params;
  octet_translate_params_init(translator, &params);
  if (options.beam > 0) params.beam_size = options.beam;
  params.n_best = options.n_best;
  if (params.n_best > params.beam_size) die("--n-best must not exceed the beam size (" + std::to_string(params.beam_size) + ")");
  if (options.batch_size > 0) params.batch_size = options.batch_size;
  if (options.max_length > 0) params.max_length = options.max_length;
  if (options.has_length_penalty) params.length_penalty = options.length_penalty;
  params.max_length_ratio = options.max_length_ratio;
  params.n_threads = options.threads;
  if (!options.prefix.empty()) params.prefix = options.prefix.c_str();

  std::ifstream input_file;
  if (!options.input.empty()) {
    input_file.open(options.input, std::ios::binary);
    if (!input_file) die("cannot read " + options.input);
  }
  std::istream& input = options.input.empty() ? std::cin : input_file;
  FILE* output = stdout;
  if (!options.output.empty() && !(output = std::fopen(options.output.c_str(), "wb"))) {
    die("cannot write " + options.output);
  }
  if (options.stream) {
    params.batch_size = 1;
    params.callback = print_settled;
    params.user_data = output;
  }

  // Enough lines per chunk for the library to sort them into well-filled batches.
  const size_t chunk_lines = options.stream ? 1 : std::max<size_t>(64, 8 * static_cast<size_t>(params.batch_size));
  const bool progress = !options.quiet && !options.input.empty();
  const auto start = std::chrono::steady_clock::now();
  size_t lines_done = 0, target_tokens = 0;
  std::vector<std::string> lines;
  std::vector<const char*> pointers;
  std::string line;
  while (true) {
    lines.clear();
    while (lines.size() < chunk_lines && std::getline(input, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
      const size_t bad = invalid_utf8_at(line);
      if (bad != std::string::npos) {
        die("line " + std::to_string(lines_done + lines.size() + 1) + ": invalid UTF-8 at byte " +
            std::to_string(bad + 1));
      }
      lines.push_back(line);
    }
    if (lines.empty()) break;
    pointers.clear();
    for (const std::string& l : lines) pointers.push_back(l.c_str());

    octet_translation_results* results = nullptr;
    if (octet_translate(translator, pointers.data(), pointers.size(), &params, &results) != OCTET_OK) {
      die("lines " + std::to_string(lines_done + 1) + "-" + std::to_string(lines_done + lines.size()) +
          " (sentences are counted from the first of these): " + octet_last_error());
    }
    for (size_t i = 0; i < results->n_translations; ++i) {
      const octet_translation& t = results->translations[i];
      if (t.n_hypotheses > 0) target_tokens += t.hypotheses[0].n_tokens;
      if (options.stream) {
        std::fputc('\n', output);
      } else if (params.n_best > 1) {
        for (size_t k = 0; k < t.n_hypotheses; ++k) {
          std::fprintf(output, "%zu ||| %s ||| %.6f\n", lines_done + i, one_line(t.hypotheses[k]).c_str(),
                       t.hypotheses[k].score);
        }
      } else {
        const std::string text = t.n_hypotheses > 0 ? one_line(t.hypotheses[0]) : std::string();
        if (options.scores) {
          std::fprintf(output, "%s ||| %.6f\n", text.c_str(), t.n_hypotheses > 0 ? t.hypotheses[0].score : 0.0f);
        } else {
          std::fprintf(output, "%s\n", text.c_str());
        }
      }
    }
    std::fflush(output);
    octet_translation_results_free(results);
    lines_done += lines.size();
    if (progress) {
      std::fprintf(stderr, "\r%zu lines, %.1f sentences/s", lines_done, lines_done / seconds_since(start));
    }
  }
  if (output != stdout && std::fclose(output) != 0) die("cannot write " + options.output);
  if (!options.quiet) {
    const double seconds = seconds_since(start);
    std::fprintf(stderr, "%stranslated %zu sentences (%zu target tokens) in %.2f s: %.1f sentences/s, %.1f target tokens/s\n",
                 progress ? "\n" : "", lines_done, target_tokens, seconds, seconds > 0 ? lines_done / seconds : 0.0,
                 seconds > 0 ? target_tokens / seconds : 0.0);
  }
  octet_translator_free(translator);
  return 0;
}
