// Hugging Face hub downloads over libcurl; see hub.h.
#include "convert/hub.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "convert/sources/shard_index.h"
#include "engine/error.h"

namespace fs = std::filesystem;

namespace octet::hub {
namespace {

constexpr const char* kMarker = ".octet-complete";

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

// One part of "owner/name": hub rules (letters, digits, - _ .; no leading/trailing - or .,
// no ".." or "--"), at most 96 characters.
bool valid_part(const std::string& p) {
  if (p.empty() || p.size() > 96) return false;
  if (!std::all_of(p.begin(), p.end(), name_char)) return false;
  if (p.front() == '.' || p.front() == '-' || p.back() == '.' || p.back() == '-') return false;
  return p.find("..") == std::string::npos && p.find("--") == std::string::npos;
}

bool valid_repo_id(const std::string& s) {
  const size_t slash = s.find('/');
  if (slash == std::string::npos || s.find('/', slash + 1) != std::string::npos) return false;
  return valid_part(s.substr(0, slash)) && valid_part(s.substr(slash + 1));
}

bool valid_revision(const std::string& r) {
  if (r.empty() || r.size() > 128 || r.front() == '/' || r.back() == '/') return false;
  for (char c : r)
    if (!name_char(c) && c != '/') return false;
  return r.find("..") == std::string::npos && r.find("//") == std::string::npos &&
         r.front() != '.' && r.front() != '-';
}

// A shard name from an index: a plain file name in the same folder, nothing else.
bool valid_shard_name(const std::string& n, const std::string& ext) {
  if (n.empty() || n.size() > 200 || n.front() == '.') return false;
  if (!std::all_of(n.begin(), n.end(), name_char)) return false;
  return n.size() > ext.size() && n.compare(n.size() - ext.size(), ext.size(), ext) == 0;
}

std::string url_revision(const std::string& r) {
  std::string out;
  for (char c : r) out += (c == '/') ? std::string("%2F") : std::string(1, c);
  return out;
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30))
    std::snprintf(buf, sizeof buf, "%.2f GB", b / 1073741824.0);
  else if (b >= (1ull << 20))
    std::snprintf(buf, sizeof buf, "%.1f MB", b / 1048576.0);
  else if (b >= 1024)
    std::snprintf(buf, sizeof buf, "%.1f kB", b / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      fail(ErrorCode::Internal, "libcurl could not be initialised");
  });
}

// The default progress report on stderr: a live line on a terminal, one line per file otherwise.
class StderrProgress {
 public:
  StderrProgress() : tty_(isatty(STDERR_FILENO) != 0), quiet_(quiet()) {}
  static bool quiet() {
    const std::string q = env("OCTET_QUIET");
    return !q.empty() && q != "0";
  }
  bool operator()(const std::string& file, uint64_t done, uint64_t total) {
    if (quiet_) return true;
    const auto now = std::chrono::steady_clock::now();
    const bool finished = total > 0 && done >= total;
    if (file != file_) {
      file_ = file;
      last_ = {};
      done_reported_ = false;
    }
    if (finished && done_reported_) return true;
    if (!finished && (!tty_ || now - last_ < std::chrono::milliseconds(250))) return true;
    last_ = now;
    if (tty_) {
      if (total > 0)
        std::fprintf(stderr, "\r  %-40s %10s / %-10s %3d%%", file.c_str(), human_bytes(done).c_str(),
                     human_bytes(total).c_str(), static_cast<int>(100.0 * done / total));
      else
        std::fprintf(stderr, "\r  %-40s %10s", file.c_str(), human_bytes(done).c_str());
      if (finished) std::fputc('\n', stderr);
    } else if (finished) {
      std::fprintf(stderr, "  %s (%s)\n", file.c_str(), human_bytes(total).c_str());
    }
    if (finished) done_reported_ = true;
    std::fflush(stderr);
    return true;
  }

 private:
  bool tty_, quiet_;
  std::string file_;
  std::chrono::steady_clock::time_point last_{};
  bool done_reported_ = false;
};

struct Transfer {
  CURL* curl = nullptr;
  FILE* file = nullptr;
  const Progress* progress = nullptr;
  const std::string* name = nullptr;
  uint64_t written = 0;
  std::string error_body;  // the start of a non-2xx response body, for the message
  bool write_failed = false;
  bool cancelled = false;
};

long response_code(CURL* curl) {
  long code = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
  return code;
}

