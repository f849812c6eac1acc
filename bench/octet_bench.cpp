// octet-bench: load time, prefill and decode speed, peak memory of .qbin models, plus a memory
// bandwidth probe so decode speed can be read as a fraction of what the memory allows; translation
// speed for encoder-decoder (encdec) models. Prints a table; --json FILE writes everything.
//
// LLMs run on the internal DecoderState (engine/model.h): prompts are fixed random token ids (no
// tokenizer in the timing), decode is greedy over exactly --gen tokens, EOS ignored, starting from
// an empty KV cache (as llama-bench's tg). Translation runs on the public C API (octet_translate).
#include <octet.h>
#include <omp.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/cli.h"
#include "engine/model.h"
#include "engine/qbin.h"
#include "kernels/kernels.h"

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

const char* const kUsage = R"(usage: octet-bench [options] MODEL.qbin [MODEL.qbin ...]

  LLM models (general.architecture llama): load time, prefill tokens/s, decode tokens/s, peak RSS.
  encdec models: load time, translation sentences/s and target tokens/s (needs --sentences).

  --threads N           threads (default 2)
  --runs N              timed repetitions per measurement, medians reported (default 5)
  --prompts LIST        prefill prompt lengths in tokens (default 64,512)
  --gen N               decode tokens, greedy, EOS ignored (default 128)
  --context N           KV cache positions (default: max(prompts, gen) + 1)
  --no-bandwidth        skip the memory bandwidth probe
  --bandwidth-only      only the memory bandwidth probe
  --bw-mib N            bandwidth probe array size in MiB (default 256; 3 arrays for triad)
  --no-verify           load without checking tensor checksums (the C API default verifies)
  --sentences FILE      encdec: source sentences, one per line
  --beams LIST          encdec: beam sizes (default 4,1)
  --batch N             encdec: sentences per batch (default 32)
  --max-length N        encdec: generated tokens per sentence incl. EOS (default 256)
  --json FILE           also write the results as JSON
  --kernels NAME        force a kernel backend (scalar, avx2, avx512)
  --kv-type T           KV cache (LLM) or decoder caches (encdec): f16 (default), f32 or q8_0
  -h, --help            this help
)";

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "octet-bench: %s\n", message.c_str());
  std::exit(1);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int> parse_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v <= 0) die("not a list of positive integers: \"" + text + "\"");
    out.push_back(static_cast<int>(v));
  }
  return out;
}

int parse_int(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || v < 0) die(flag + ": not a non-negative integer: \"" + text + "\"");
  return static_cast<int>(v);
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

double load_average_1m() {
  double la[3] = {0, 0, 0};
  return getloadavg(la, 3) > 0 ? la[0] : -1.0;
}

// Peak RSS since the last reset_peak_rss() (Linux: /proc/self/clear_refs "5" resets VmHWM). Falls back
// to getrusage's ru_maxrss (process lifetime peak) when /proc is not writable.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  return static_cast<bool>(f.flush());
}

