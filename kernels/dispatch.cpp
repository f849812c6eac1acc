// Picks the backend once, at first use: the best this CPU runs, unless OCTET_KERNELS names
// another; force_backend() may switch it later (tests, benchmarks).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/backend.h"
#include "kernels/kernels.h"

#if defined(__aarch64__) && defined(__linux__)  // Linux and Android: the kernel reports the features
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace octet::kernels {

namespace {

// The backends this CPU runs, worst first. __builtin_cpu_supports also checks that the OS saves
// the AVX / AVX-512 registers.
const std::vector<const Backend*>& runnable_backends() {
  static const std::vector<const Backend*> runnable = [] {
    std::vector<const Backend*> out{&scalar_backend()};
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    if (avx2) out.push_back(&avx2_backend());
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
      out.push_back(&avx512_backend());
#endif
#if defined(__aarch64__) && defined(__linux__)
    // NEON itself is baseline on aarch64; the backend also needs sdot (ARMv8.2 dotprod).
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) out.push_back(&neon_backend());
#endif
    return out;
  }();
  return runnable;
}

const Backend* initial_backend() {
  const Backend* best = runnable_backends().back();
  const char* wanted = std::getenv("OCTET_KERNELS");
  if (wanted == nullptr || *wanted == '\0') return best;
  if (const Backend* b = find_backend(wanted)) return b;
  std::fprintf(stderr, "octet: OCTET_KERNELS=%s is unknown or not supported by this CPU; using %s\n",
               wanted, best->name);
  return best;
}

std::atomic<const Backend*>& active_slot() {
  static std::atomic<const Backend*> slot{initial_backend()};
  return slot;
}

}  // namespace

const Backend* find_backend(const char* name) {
  if (name == nullptr) return nullptr;
  for (const Backend* b : runnable_backends())
    if (std::strcmp(b->name, name) == 0) return b;
  return nullptr;
}

const Backend& active_backend() { return *active_slot().load(std::memory_order_acquire); }

const char* backend_name() { return active_backend().name; }

void attend(const AttendArgs& args) { active_backend().attend(args); }
double sum_exp(const float* x, int64_t n, float max) { return active_backend().sum_exp(x, n, max); }
void silu(float* x, const float* bias, int64_t n) { active_backend().silu(x, bias, n); }

bool force_backend(const char* name) {
  const Backend* b = find_backend(name);
  if (b == nullptr) return false;
  active_slot().store(b, std::memory_order_release);
  return true;
}

const char* const* available_backends() {
  static const std::vector<const char*> names = [] {
    std::vector<const char*> out;
    for (const Backend* b : runnable_backends()) out.push_back(b->name);
    out.push_back(nullptr);
    return out;
  }();
  return names.data();
}

}  // namespace octet::kernels
