// octet::hub::download against a tiny HTTP/1.1 server in this process (127.0.0.1, ephemeral
// port) that serves a temp folder laid out like the hub: /{owner}/{name}/resolve/{rev}/{file}.
// Only loopback traffic; every socket has a timeout.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "convert/hub.h"
#include "engine/error.h"

namespace fs = std::filesystem;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_all(const fs::path& p, const std::string& data) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out << data;
}

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// A temp folder removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("octet-hub-test-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

class HubServer {
 public:
  explicit HubServer(fs::path root) : root_(std::move(root)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(listen(fd_, 16) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~HubServer() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // Requests for this path so far (all paths when empty).
  int requests(const std::string& path = "") {
    std::lock_guard<std::mutex> lock(mu_);
    if (path.empty()) return total_;
    auto it = counts_.find(path);
    return it == counts_.end() ? 0 : it->second;
  }
  std::string last_authorization() {
    std::lock_guard<std::mutex> lock(mu_);
    return authorization_;
  }
  void redirect(const std::string& from, const std::string& to) {
    std::lock_guard<std::mutex> lock(mu_);
    redirects_[from] = to;
  }
  void truncate(const std::string& path, bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    if (on)
      truncated_.insert(path);
    else
      truncated_.erase(path);
  }

 private:
  void loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const int c = accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      timeval tv{5, 0};
      setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      serve(c);
      close(c);
    }
  }

  static void send_all(int c, const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      const ssize_t n = send(c, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }

  static std::string header(int status, const char* reason, size_t length, const std::string& extra = "") {
    return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Length: " +
           std::to_string(length) + "\r\nConnection: close\r\n" + extra + "\r\n";
  }

  void serve(int c) {
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
      const ssize_t n = recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      req.append(buf, static_cast<size_t>(n));
    }
    std::istringstream lines(req);
    std::string method, target, version;
    lines >> method >> target >> version;
    std::string auth;
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("Authorization:", 0) == 0) auth = line.substr(15, line.find('\r') - 15);
    }
    std::string location;
    bool truncate = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++total_;
      ++counts_[target];
      authorization_ = auth;
      if (auto it = redirects_.find(target); it != redirects_.end()) location = it->second;
      truncate = truncated_.count(target) > 0;
    }
    if (!location.empty()) {
      const std::string body = "Found";
      send_all(c, header(302, "Found", body.size(), "Location: " + location + "\r\n") + body);
      return;
    }
    // /{owner}/{name}/resolve/{rev}/{file} -> root/{owner}/{name}/{file}; /cdn/{blob} -> root/cdn/{blob}
    std::vector<std::string> parts;
    std::stringstream ss(target);
    for (std::string p; std::getline(ss, p, '/');)
      if (!p.empty()) parts.push_back(p);
    fs::path file;
    for (const auto& p : parts)
      if (p == "..") parts.clear();
    if (parts.size() == 5 && parts[2] == "resolve")
      file = root_ / parts[0] / parts[1] / parts[4];
    else if (parts.size() == 2 && parts[0] == "cdn")
      file = root_ / "cdn" / parts[1];
    if (method != "GET" || file.empty() || !fs::is_regular_file(file)) {
      const std::string body = "Entry not found";
      send_all(c, header(404, "Not Found", body.size()) + body);
      return;
    }
    const std::string data = read_all(file);
    if (truncate) {  // promise everything, send half, hang up
      send_all(c, header(200, "OK", data.size()) + data.substr(0, data.size() / 2));
      return;
    }
    send_all(c, header(200, "OK", data.size()) + data);
  }

  fs::path root_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  int total_ = 0;
  std::map<std::string, int> counts_;
  std::map<std::string, std::string> redirects_;
  std::set<std::string> truncated_;
  std::string authorization_;
};

// Environment for every test: the server as HF_ENDPOINT, no proxy, quiet.
void use_endpoint(const HubServer& server) {
  setenv("HF_ENDPOINT", server.endpoint().c_str(), 1);
  setenv("NO_PROXY", "127.0.0.1", 1);
  setenv("no_proxy", "127.0.0.1", 1);
  setenv("OCTET_QUIET", "1", 1);
  unsetenv("HF_TOKEN");
}