double peak_rss_mib(bool was_reset) {
  if (was_reset) {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // kilobytes on Linux
}

// ---- memory bandwidth probe (STREAM-like) ----------------------------------------------------

struct Bandwidth {
  double read_gbs = 0, triad_gbs = 0;            // best of the repetitions (STREAM convention)
  double read_median_gbs = 0, triad_median_gbs = 0;
  size_t mib = 0;
  int threads = 0;
};

// Read: sum of one array (8 bytes per element), the faster of plain and prefetched loads. Triad:
// a = b + s*c (24 bytes per element counted, as STREAM does; write-allocate traffic is not
// counted). Arrays are first touched by the thread that uses them (static schedule), so pages land
// where they are read.
Bandwidth probe_bandwidth(size_t mib, int threads, int repetitions) {
  Bandwidth bw;
  bw.mib = mib;
  bw.threads = threads;
  const size_t n = mib * 1024 * 1024 / sizeof(double);
  std::unique_ptr<double[]> a(new double[n]), b(new double[n]), c(new double[n]);
  omp_set_num_threads(threads);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    a[i] = 1.0;
    b[i] = 2.0;
    c[i] = 0.5;
  }
  // The sum, over the whole array. With prefetch, each line is also asked into L2 8 KiB ahead,
  // as the packed GEMV kernels do (kernels/backend.h, kPrefetchBytes): on some machines that
  // reads faster than the hardware prefetcher alone, and the bound should be the faster of the two.
  const auto read_pass = [&](bool prefetch) {
    double sum = 0;
    const double* pb = b.get();
    // 16 independent accumulators (n is a multiple of 16): one chain of dependent adds would be
    // bound by the add latency, not by memory.
#pragma omp parallel reduction(+ : sum)
    {
      double acc[16] = {};
#pragma omp for schedule(static)
      for (size_t i = 0; i < n; i += 16) {
        if (prefetch) {  // integer arithmetic: the address may lie past the array
          const uintptr_t ahead = reinterpret_cast<uintptr_t>(pb + i) + 8192;
          __builtin_prefetch(reinterpret_cast<const void*>(ahead), 0, 2);
          __builtin_prefetch(reinterpret_cast<const void*>(ahead + 64), 0, 2);
        }
        for (int j = 0; j < 16; ++j) acc[j] += pb[i + j];
      }
      for (int j = 0; j < 16; ++j) sum += acc[j];
    }
    return sum;
  };
  std::vector<double> reads, triads;
  double sink = 0;
  for (int r = 0; r < repetitions + 1; ++r) {  // the first round warms up
    auto t0 = Clock::now();
    sink += read_pass(false);
    const double t_plain = seconds_since(t0);
    t0 = Clock::now();
    sink += read_pass(true);
    const double tr = std::min(t_plain, seconds_since(t0));
    t0 = Clock::now();
    const double* pb = b.get();
    double* pa = a.get();
    const double* pc = c.get();
    const double s = 3.0;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) pa[i] = pb[i] + s * pc[i];
    const double tt = seconds_since(t0);
    sink += pa[n / 3];
    if (r == 0) continue;
    reads.push_back(8.0 * n / tr / 1e9);
    triads.push_back(24.0 * n / tt / 1e9);
  }
  if (sink == 42.0) std::fputs("", stderr);  // keep the sums alive
  bw.read_gbs = *std::max_element(reads.begin(), reads.end());
  bw.triad_gbs = *std::max_element(triads.begin(), triads.end());
  bw.read_median_gbs = median(reads);
  bw.triad_median_gbs = median(triads);
  return bw;
}

// ---- LLM benchmark -----------------------------------------------------------------------------

struct Options {
  std::vector<std::string> models;
  int threads = 2;
  int runs = 5;
  std::vector<int> prompts{64, 512};
  int gen = 128;
  int context = 0;
  bool bandwidth = true;
  bool bandwidth_only = false;
  size_t bw_mib = 256;
  bool verify = true;
  std::string sentences;
  std::vector<int> beams{4, 1};
  int batch = 32;
  int max_length = 256;
  std::string json_path;
  std::string kernels;
  octet::DType kv_type = octet::DType::F16;  // --kv-type, as the LLM state takes it
  int32_t api_kv_type = OCTET_KV_F16;        // and as the C API does
};

int32_t argmax(const float* logits, int32_t n) {
  return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
}

// Bytes of weights one decode step streams from memory: every tensor but the token embedding, of
// which one row is read (unless it is also the output head, i.e. tied: then it is read in full).
uint64_t weight_bytes_per_token(const octet::qbin::File& file) {
  uint64_t total = 0;
  bool has_output = false;
  const octet::qbin::TensorInfo* embedding = nullptr;
  for (const auto& t : file.tensors()) {
    total += t.size;
    if (t.name == "output.weight") has_output = true;
    if (t.name == "token_embedding.weight") embedding = &t;
  }
  if (embedding && has_output) total -= embedding->size;
  return total;
}

uint64_t weight_bytes(const octet::qbin::File& file) {
  uint64_t total = 0;
  for (const auto& t : file.tensors()) total += t.size;
  return total;
}