size_t on_write(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  const long code = response_code(t->curl);
  if (code < 200 || code >= 300) {  // an error page: keep a little of it, never write it
    if (t->error_body.size() < 300) t->error_body.append(data, std::min<size_t>(len, 300));
    return len;
  }
  if (std::fwrite(data, 1, len, t->file) != len) {
    t->write_failed = true;
    return 0;
  }
  t->written += len;
  return len;
}

int on_progress(void* user, curl_off_t dltotal, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (!*t->progress || t->written == 0) return 0;
  const long code = response_code(t->curl);
  if (code < 200 || code >= 300) return 0;
  const uint64_t total = dltotal > 0 ? static_cast<uint64_t>(dltotal) : 0;
  if (total > 0 && t->written >= total) return 0;  // the final call comes from fetch()
  if (!(*t->progress)(*t->name, t->written, total)) {
    t->cancelled = true;
    return 1;
  }
  return 0;
}

class Downloader {
 public:
  Downloader(std::string repo, const Options& o, const Progress& progress, fs::path dir)
      : repo_(std::move(repo)), options_(o), progress_(progress), dir_(std::move(dir)) {
    endpoint_ = !o.endpoint.empty() ? o.endpoint : env("HF_ENDPOINT");
    if (endpoint_.empty()) endpoint_ = "https://huggingface.co";
    while (!endpoint_.empty() && endpoint_.back() == '/') endpoint_.pop_back();
    if (endpoint_.rfind("http://", 0) != 0 && endpoint_.rfind("https://", 0) != 0)
      fail(ErrorCode::InvalidArgument, "hub endpoint must be an http(s) URL: '" + endpoint_ + "'");
    token_ = !o.token.empty() ? o.token : env("HF_TOKEN");
    where_ = repo_ + "@" + o.revision;
  }

  // Fetches `file` unless already present. Returns false when it is absent from the repository
  // (HTTP 404) and `optional`; a required file that is absent is an error naming it.
  bool fetch(const std::string& file, bool optional) {
    const fs::path target = dir_ / file;
    if (fs::exists(target)) return true;
    const std::string url = endpoint_ + "/" + repo_ + "/resolve/" + url_revision(options_.revision) + "/" + file;
    const fs::path part = dir_ / (file + "." + std::to_string(getpid()) + ".part");

    Transfer t;
    t.progress = &progress_;
    t.name = &file;
    t.file = std::fopen(part.c_str(), "wb");
    if (!t.file) fail(ErrorCode::Io, "cannot write " + part.string() + ": " + std::strerror(errno));
    std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
    struct curl_slist* headers = nullptr;
    if (!token_.empty()) headers = curl_slist_append(nullptr, ("Authorization: Bearer " + token_).c_str());
    std::unique_ptr<curl_slist, void (*)(curl_slist*)> headers_guard(headers, curl_slist_free_all);
    auto discard = [&] {
      if (t.file) std::fclose(t.file);
      t.file = nullptr;
      std::error_code ec;
      fs::remove(part, ec);
    };
    if (!curl) {
      discard();
      fail(ErrorCode::Internal, "libcurl: cannot create a transfer");
    }
    t.curl = curl.get();
    char errbuf[CURL_ERROR_SIZE] = {0};
    CURL* c = curl.get();
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "octet/0.1 (libcurl)");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, options_.connect_timeout_s);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, options_.stall_timeout_s);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
    // Bearer header: libcurl drops it on a redirect to another host (the hub's storage URLs are
    // pre-signed and must not see the token).
    if (headers) curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);

    const CURLcode rc = curl_easy_perform(c);
    const long code = response_code(c);
    if (t.cancelled) {
      discard();
      fail(ErrorCode::Cancelled, "download of " + file + " cancelled");
    }
    if (t.write_failed) {
      discard();
      fail(ErrorCode::Io, "cannot write " + part.string() + " (disk full?)");
    }
    if (rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR || rc == CURLE_OPERATION_TIMEDOUT) {
      discard();
      fail(ErrorCode::Io, "download of " + file + " from " + url + " was cut short after " +
                              std::to_string(t.written) + " bytes: " + (errbuf[0] ? errbuf : curl_easy_strerror(rc)));
    }
    if (rc != CURLE_OK) {
      discard();
      fail(ErrorCode::Io, "network error fetching " + url + ": " + (errbuf[0] ? errbuf : curl_easy_strerror(rc)) +
                              " (is the hub reachable? HF_ENDPOINT selects a mirror)");
    }
    if (code == 404) {
      discard();
      if (optional) return false;
      fail(ErrorCode::Io, file + " not found in " + where_ + " (HTTP 404 from " + url + ")");
    }
    if (code == 401 || code == 403) {
      discard();
      fail(ErrorCode::Io, "access to " + where_ + " refused (HTTP " + std::to_string(code) + " for " + file +
                              "): the repository may not exist, or be gated or private: " +
                              (token_.empty() ? "set HF_TOKEN to a token that may read it" : "check HF_TOKEN"));
    }
    if (code < 200 || code >= 300) {
      std::string body = t.error_body;
      std::replace_if(body.begin(), body.end(), [](char ch) { return ch == '\n' || ch == '\r'; }, ' ');
      discard();
      fail(ErrorCode::Io, "HTTP " + std::to_string(code) + " fetching " + url + (body.empty() ? "" : ": " + body));
    }
    curl_off_t length = -1;
    curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
    if (length >= 0 && static_cast<uint64_t>(length) != t.written) {
      discard();
      fail(ErrorCode::Io, "download of " + file + " was cut short: " + std::to_string(t.written) + " of " +
                              std::to_string(length) + " bytes");
    }
    const bool flushed = std::fflush(t.file) == 0 && fsync(fileno(t.file)) == 0;
    const bool closed = std::fclose(t.file) == 0;
    t.file = nullptr;
    if (!flushed || !closed) {
      discard();
      fail(ErrorCode::Io, "cannot write " + part.string() + " (disk full?)");
    }
    if (progress_ && !progress_(file, t.written, t.written)) {
      discard();
      fail(ErrorCode::Cancelled, "download of " + file + " cancelled");
    }
    std::error_code ec;
    fs::rename(part, target, ec);
    if (ec) {
      discard();
      fail(ErrorCode::Io, "cannot rename " + part.string() + " to " + target.string() + ": " + ec.message());
    }
    return true;
  }

  const std::string& where() const { return where_; }

 private:
  std::string repo_;
  const Options& options_;
  const Progress& progress_;
  fs::path dir_;
  std::string endpoint_, token_, where_;
};