octet::hub::Options in_cache(const fs::path& cache) {
  octet::hub::Options o;
  o.cache_dir = cache.string();
  o.connect_timeout_s = 5;
  o.stall_timeout_s = 5;
  return o;
}

std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

template <class F>
std::string error_of(F&& f, octet::ErrorCode* code = nullptr) {
  try {
    f();
  } catch (const octet::Error& e) {
    if (code) *code = e.code();
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("repo ids") {
  using octet::hub::looks_like_repo_id;
  CHECK(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
  CHECK(looks_like_repo_id("Qwen/Qwen2.5-0.5B-Instruct"));
  CHECK(looks_like_repo_id("karpathy/tinyllamas"));
  CHECK_FALSE(looks_like_repo_id(""));
  CHECK_FALSE(looks_like_repo_id("gpt2"));
  CHECK_FALSE(looks_like_repo_id("../x"));
  CHECK_FALSE(looks_like_repo_id("a/../b"));
  CHECK_FALSE(looks_like_repo_id("owner/.."));
  CHECK_FALSE(looks_like_repo_id("/abs/path"));
  CHECK_FALSE(looks_like_repo_id("a/b/c"));
  CHECK_FALSE(looks_like_repo_id("./model"));
  CHECK_FALSE(looks_like_repo_id("models/stories260K.bin"));
  CHECK_FALSE(looks_like_repo_id("out/model.qbin"));
  CHECK_FALSE(looks_like_repo_id("a b/c"));
  octet::ErrorCode code{};
  CHECK(contains(error_of([] { octet::hub::download("../../etc"); }, &code), "repo id"));
  CHECK(code == octet::ErrorCode::InvalidArgument);
  octet::hub::Options bad_rev;
  bad_rev.revision = "../main";
  CHECK(contains(error_of([&] { octet::hub::download("a/b", bad_rev); }, &code), "revision"));
  CHECK(code == octet::ErrorCode::InvalidArgument);

  TempDir tmp;  // an existing path is never taken for a repo id
  CHECK(octet::hub::resolve(tmp.path.string()) == tmp.path.string());
  CHECK(octet::hub::resolve("no/such.bin") == "no/such.bin");
}

TEST_CASE("cache folder from the environment") {
  setenv("OCTET_CACHE", "/tmp/x-octet", 1);
  CHECK(octet::hub::default_cache_dir() == "/tmp/x-octet");
  unsetenv("OCTET_CACHE");
  setenv("XDG_CACHE_HOME", "/tmp/xdg", 1);
  CHECK(octet::hub::default_cache_dir() == "/tmp/xdg/octet");
  unsetenv("XDG_CACHE_HOME");
  CHECK(contains(octet::hub::default_cache_dir(), ".cache/octet"));
}

TEST_CASE("sharded repository, redirect, optional files, token, cache reuse") {
  TempDir root, cache;
  const fs::path repo = root.path / "acme" / "tiny-sharded";
  const std::string shard1 = random_bytes(300000, 1), shard2 = random_bytes(123457, 2);
  const std::string index = R"({"metadata": {"total_size": 423457}, "weight_map": {
      "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00001-of-00002.safetensors",
      "c.weight": "model-00002-of-00002.safetensors"}})";
  write_all(repo / "config.json", R"({"model_type": "llama"})");
  write_all(repo / "tokenizer.json", R"({"model": {"type": "BPE"}})");
  write_all(repo / "tokenizer_config.json", R"({"chat_template": "x"})");
  write_all(repo / "model.safetensors.index.json", index);
  write_all(repo / "model-00001-of-00002.safetensors", shard1);
  write_all(root.path / "cdn" / "blob-2", shard2);  // shard 2 is served through a redirect

  HubServer server(root.path);
  use_endpoint(server);
  setenv("HF_TOKEN", "secret-token", 1);
  server.redirect("/acme/tiny-sharded/resolve/main/model-00002-of-00002.safetensors", "/cdn/blob-2");

  std::map<std::string, uint64_t> finished;
  const octet::hub::Progress progress = [&](const std::string& f, uint64_t done, uint64_t total) {
    CHECK(done <= std::max<uint64_t>(total, done));
    if (total > 0 && done == total) finished[f] = total;
    return true;
  };
  const std::string dir = octet::hub::download("acme/tiny-sharded", in_cache(cache.path), progress);
  CHECK(fs::path(dir).parent_path().parent_path() == cache.path / "hub");
  CHECK(read_all(fs::path(dir) / "model.safetensors.index.json") == index);
  CHECK(read_all(fs::path(dir) / "model-00001-of-00002.safetensors") == shard1);
  CHECK(read_all(fs::path(dir) / "model-00002-of-00002.safetensors") == shard2);
  CHECK(read_all(fs::path(dir) / "config.json") == read_all(repo / "config.json"));
  CHECK(read_all(fs::path(dir) / "tokenizer.json") == read_all(repo / "tokenizer.json"));
  CHECK(read_all(fs::path(dir) / "tokenizer_config.json") == read_all(repo / "tokenizer_config.json"));
  CHECK_FALSE(fs::exists(fs::path(dir) / "generation_config.json"));  // optional, absent: fine
  CHECK_FALSE(fs::exists(fs::path(dir) / "tokenizer.model"));
  CHECK_FALSE(fs::exists(fs::path(dir) / "model.safetensors"));  // not asked for: sharded
  for (const auto& name : names_in(dir)) CHECK_MESSAGE(!contains(name, ".part"), name);
  CHECK(finished["model-00001-of-00002.safetensors"] == shard1.size());
  CHECK(finished["model-00002-of-00002.safetensors"] == shard2.size());
  CHECK(server.requests("/cdn/blob-2") == 1);
  CHECK(server.last_authorization() == "Bearer secret-token");

  const int first = server.requests();
  CHECK(first >= 8);
  // The same repository again: served from the cache, not one request.
  CHECK(octet::hub::download("acme/tiny-sharded", in_cache(cache.path), progress) == dir);
  CHECK(server.requests() == first);
  // An interrupted earlier run (no completion marker): only what is missing is fetched.
  fs::remove(fs::path(dir) / ".octet-complete");
  fs::remove(fs::path(dir) / "model-00002-of-00002.safetensors");
  CHECK(octet::hub::download("acme/tiny-sharded", in_cache(cache.path), progress) == dir);
  CHECK(read_all(fs::path(dir) / "model-00002-of-00002.safetensors") == shard2);
  CHECK(server.requests("/acme/tiny-sharded/resolve/main/model-00001-of-00002.safetensors") == 1);
  CHECK(server.requests("/acme/tiny-sharded/resolve/main/config.json") == 1);
  CHECK(server.requests("/cdn/blob-2") == 2);
  unsetenv("HF_TOKEN");
}