json bench_llm(const std::string& path, const Options& o, const Bandwidth* bw) {
  json r;
  r["model"] = path;
  r["kind"] = "llm";
  // Load time from the page cache: one untimed load first pulls the file in. The other
  // checksum setting too, for comparison with loaders that checksum nothing (llama.cpp).
  { auto warm = octet::LanguageModel::load(path, o.verify); }
  std::vector<double> loads_other;
  for (int i = 0; i < o.runs; ++i) {
    const auto t0 = Clock::now();
    auto other = octet::LanguageModel::load(path, !o.verify);
    loads_other.push_back(seconds_since(t0));
  }
  // Peak RSS from here: one model alive at a time, so it is one load's peak and the run's.
  const bool rss_reset = reset_peak_rss();
  std::vector<double> loads;
  std::shared_ptr<const octet::LanguageModel> model;
  for (int i = 0; i < o.runs; ++i) {
    model.reset();
    const auto t0 = Clock::now();
    model = octet::LanguageModel::load(path, o.verify);
    loads.push_back(seconds_since(t0));
  }
  const auto& file = model->file();
  const int32_t vocab = model->vocab_size();
  r["architecture"] = model->architecture();
  r["vocab_size"] = vocab;
  r["file_bytes"] = file.file_size();
  r["weight_bytes"] = weight_bytes(file);
  r["weight_bytes_per_token"] = weight_bytes_per_token(file);
  r["load_ms"] = {{"median", 1e3 * median(loads)}, {"runs", loads}, {"verify_checksums", o.verify}};
  r["load_ms_other"] = {{"median", 1e3 * median(loads_other)}, {"runs", loads_other}, {"verify_checksums", !o.verify}};

  r["kv_type"] = octet::kernels::dtype_name(o.kv_type);
  omp_set_num_threads(o.threads);
  int context = o.context;
  if (context == 0) context = std::max(*std::max_element(o.prompts.begin(), o.prompts.end()), o.gen) + 1;
  auto state = model->new_state(context, o.kv_type);

  std::mt19937 rng(1234);
  // Ids from 3 up: skips the special tokens of our tokenizers; any id is as costly as any other.
  std::uniform_int_distribution<int32_t> pick(3, vocab - 1);

  json prefill = json::object();
  for (int p : o.prompts) {
    if (p > context) die("prompt length " + std::to_string(p) + " exceeds --context");
    std::vector<int32_t> ids(p);
    for (auto& id : ids) id = pick(rng);
    std::vector<double> times;
    for (int i = 0; i < o.runs + 1; ++i) {  // the first run warms up (page faults, arena)
      state->reset();
      const auto t0 = Clock::now();
      const float* logits = state->forward(ids);
      const double t = seconds_since(t0);
      if (std::isnan(logits[0])) die("NaN logits");
      if (i > 0) times.push_back(t);
    }
    std::vector<double> tps;
    for (double t : times) tps.push_back(p / t);
    prefill[std::to_string(p)] = {{"tokens_per_s", median(tps)}, {"runs_tokens_per_s", tps}};
  }
  r["prefill"] = prefill;

  std::vector<double> tps;
  for (int i = 0; i < o.runs + 1; ++i) {
    state->reset();
    int32_t token = pick(rng);
    const auto t0 = Clock::now();
    for (int k = 0; k < o.gen; ++k) {
      const int32_t one[1] = {token};
      token = argmax(state->forward(one), vocab);
    }
    const double t = seconds_since(t0);
    if (i > 0) tps.push_back(o.gen / t);
  }
  const double decode = median(tps);
  json d = {{"tokens", o.gen}, {"tokens_per_s", decode}, {"runs_tokens_per_s", tps}};
  if (bw) {
    const double gbs = weight_bytes_per_token(file) * decode / 1e9;
    d["weight_gb_per_s"] = gbs;
    d["fraction_of_read_bandwidth"] = gbs / bw->read_gbs;
  }
  r["decode"] = d;
  r["peak_rss_mib"] = peak_rss_mib(rss_reset);
  r["peak_rss_source"] = rss_reset ? "VmHWM (reset per model)" : "getrusage ru_maxrss (process peak)";
  return r;
}

// ---- translation benchmark -----------------------------------------------------------------------

void check(octet_status status, const char* what) {
  if (status != OCTET_OK) die(std::string(what) + ": " + octet_last_error());
}

