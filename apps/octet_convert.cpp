// octet-convert: a checkpoint as people download it (a Hugging Face folder, a llama2.c .bin) ->
// one .qbin file. Built on the public C API only. stderr carries progress and a closing summary;
// stdout stays empty.
#include <octet.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace {

const char kUsage[] =
    "usage: octet-convert INPUT -o OUT.qbin [options]\n"
    "\n"
    "Converts a model checkpoint into one .qbin file.\n"
    "INPUT is a Hugging Face model folder (config.json, *.safetensors, tokenizer files; Llama,\n"
    "Mistral, Qwen2, SmolLM; MarianMT, also with pytorch_model.bin), a Hugging Face repo id\n"
    "(owner/name, downloaded first), a CTranslate2 model folder (model.bin + vocabularies) or a\n"
    "llama2.c .bin checkpoint.\n"
    "\n"
    "options:\n"
    "  -o, --output PATH        the .qbin file to write (required)\n"
    "  --quant T                type of the weight matrices: f32, f16, q8_0 (default), q4_0, q4_1\n"
    "  --embedding-type T       type of the token embedding (default: as --quant)\n"
    "  --output-type T          type of the output head (default: as --quant)\n"
    "  --tokenizer PATH         llama2.c: the SentencePiece .model (default: tokenizer.model or\n"
    "                           tok<vocab>.model beside the checkpoint)\n"
    "  -h, --help               show this help\n";

const char* const kTypes[] = {"f32", "f16", "q8_0", "q4_0", "q4_1"};

int usage_error(const std::string& message) {
  std::fprintf(stderr, "octet-convert: %s\nTry 'octet-convert --help'.\n", message.c_str());
  return 2;
}

bool is_type_name(const char* name) {
  for (const char* type : kTypes)
    if (std::strcmp(type, name) == 0) return true;
  return false;
}

struct ProgressLine {
  bool tty = false;
  int last_quarter = 0;  // without a TTY: one line per quarter of the work
  bool drawn = false;
};

void on_progress(uint64_t done, uint64_t total, const char* name, void* user_data) {
  auto* line = static_cast<ProgressLine*>(user_data);
  const int percent = total > 0 ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)) : 100;
  if (line->tty) {
    std::fprintf(stderr, "\r\033[K[%3d%%] %s", percent, name);
    line->drawn = true;
  } else if (percent / 25 > line->last_quarter) {
    line->last_quarter = percent / 25;
    std::fprintf(stderr, "octet-convert: %3d%% (%s)\n", percent, name);
  }
  std::fflush(stderr);
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.2f %s", value, units[unit]);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  octet_convert_params params;
  octet_convert_params_init(&params);
  const char* input = nullptr;
  const char* output = nullptr;

  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    if (std::strcmp(arg, "-h") == 0 || std::strcmp(arg, "--help") == 0) {
      std::fputs(kUsage, stdout);  // asked for: the one thing that goes to stdout
      return 0;
    }
    if (arg[0] != '-' || arg[1] == '\0') {
      if (input != nullptr) return usage_error("more than one input: " + std::string(input) + " and " + arg);
      input = arg;
      continue;
    }
    // A value follows its option or comes after '=' ("--quant=q4_0"); either way it points into
    // argv, which outlives the conversion.
    std::string name = arg;
    const char* value = nullptr;
    if (const char* equals = std::strchr(arg, '='); equals != nullptr && arg[1] == '-') {
      name.assign(arg, equals);
      value = equals + 1;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return usage_error("option " + name + " needs a value");
    }
    if (name == "-o" || name == "--output") {
      output = value;
    } else if (name == "--quant" || name == "--embedding-type" || name == "--output-type") {
      if (!is_type_name(value))
        return usage_error("unknown type '" + std::string(value) + "' for " + name + " (f32, f16, q8_0, q4_0, q4_1)");
      (name == "--quant" ? params.quant : name == "--embedding-type" ? params.embedding_type : params.output_type) = value;
    } else if (name == "--tokenizer") {
      params.tokenizer_path = value;
    } else {
      return usage_error("unknown option " + name);
    }
  }
  if (input == nullptr) return usage_error("missing INPUT");
  if (output == nullptr) return usage_error("missing -o OUT.qbin");

  ProgressLine line;
  line.tty = isatty(STDERR_FILENO) != 0;
  octet_convert_stats stats{};
  const octet_status status = octet_convert(input, output, &params, on_progress, &line, &stats);
  if (line.drawn) std::fputc('\n', stderr);
  if (status != OCTET_OK) {
    std::fprintf(stderr, "octet-convert: error: %s\n", octet_last_error());
    return 1;
  }
  std::fprintf(stderr, "octet-convert: wrote %s: %lld tensors, %s, %.2f bits/weight, %.2f s\n", output,
               static_cast<long long>(stats.tensors), human_bytes(stats.bytes).c_str(), stats.bits_per_weight,
               stats.seconds);
  return 0;
}