TEST_CASE("single-file repository and the default revision path") {
  TempDir root, cache;
  const fs::path repo = root.path / "acme" / "single";
  const std::string weights = random_bytes(4096, 3);
  write_all(repo / "config.json", "{}");
  write_all(repo / "generation_config.json", "{}");
  write_all(repo / "tokenizer.model", "spm");
  write_all(repo / "model.safetensors", weights);
  HubServer server(root.path);
  use_endpoint(server);
  const fs::path dir = octet::hub::download("acme/single", in_cache(cache.path), {});
  CHECK(read_all(dir / "model.safetensors") == weights);
  CHECK(read_all(dir / "tokenizer.model") == "spm");
  CHECK(fs::exists(dir / "generation_config.json"));
  CHECK(server.requests("/acme/single/resolve/main/model.safetensors.index.json") == 1);  // 404: fine
  // resolve(): a repo id that is not a path downloads (from the cache now).
  const int before = server.requests();
  CHECK(octet::hub::resolve("acme/single", in_cache(cache.path)) == dir.string());
  CHECK(server.requests() == before);
}

TEST_CASE("Marian repository: sentencepiece pair, vocab.json and pytorch_model.bin") {
  TempDir root, cache;
  const fs::path repo = root.path / "acme" / "opus-mt-xx-yy";
  const std::string weights = random_bytes(10000, 6);
  write_all(repo / "config.json", R"({"model_type": "marian", "architectures": ["MarianMTModel"]})");
  write_all(repo / "source.spm", "src");
  write_all(repo / "target.spm", "tgt");
  write_all(repo / "vocab.json", R"({"a": 0})");
  write_all(repo / "tokenizer_config.json", "{}");
  write_all(repo / "pytorch_model.bin", weights);
  write_all(root.path / "acme" / "llama-bin-only" / "config.json", R"({"model_type": "llama"})");
  write_all(root.path / "acme" / "llama-bin-only" / "tokenizer.json", "{}");
  write_all(root.path / "acme" / "llama-bin-only" / "pytorch_model.bin", weights);
  HubServer server(root.path);
  use_endpoint(server);
  const fs::path dir = octet::hub::download("acme/opus-mt-xx-yy", in_cache(cache.path));
  CHECK(read_all(dir / "pytorch_model.bin") == weights);
  CHECK(read_all(dir / "source.spm") == "src");
  CHECK(read_all(dir / "target.spm") == "tgt");
  CHECK(read_all(dir / "vocab.json") == R"({"a": 0})");
  CHECK(server.requests("/acme/opus-mt-xx-yy/resolve/main/tokenizer.json") == 0);
  // Other families read safetensors only: no multi-gigabyte .bin download that cannot convert.
  const std::string e = error_of([&] { octet::hub::download("acme/llama-bin-only", in_cache(cache.path)); });
  CHECK_MESSAGE(contains(e, "only safetensors"), e);
  CHECK(server.requests("/acme/llama-bin-only/resolve/main/pytorch_model.bin") == 0);
}