json bench_translator(const std::string& path, const Options& o) {
  json r;
  r["model"] = path;
  r["kind"] = "translation";
  if (o.sentences.empty()) die(path + " is a translation model: give --sentences FILE");
  std::vector<std::string> lines;
  {
    std::ifstream f(o.sentences);
    if (!f) die("cannot read " + o.sentences);
    for (std::string line; std::getline(f, line);)
      if (!line.empty()) lines.push_back(line);
  }
  std::vector<const char*> sentences;
  for (const auto& l : lines) sentences.push_back(l.c_str());
  r["sentences"] = sentences.size();
  r["kv_type"] = octet::kernels::dtype_name(o.kv_type);
  const bool rss_reset = reset_peak_rss();

  octet_translator_params tp;
  octet_translator_params_init(&tp);
  tp.verify_checksums = o.verify;
  tp.kv_type = o.api_kv_type;
  octet_translator* translator = nullptr;
  check(octet_translator_load(path.c_str(), &tp, &translator), "octet_translator_load");
  octet_translator_free(translator);
  std::vector<double> loads;
  for (int i = 0; i < o.runs; ++i) {
    const auto t0 = Clock::now();
    check(octet_translator_load(path.c_str(), &tp, &translator), "octet_translator_load");
    loads.push_back(seconds_since(t0));
    if (i + 1 < o.runs) octet_translator_free(translator);
  }
  r["load_ms"] = {{"median", 1e3 * median(loads)}, {"runs", loads}, {"verify_checksums", o.verify}};
  r["file_bytes"] = octet::qbin::File::open(path, false)->file_size();

  json by_beam = json::object();
  const int translate_runs = std::max(1, std::min(o.runs, 3));  // a run is many seconds
  for (int beam : o.beams) {
    octet_translate_params p;
    octet_translate_params_init(translator, &p);
    p.beam_size = beam;
    p.n_best = 1;
    p.batch_size = o.batch;
    p.max_length = o.max_length;
    p.max_length_ratio = 0;
    p.n_threads = o.threads;
    std::vector<double> sps, tps, secs;
    int64_t tokens = 0;
    for (int i = 0; i < translate_runs; ++i) {
      octet_translation_results* results = nullptr;
      const auto t0 = Clock::now();
      check(octet_translate(translator, sentences.data(), sentences.size(), &p, &results), "octet_translate");
      const double t = seconds_since(t0);
      tokens = 0;
      for (size_t s = 0; s < results->n_translations; ++s)
        if (results->translations[s].n_hypotheses > 0) tokens += results->translations[s].hypotheses[0].n_tokens;
      octet_translation_results_free(results);
      secs.push_back(t);
      sps.push_back(sentences.size() / t);
      tps.push_back(tokens / t);
    }
    by_beam[std::to_string(beam)] = {{"beam_size", beam}, {"batch_size", o.batch}, {"max_length", o.max_length},
                                     {"seconds", median(secs)}, {"sentences_per_s", median(sps)},
                                     {"target_tokens", tokens}, {"target_tokens_per_s", median(tps)},
                                     {"runs_target_tokens_per_s", tps}};
  }
  octet_translator_free(translator);
  r["translate"] = by_beam;
  r["peak_rss_mib"] = peak_rss_mib(rss_reset);
  return r;
}