// config.json's model_type ("" when unreadable: the converter reports that).
std::string model_type(const fs::path& config) {
  std::ifstream in(config, std::ios::binary);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return "";
  const auto it = j.find("model_type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// The shard files an index's weight_map names (each a plain file name ending in `ext`).
std::vector<std::string> shards_from_index(const fs::path& index_path, const std::string& ext) {
  const convert::ShardIndex index = convert::read_shard_index(index_path);
  // Each name also becomes part of a URL: only safe characters and the expected extension.
  for (const std::string& name : index.shards)
    if (!valid_shard_name(name, ext))
      fail(ErrorCode::Format, index.path + ": unsafe or unexpected shard file name '" + name + "'");
  if (index.shards.size() > 10000) fail(ErrorCode::Format, index.path + ": too many shards");
  return index.shards;
}

}  // namespace

bool looks_like_repo_id(const std::string& s) {
  if (!valid_repo_id(s)) return false;
  static const char* const kFileEndings[] = {".bin", ".qbin", ".safetensors", ".gguf", ".json",
                                             ".model", ".pt", ".pth", ".ckpt", ".txt"};
  for (const char* e : kFileEndings) {
    const std::string end = e;
    if (s.size() >= end.size() && s.compare(s.size() - end.size(), end.size(), end) == 0) return false;
  }
  return true;
}

std::string default_cache_dir() {
  if (std::string v = env("OCTET_CACHE"); !v.empty()) return v;
  if (std::string v = env("XDG_CACHE_HOME"); !v.empty()) return (fs::path(v) / "octet").string();
  if (std::string v = env("HOME"); !v.empty()) return (fs::path(v) / ".cache" / "octet").string();
  fail(ErrorCode::InvalidArgument, "no cache folder: set OCTET_CACHE (or HOME)");
}

std::string download(const std::string& repo_id, const Options& options, const Progress& progress) {
  if (!valid_repo_id(repo_id))
    fail(ErrorCode::InvalidArgument, "'" + repo_id + "' is not a Hugging Face repo id (owner/name)");
  if (!valid_revision(options.revision))
    fail(ErrorCode::InvalidArgument, "'" + options.revision + "' is not a valid revision");
  global_init();

  std::string rev_dir = options.revision;
  std::replace(rev_dir.begin(), rev_dir.end(), '/', '_');
  std::string repo_dir = repo_id;
  repo_dir.replace(repo_dir.find('/'), 1, "--");
  const fs::path cache = options.cache_dir.empty() ? fs::path(default_cache_dir()) : fs::path(options.cache_dir);
  const fs::path dir = cache / "hub" / repo_dir / rev_dir;

  // Complete already: no request at all.
  if (std::ifstream marker(dir / kMarker); marker) {
    bool all = true;
    int count = 0;
    for (std::string line; std::getline(marker, line);) {
      if (line.empty()) continue;
      ++count;
      if (line.find('/') != std::string::npos || line.front() == '.' || !fs::exists(dir / line)) {
        all = false;
        break;
      }
    }
    if (all && count > 0) return dir.string();
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(ErrorCode::Io, "cannot create " + dir.string() + ": " + ec.message());
  struct TidyOnFailure {  // a failed first download leaves no empty folders behind
    const fs::path& dir;
    int exceptions = std::uncaught_exceptions();
    ~TidyOnFailure() {
      if (std::uncaught_exceptions() <= exceptions) return;
      std::error_code ignored;
      if (fs::is_empty(dir, ignored) && fs::remove(dir, ignored) && fs::is_empty(dir.parent_path(), ignored))
        fs::remove(dir.parent_path(), ignored);
    }
  } tidy{dir};

  StderrProgress stderr_progress;
  Progress report = progress;
  if (!report) report = [&](const std::string& f, uint64_t d, uint64_t t) { return stderr_progress(f, d, t); };
  if (!progress && !StderrProgress::quiet())
    std::fprintf(stderr, "octet: fetching %s into %s\n", repo_id.c_str(), dir.c_str());
  Downloader dl(repo_id, options, report, dir);

  std::vector<std::string> got;
  const auto take = [&](const std::string& f, bool optional) {
    const bool ok = dl.fetch(f, optional);
    if (ok) got.push_back(f);
    return ok;
  };
  take("config.json", false);
  take("generation_config.json", true);
  take("tokenizer_config.json", true);
  // Marian translation models (Helsinki-NLP/opus-mt-*) keep their tokenizers in source.spm,
  // target.spm and vocab.json, and often their weights only in pytorch_model.bin.
  const bool marian = model_type(dir / "config.json") == "marian";
  if (marian) {
    for (const char* f : {"source.spm", "target.spm", "vocab.json"}) take(f, false);
  } else {
    const bool tok_json = take("tokenizer.json", true);
    const bool tok_model = take("tokenizer.model", true);
    if (!tok_json && !tok_model)
      fail(ErrorCode::Io, dl.where() + " has neither tokenizer.json nor tokenizer.model");
  }

  // Weights: one file, or an index and every shard it names.
  const auto take_weights = [&](const std::string& single, const std::string& index, const std::string& ext) {
    if (fs::exists(dir / single)) return take(single, false);
    if (take(index, true)) {
      for (const std::string& shard : shards_from_index(dir / index, ext)) take(shard, false);
      return true;
    }
    return take(single, true);
  };
  if (!take_weights("model.safetensors", "model.safetensors.index.json", ".safetensors") &&
      !(marian && take_weights("pytorch_model.bin", "pytorch_model.bin.index.json", ".bin")))
    fail(ErrorCode::Io, dl.where() + " has neither model.safetensors nor model.safetensors.index.json" +
                            (marian ? " nor pytorch_model.bin" : " (only safetensors checkpoints are supported)"));

  // Mark the folder complete (written whole, then renamed).
  const fs::path tmp = dir / (std::string(kMarker) + "." + std::to_string(getpid()) + ".part");
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& f : got) out << f << "\n";
    if (!out) fail(ErrorCode::Io, "cannot write " + tmp.string());
  }
  fs::rename(tmp, dir / kMarker, ec);
  if (ec) fail(ErrorCode::Io, "cannot write " + (dir / kMarker).string() + ": " + ec.message());
  return dir.string();
}

std::string resolve(const std::string& input, const Options& options, const Progress& progress) {
  std::error_code ec;
  if (fs::exists(input, ec) || !looks_like_repo_id(input)) return input;
  return download(input, options, progress);
}

}  // namespace octet::hub