TEST_CASE("missing required files are clean errors naming them") {
  TempDir root, cache;
  write_all(root.path / "acme" / "no-config" / "tokenizer.json", "{}");
  write_all(root.path / "acme" / "no-weights" / "config.json", "{}");
  write_all(root.path / "acme" / "no-weights" / "tokenizer.json", "{}");
  write_all(root.path / "acme" / "no-tokenizer" / "config.json", "{}");
  write_all(root.path / "acme" / "missing-shard" / "config.json", "{}");
  write_all(root.path / "acme" / "missing-shard" / "tokenizer.json", "{}");
  write_all(root.path / "acme" / "missing-shard" / "model.safetensors.index.json",
            R"({"weight_map": {"w": "model-00001-of-00001.safetensors"}})");
  HubServer server(root.path);
  use_endpoint(server);
  octet::ErrorCode code{};
  std::string e = error_of([&] { octet::hub::download("acme/no-config", in_cache(cache.path)); }, &code);
  CHECK_MESSAGE(contains(e, "config.json"), e);
  CHECK_MESSAGE(contains(e, "404"), e);
  CHECK(code == octet::ErrorCode::Io);
  e = error_of([&] { octet::hub::download("acme/no-weights", in_cache(cache.path)); });
  CHECK_MESSAGE(contains(e, "model.safetensors"), e);
  e = error_of([&] { octet::hub::download("acme/no-tokenizer", in_cache(cache.path)); });
  CHECK_MESSAGE(contains(e, "tokenizer"), e);
  e = error_of([&] { octet::hub::download("acme/missing-shard", in_cache(cache.path)); });
  CHECK_MESSAGE(contains(e, "model-00001-of-00001.safetensors"), e);
  CHECK_MESSAGE(contains(e, "404"), e);
  e = error_of([&] { octet::hub::download("acme/no-such-repo", in_cache(cache.path)); });
  CHECK_MESSAGE(contains(e, "config.json"), e);
}

