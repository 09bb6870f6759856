// y = x · W for a weight pre-packed in column panels: the XLA FFI target "xlit_packed_matmul" (CPU).
//
//   x [M, K] f32, w [NB, K, 32] f32 (panel j holds output columns 32j .. 32j+31, row k contiguous),
//   y [M, NB*32] f32 with y[m, 32j + c] = sum_k x[m, k] * w[j, k, c].
//
// Why: decoding multiplies a few activation rows by every weight once per step, so the step is a stream
// over the weights. XLA:CPU's dots (Eigen, YNNPACK) pack the weight into panels at every call and read it
// at 12-18 GB/s at 16 rows; holding it packed once (models/cpu_kernels.py) lets each call read it once, in order.
// Each (panel, block of 8 rows) keeps its 8 x 32 sums in registers over the whole of K (sums run in k
// order). Work units (a panel times a range of rows) are spread over XLA's intra-op pool (parallel.h).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "models/native/parallel.h"
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
  // a unit: one panel times one chunk of rows
  xlit::ParallelUnits(pool, NB * chunks, [=](int64_t u) {
    const int64_t j = u / chunks, m0 = (u % chunks) * kRowChunk;
    fn(xp, wp + j * K * kPanel, yp + j * kPanel, K, NB * kPanel, m0, std::min(M, m0 + kRowChunk));
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