std::string architecture_of(const std::string& path) {
  auto file = octet::qbin::File::open(path, false);
  return file->metadata().str_or("general.architecture", "");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (flag == "--no-bandwidth") { o.bandwidth = false; continue; }
    if (flag == "--bandwidth-only") { o.bandwidth_only = true; continue; }
    if (flag == "--no-verify") { o.verify = false; continue; }
    if (flag.rfind("--", 0) != 0) { o.models.push_back(flag); continue; }
    if (i + 1 >= argc) die(flag + ": missing value (see --help)");
    const char* v = argv[++i];
    if (flag == "--threads") o.threads = parse_int(flag, v);
    else if (flag == "--runs") o.runs = std::max(1, parse_int(flag, v));
    else if (flag == "--prompts") o.prompts = parse_list(v);
    else if (flag == "--gen") o.gen = parse_int(flag, v);
    else if (flag == "--context") o.context = parse_int(flag, v);
    else if (flag == "--bw-mib") o.bw_mib = std::max(1, parse_int(flag, v));
    else if (flag == "--sentences") o.sentences = v;
    else if (flag == "--beams") o.beams = parse_list(v);
    else if (flag == "--batch") o.batch = parse_int(flag, v);
    else if (flag == "--max-length") o.max_length = parse_int(flag, v);
    else if (flag == "--json") o.json_path = v;
    else if (flag == "--kernels") o.kernels = v;
    else if (flag == "--kv-type") {
      o.api_kv_type = cli::parse_kv_type(v);          // the apps' names, checked; for the C API (translation)
      octet::kernels::dtype_from_name(v, &o.kv_type);  // the same type for the LLM state
    }
    else die("unknown option " + flag + " " + v + " (see --help)");
  }
  if (o.threads == 0) o.threads = omp_get_num_procs();
  if (o.models.empty() && !o.bandwidth_only) die("give at least one model (see --help)");
  return o;
}

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string file = slash == std::string::npos ? path : path.substr(slash + 1);
  // Models are often <shape>/octet-<quant>.qbin: keep the folder for a readable name.
  if (slash != std::string::npos && slash > 0) {
    const size_t prev = path.find_last_of('/', slash - 1);
    return path.substr(prev == std::string::npos ? 0 : prev + 1);
  }
  return file;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (!o.kernels.empty()) check(octet_set_kernel_backend(o.kernels.c_str()), "--kernels");

  json out;
  utsname u{};
  uname(&u);
  char date[64];
  const time_t now = time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", std::localtime(&now));
  out["machine"] = {{"cpu", cpu_name()}, {"cores", omp_get_num_procs()}, {"kernel", u.release},
                    {"backend", octet_kernel_backend()}, {"date", date}, {"load_average_1m_start", load_average_1m()}};
  out["settings"] = {{"threads", o.threads}, {"runs", o.runs}, {"prompts", o.prompts}, {"gen", o.gen},
                     {"verify_checksums", o.verify}, {"octet_version", octet_version()}};

  Bandwidth bw;
  const bool have_bw = o.bandwidth || o.bandwidth_only;
  if (have_bw) {
    bw = probe_bandwidth(o.bw_mib, o.threads, 5);
    out["bandwidth"] = {{"read_gb_s", bw.read_gbs}, {"triad_gb_s", bw.triad_gbs},
                        {"read_median_gb_s", bw.read_median_gbs}, {"triad_median_gb_s", bw.triad_median_gbs},
                        {"array_mib", bw.mib}, {"threads", bw.threads}};
    std::printf("memory bandwidth (%d threads, %zu MiB arrays, best of 5): read %.1f GB/s, triad %.1f GB/s "
                "(medians %.1f, %.1f)\n",
                bw.threads, bw.mib, bw.read_gbs, bw.triad_gbs, bw.read_median_gbs, bw.triad_median_gbs);
  }

  json results = json::array();
  if (!o.bandwidth_only) {
    std::printf("threads %d, %d runs (medians), backend %s, load average %.2f\n", o.threads, o.runs,
                octet_kernel_backend(), load_average_1m());
    bool llm_header = false, tr_header = false;
    for (const auto& path : o.models) {
      std::string arch;
      try {
        arch = architecture_of(path);
      } catch (const std::exception& e) {
        die(path + ": " + e.what());
      }
      try {
        if (arch == "encdec") {
          json r = bench_translator(path, o);
          if (!tr_header) {
            std::printf("\n%-36s %8s %8s %5s %10s %12s %10s\n", "translation model", "MiB", "load ms", "beam",
                        "sent/s", "tgt tok/s", "RSS MiB");
            tr_header = true;
          }
          for (const auto& [beam, t] : r["translate"].items())
            std::printf("%-36s %8.1f %8.1f %5d %10.1f %12.1f %10.1f\n", base_name(path).c_str(),
                        r["file_bytes"].get<double>() / 1048576.0, r["load_ms"]["median"].get<double>(),
                        t["beam_size"].get<int>(), t["sentences_per_s"].get<double>(),
                        t["target_tokens_per_s"].get<double>(), r["peak_rss_mib"].get<double>());
          results.push_back(r);
        } else {
          json r = bench_llm(path, o, have_bw ? &bw : nullptr);
          if (!llm_header) {
            std::printf("\n%-36s %8s %8s", "model", "MiB", "load ms");
            for (int p : o.prompts) std::printf(" %9s", ("pp" + std::to_string(p)).c_str());
            std::printf(" %9s %7s %9s\n", ("tg" + std::to_string(o.gen)).c_str(), "of BW", "RSS MiB");
            llm_header = true;
          }
          std::printf("%-36s %8.1f %8.1f", base_name(path).c_str(), r["file_bytes"].get<double>() / 1048576.0,
                      r["load_ms"]["median"].get<double>());
          for (int p : o.prompts) std::printf(" %9.1f", r["prefill"][std::to_string(p)]["tokens_per_s"].get<double>());
          std::printf(" %9.1f", r["decode"]["tokens_per_s"].get<double>());
          if (have_bw) std::printf(" %6.0f%%", 100.0 * r["decode"]["fraction_of_read_bandwidth"].get<double>());
          else std::printf(" %7s", "-");
          std::printf(" %9.1f\n", r["peak_rss_mib"].get<double>());
          results.push_back(r);
        }
        std::fflush(stdout);
      } catch (const std::exception& e) {
        die(path + ": " + e.what());
      }
    }
    if (llm_header)
      std::printf("(pp/tg in tokens/s; \"of BW\": weight bytes per token x tg tokens/s / best read GB/s)\n");
  }
  out["results"] = results;
  out["machine"]["load_average_1m_end"] = load_average_1m();
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    if (!f) die("cannot write " + o.json_path);
    f << out.dump(2) << "\n";
  }
  return 0;
}