TEST_CASE("an index naming files outside the folder is rejected") {
  TempDir root, cache;
  const char* hostile[] = {"../../escape.safetensors", "/tmp/abs.safetensors", "sub/dir.safetensors",
                           "..", ".hidden.safetensors", "config.json", ""};
  HubServer server(root.path);
  use_endpoint(server);
  int i = 0;
  for (const char* name : hostile) {
    const std::string repo_name = "evil" + std::to_string(i++);
    const fs::path repo = root.path / "acme" / repo_name;
    write_all(repo / "config.json", "{}");
    write_all(repo / "tokenizer.json", "{}");
    write_all(repo / "model.safetensors.index.json",
              std::string(R"({"weight_map": {"w": ")") + name + R"("}})");
    octet::ErrorCode code{};
    const std::string e = error_of([&] { octet::hub::download("acme/" + repo_name, in_cache(cache.path)); }, &code);
    CHECK_MESSAGE(code == octet::ErrorCode::Format, name, ": ", e);
    CHECK_MESSAGE(contains(e, "model.safetensors.index.json"), e);
  }
  CHECK_FALSE(fs::exists(cache.path / "hub" / "escape.safetensors"));
  CHECK_FALSE(fs::exists(cache.path / "escape.safetensors"));
  // Not JSON / no weight_map.
  write_all(root.path / "acme" / "broken" / "config.json", "{}");
  write_all(root.path / "acme" / "broken" / "tokenizer.json", "{}");
  write_all(root.path / "acme" / "broken" / "model.safetensors.index.json", "{\"weight_map\": [1,2");
  octet::ErrorCode code{};
  error_of([&] { octet::hub::download("acme/broken", in_cache(cache.path)); }, &code);
  CHECK(code == octet::ErrorCode::Format);
}

TEST_CASE("a transfer cut short is an error and leaves no complete-looking file") {
  TempDir root, cache;
  const fs::path repo = root.path / "acme" / "cut";
  const std::string weights = random_bytes(200000, 4);
  write_all(repo / "config.json", "{}");
  write_all(repo / "tokenizer.json", "{}");
  write_all(repo / "model.safetensors", weights);
  HubServer server(root.path);
  use_endpoint(server);
  server.truncate("/acme/cut/resolve/main/model.safetensors", true);
  octet::ErrorCode code{};
  const std::string e = error_of([&] { octet::hub::download("acme/cut", in_cache(cache.path)); }, &code);
  CHECK_MESSAGE(code == octet::ErrorCode::Io, e);
  CHECK_MESSAGE(contains(e, "model.safetensors"), e);
  CHECK_MESSAGE(contains(e, "cut short"), e);
  const fs::path dir = cache.path / "hub" / "acme--cut" / "main";
  CHECK_FALSE(fs::exists(dir / "model.safetensors"));
  CHECK_FALSE(fs::exists(dir / ".octet-complete"));
  for (const auto& name : names_in(dir)) CHECK_MESSAGE(!contains(name, ".part"), name);
  // The server mends: the next run completes.
  server.truncate("/acme/cut/resolve/main/model.safetensors", false);
  CHECK(octet::hub::download("acme/cut", in_cache(cache.path)) == dir.string());
  CHECK(read_all(dir / "model.safetensors") == weights);
}

TEST_CASE("cancel from the progress callback") {
  TempDir root, cache;
  const fs::path repo = root.path / "acme" / "big";
  write_all(repo / "config.json", "{}");
  write_all(repo / "tokenizer.json", "{}");
  write_all(repo / "model.safetensors", random_bytes(1 << 20, 5));
  HubServer server(root.path);
  use_endpoint(server);
  octet::ErrorCode code{};
  error_of([&] {
    octet::hub::download("acme/big", in_cache(cache.path),
                         [](const std::string& f, uint64_t, uint64_t) { return f != "model.safetensors"; });
  }, &code);
  CHECK(code == octet::ErrorCode::Cancelled);
  CHECK_FALSE(fs::exists(cache.path / "hub" / "acme--big" / "main" / "model.safetensors"));
}

TEST_CASE("network failure says so") {
  // A port nobody listens on: bind one, note it, close it.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  TempDir cache;
  setenv("OCTET_QUIET", "1", 1);
  setenv("NO_PROXY", "127.0.0.1", 1);
  setenv("no_proxy", "127.0.0.1", 1);
  octet::hub::Options o = in_cache(cache.path);
  o.endpoint = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  octet::ErrorCode code{};
  const std::string e = error_of([&] { octet::hub::download("acme/anything", o); }, &code);
  CHECK(code == octet::ErrorCode::Io);
  CHECK_MESSAGE(contains(e, "network error"), e);
  CHECK_MESSAGE(contains(e, "config.json"), e);
  o.endpoint = "file:///etc";
  CHECK(contains(error_of([&] { octet::hub::download("acme/anything", o); }, &code), "endpoint"));
}
