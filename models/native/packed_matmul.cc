// y = x · W for a weight pre-packed in column panels: the XLA FFI target "xlit_packed_matmul" (CPU).
//
//   x [M, K] f32, w [NB, K, 32] f32 (panel j holds output columns 32j .. 32j+31, row k contiguous),
//   y [M, NB*32] f32 with y[m, 32j + c] = sum_k x[m, k] * w[j, k, c].
//
// Why: decoding multiplies a few activation rows by every weight once per step, so the step is a stream
// over the weights. XLA:CPU's dots (Eigen, YNNPACK) pack the weight into panels at every call and read it
// at 12-18 GB/s at 16 rows; holding it packed once (models/cpu_kernels.py) lets each call read it once, in order.
// Each (panel, block of 8 rows) keeps its 8 x 32 sums in registers over the whole of K (sums run in k
// order). Work units (a panel times a range of rows) are claimed from an atomic counter by the calling
// thread and by helper tasks on XLA's intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 32;
constexpr int64_t kRows = 8;        // rows per register block
constexpr int64_t kRowChunk = 256;  // rows per work unit

typedef float v16 __attribute__((vector_size(64), aligned(4)));

// One panel times rows [m0, m1): R = kRows rows at a time, then one at a time.
#define XLIT_PANEL_KERNEL(NAME)                                                                     \
  static void NAME(const float* x, const float* wp, float* y, int64_t K, int64_t ldy, int64_t m0, \
                   int64_t m1) {                                                                    \
    int64_t m = m0;                                                                                 \
    for (; m + kRows <= m1; m += kRows) {                                                           \
      v16 a[kRows][2] = {};                                                                         \
      const float* xr = x + m * K;                                                                  \
      for (int64_t k = 0; k < K; ++k) {                                                             \
        __builtin_prefetch(wp + (k + 8) * kPanel);                                                  \
        v16 w0 = *reinterpret_cast<const v16*>(wp + k * kPanel);                                    \
        v16 w1 = *reinterpret_cast<const v16*>(wp + k * kPanel + 16);                               \
        for (int i = 0; i < kRows; ++i) {                                                           \
          float s = xr[i * K + k];                                                                  \
          a[i][0] += s * w0;                                                                        \
          a[i][1] += s * w1;                                                                        \
        }                                                                                           \
      }                                                                                             \
      for (int i = 0; i < kRows; ++i) {                                                             \
        std::memcpy(y + (m + i) * ldy, &a[i][0], 64);                                               \
        std::memcpy(y + (m + i) * ldy + 16, &a[i][1], 64);                                          \
      }                                                                                             \
    }                                                                                               \
    for (; m < m1; ++m) {                                                                           \
      v16 a0 = {}, a1 = {};                                                                         \
      const float* xr = x + m * K;                                                                  \
      for (int64_t k = 0; k < K; ++k) {                                                             \
        float s = xr[k];                                                                            \
        a0 += s * *reinterpret_cast<const v16*>(wp + k * kPanel);                                   \
        a1 += s * *reinterpret_cast<const v16*>(wp + k * kPanel + 16);                              \
      }                                                                                             \
      std::memcpy(y + m * ldy, &a0, 64);                                                            \
      std::memcpy(y + m * ldy + 16, &a1, 64);                                                       \
    }                                                                                               \
  }

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
XLIT_PANEL_KERNEL(panel_avx512)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
XLIT_PANEL_KERNEL(panel_avx2)
#pragma GCC pop_options
XLIT_PANEL_KERNEL(panel_generic)

using PanelFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t);

PanelFn pick_kernel() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return panel_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return panel_avx2;
  return panel_generic;
}

struct Work {
  const float* x;
  const float* w;
  float* y;
  int64_t K, NB, M, chunks, units;
  PanelFn fn;
  std::atomic<int64_t> next{0}, done{0};

  // Claims units until none is left.
  void run() {
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
      const int64_t j = u / chunks, c = u % chunks;
      const int64_t m0 = c * kRowChunk, m1 = std::min(M, m0 + kRowChunk);
      fn(x, w + j * K * kPanel, y + j * kPanel, K, NB * kPanel, m0, m1);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != kPanel || xd[1] != wd[1] ||
      yd[0] != xd[0] || yd[1] != wd[0] * kPanel) {
    return ffi::Error::InvalidArgument(
        "xlit_packed_matmul: expects x [M, K], w [NB, K, 32] and y [M, NB*32] (float32)");
  }
  static const PanelFn fn = pick_kernel();
  auto work = std::make_shared<Work>();
  work->x = x.typed_data();
  work->w = w.typed_data();
  work->y = y->typed_data();
  work->M = xd[0];
  work->K = xd[1];
  work->NB = wd[0];
  work->chunks = (xd[0] + kRowChunk - 1) / kRowChunk;
  work->units = work->NB * work->chunks;
  work->fn = fn;
  if (work->units == 0) return ffi::Error::Success();
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->units) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->run(); });
  work->run();
  // Every unit has been claimed; wait for the ones other threads are still running. A helper that
  // starts after this finds nothing to claim (it holds its own reference to `work`).
  while (work->done.load(std::memory_order_acquire) < work->units) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlitPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
