// y = x · W for a weight pre-packed in column panels: the XLA FFI target "xlit_packed_matmul" (CPU).
//
//   x [M, K] f32, w [NB, K, 32] f32 (panel j holds output columns 32j .. 32j+31, row k contiguous),
//   y [M, NB*32] f32 with y[m, 32j + c] = sum_k x[m, k] * w[j, k, c].
//
// Why: decoding multiplies a few activation rows by every weight once per step, so the step is a stream
// over the weights. XLA:CPU's dots (Eigen, YNNPACK) pack the weight into panels at every call and read it
// at 12-18 GB/s at 16 rows; holding it packed once (models/cpu_kernels.py) lets each call read it once, in order.
// Each (panel, block of R rows) keeps its R x 32 sums in registers over the whole of K (sums run in k
// order, so every build gives the same numbers up to the multiply-adds' rounding, whatever its block
// shape). The vectors and R follow the register file of the ISA a build targets: AVX-512 sums 8 rows x
// 32 columns in 16 zmm registers; AVX2 (16 ymm) sums 3 rows x 32 columns (12 accumulators, 4 weight
// vectors, one broadcast), and the baseline SSE2 build (16 xmm) takes a panel in passes of 2 vectors'
// columns for 6 rows. Vectors wider than the ISA's (the first version's 64-byte vectors in every build)
// made GCC spill every sum to the stack: 1.4-2.2 GFLOP/s on an AVX2 machine, ~50x slower than XLA's dot.
// A panel is read from memory by its first row block and from the core's caches by the others, so while
// a thread works on its panel it prefetches the one it will likely take next (`ahead`): one 64-byte line
// per k step over its first blocks. Work units (a panel times a range of rows) are spread over XLA's
// intra-op pool (parallel.h).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "models/native/parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 32;
constexpr int64_t kRowChunk = 256;  // rows per work unit

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));

// RR rows (a constant) from row m times columns [0, NV*LANES) of the pass at wq / yq; while summing, it
// prefetches `pre_n` lines of 64 bytes from `pre`, `pre_step` per k step.
#define XLIT_PANEL_BLOCK(V, LANES, NV, RR)                                               \
  {                                                                                      \
    V a[RR][NV] = {};                                                                    \
    const float* xr = x + m * K;                                                         \
    for (int64_t k = 0; k < K; ++k) {                                                    \
      if (k * pre_step < pre_n) {                                                        \
        __builtin_prefetch(pre + k * pre_step * 64);                                     \
        if (pre_step > 1) __builtin_prefetch(pre + (k * pre_step + 1) * 64);             \
      }                                                                                  \
      V w[NV];                                                                           \
      for (int v = 0; v < NV; ++v) w[v] = *reinterpret_cast<const V*>(wq + k * kPanel + v * LANES); \
      for (int i = 0; i < RR; ++i) {                                                     \
        const float s = xr[i * K + k];                                                   \
        for (int v = 0; v < NV; ++v) a[i][v] += s * w[v];                                \
      }                                                                                  \
    }                                                                                    \
    for (int i = 0; i < RR; ++i)                                                         \
      for (int v = 0; v < NV; ++v) std::memcpy(yq + (m + i) * ldy + v * LANES, &a[i][v], LANES * 4); \
    advance_prefetch();                                                                   \
  }

// One panel times rows [m0, m1), in 32 / (NV * LANES) column passes of R rows at a time; the last
// rows (fewer than R) as one smaller block. `ahead` (or null): the panel to prefetch, K x 32 floats,
// spread over the first two blocks (or all of it during the first, when there is only one).
#define XLIT_PANEL_KERNEL(NAME, V, LANES, NV, R)                                                    \
  static void NAME(const float* x, const float* wp, float* y, int64_t K, int64_t ldy, int64_t m0, \
                   int64_t m1, const float* ahead) {                                                \
    static_assert(kPanel % ((NV) * (LANES)) == 0 && (R) >= 1 && (R) <= 8, "panel kernel shape");    \
    const int64_t lines = ahead ? K * kPanel * 4 / 64 : 0;                                          \
    const int64_t blocks = (kPanel / ((NV) * (LANES))) * (((m1 - m0) + (R) - 1) / (R));             \
    const int64_t pre_step = blocks > 1 ? 1 : 2;                                                    \
    const char* pre = reinterpret_cast<const char*>(ahead);                                         \
    int64_t pre_n = lines;                                                                          \
    auto advance_prefetch = [&] {                                                                    \
      const int64_t done = std::min(pre_n, K * pre_step);                                           \
      pre += done * 64;                                                                             \
      pre_n -= done;                                                                                \
    };                                                                                              \
    for (int64_t c = 0; c < kPanel; c += (NV) * (LANES)) {                                          \
      const float* wq = wp + c;                                                                     \
      float* yq = y + c;                                                                            \
      int64_t m = m0;                                                                               \
      for (; m + (R) <= m1; m += (R)) XLIT_PANEL_BLOCK(V, LANES, NV, R)                             \
      switch (m1 - m) {                                                                             \
        case 7: XLIT_PANEL_BLOCK(V, LANES, NV, 7) break;                                              \
        case 6: XLIT_PANEL_BLOCK(V, LANES, NV, 6) break;                                              \
        case 5: XLIT_PANEL_BLOCK(V, LANES, NV, 5) break;                                              \
        case 4: XLIT_PANEL_BLOCK(V, LANES, NV, 4) break;                                              \
        case 3: XLIT_PANEL_BLOCK(V, LANES, NV, 3) break;                                              \
        case 2: XLIT_PANEL_BLOCK(V, LANES, NV, 2) break;                                              \
        case 1: XLIT_PANEL_BLOCK(V, LANES, NV, 1) break;                                            \
        default: break;                                                                             \
      }                                                                                             \
    }                                                                                               \
  }

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
XLIT_PANEL_KERNEL(panel_avx512, v16, 16, 2, 8)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
XLIT_PANEL_KERNEL(panel_avx2, v8, 8, 4, 3)
#pragma GCC pop_options
XLIT_PANEL_KERNEL(panel_generic, v4, 4, 2, 6)

using PanelFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                        const float*);

ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != kPanel || xd[1] != wd[1] ||
      yd[0] != xd[0] || yd[1] != wd[0] * kPanel) {
    return ffi::Error::InvalidArgument(
        "xlit_packed_matmul: expects x [M, K], w [NB, K, 32] and y [M, NB*32] (float32)");
  }
  static const PanelFn fn = xlit::PickIsa<PanelFn>(panel_avx512, panel_avx2, panel_generic);
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  const int64_t M = xd[0], K = xd[1], NB = wd[0], chunks = (M + kRowChunk - 1) / kRowChunk;
  // a unit: one panel times one chunk of rows. Units are claimed in turn, so a thread's next one is
  // about `threads` units on; its panel is what the thread prefetches (none while that unit is still in
  // the same panel, which the caches hold, or past the last panel).
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  xlit::ParallelUnits(pool, NB * chunks, [=](int64_t u) {
    const int64_t j = u / chunks, m0 = (u % chunks) * kRowChunk, jn = (u + threads) / chunks;
    const float* ahead = (jn != j && jn < NB) ? wp + jn * K * kPanel : nullptr;
    fn(xp, wp + j * K * kPanel, yp + j * kPanel, K, NB * kPanel, m0, std::min(M, m0 + kRowChunk), ahead);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlitPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
