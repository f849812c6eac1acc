// Loops shared out over the OpenMP team, or not. An OpenMP region whose if-clause is false still
// sets up a team of one, about 0.3 us on the 2-vCPU VM: a decode step met several such regions per
// layer around work of about that size (SmolLM2 shape: norms, RoPE, SwiGLU of one token).
#pragma once
#include <cstdint>

namespace octet {

enum class Schedule { Static, Dynamic };

// body(i) for every i in [0, n): on the team when `parallel` (Dynamic: one i at a time, to whichever
// thread is free), else on the calling thread without entering OpenMP at all.
template <class Body>
void parallel_for(int64_t n, bool parallel, Body&& body, Schedule schedule = Schedule::Static) {
  if (!parallel || n < 2) {
    for (int64_t i = 0; i < n; ++i) body(i);
  } else if (schedule == Schedule::Static) {
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

}  // namespace octet
