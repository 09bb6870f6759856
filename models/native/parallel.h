// Shared by the native decode kernels: CPU-feature dispatch and work units spread over XLA's intra-op pool.
#ifndef XLIT_MODELS_NATIVE_PARALLEL_H_
#define XLIT_MODELS_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace xlit {

// The widest of a kernel's three builds that this CPU runs (AVX-512, AVX2 + FMA, baseline). The
// environment variable XLIT_NATIVE_ISA=avx2|generic caps it (tests run each build the CPU has this way;
// models/cpu_kernels.py rejects any other value before the library loads).
template <typename Fn>
Fn PickIsa(Fn avx512, Fn avx2, Fn generic) {
  __builtin_cpu_init();
  const char* cap = std::getenv("XLIT_NATIVE_ISA");
  const std::string limit = cap ? cap : "";
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (limit == "generic") return generic;
  if (limit != "avx2" && __builtin_cpu_supports("avx512f")) return avx512;
  return has_avx2 ? avx2 : generic;
}

template <typename Body>
struct Units {
  Body body;
  int64_t units;
  std::atomic<int64_t> next{0}, done{0};

  Units(Body b, int64_t n) : body(std::move(b)), units(n) {}

  // Claims units until none is left.
  void Run() {
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
      body(u);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// body(u) for every u in [0, units): the calling thread and helper tasks on XLA's pool claim units from
// an atomic counter; returns when all have run. The caller waits only for units that other threads have
// claimed and are running, so a helper that starts late (its thread busy with another op) finds nothing
// left; it holds its own reference to the shared state. `body` is copied into that state.
template <typename Body>
void ParallelUnits(xla::ffi::ThreadPool& pool, int64_t units, Body body) {
  if (units <= 0) return;
  auto work = std::make_shared<Units<Body>>(std::move(body), units);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), units) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();
  while (work->done.load(std::memory_order_acquire) < units) std::this_thread::yield();
}

}  // namespace xlit

#endif  // XLIT_MODELS_NATIVE_PARALLEL_H_
