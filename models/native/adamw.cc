// One AdamW update of one parameter tensor in a single pass: the XLA FFI target "xlit_adamw" (CPU).
//
//   p, g, mu, nu [N...] f32   parameter, gradient, first and second moments (any shape, same size)
//   s            [6]    f32   step scalars, computed in jitted code (train/fused_adamw.py):
//                             scale_grad (0/1), grad_norm, bias corrections 1-b1^t and 1-b2^t, step size (-lr)
//                             and the clipping norm
//   attrs: b1, one_minus_b1, b2, one_minus_b2, eps, weight_decay (float32, rounded from the config once)
//   out: p', mu', nu' (aliased to p, mu, nu: updated in place) and sumsq [1] f32 = sum of p'^2
//
// The arithmetic of optax.chain(clip_by_global_norm(c), adamw(...)) + optax.apply_updates, operation by
// operation in float32 (compiled without FMA contraction, so each product and sum rounds as XLA's do):
//   gc  = scale_grad ? (g / grad_norm) * c : g
//   mu' = (1-b1)·gc + b1·mu          nu' = (1-b2)·(gc·gc) + b2·nu
//   u   = (mu' / bc1) / (sqrt(nu' / bc2) + eps) + wd·p
//   p'  = p + step·u
// Why: XLA:CPU ran this as five passes over each tensor (clip, mu, nu, update, a norm of the result),
// reading the gradient three times; this reads p, g, mu, nu once and writes p, mu, nu once.
// Work units are 64 Ki-element blocks, spread over XLA's intra-op pool (parallel.h).
#include <cmath>
#include <cstdint>
#include <vector>

#include "models/native/parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 1 << 16;

struct Consts {
  float b1, omb1, b2, omb2, eps, wd;
  bool scale_grad;
  float gnorm, bc1, bc2, step, clip;
};

// One element: the update of p[i], mu[i], nu[i] (p'[i] in pn).
#define XLIT_ADAMW_ELEMENT(SCALE)                                                                        \
  const float gi = g[i];                                                                                 \
  const float gc = SCALE ? (gi / gnorm) * clip : gi;                                                     \
  const float m = omb1 * gc + b1 * mu[i];                                                                \
  const float v = omb2 * (gc * gc) + b2 * nu[i];                                                         \
  const float u = (m / bc1) / (__builtin_sqrtf(v / bc2) + eps) + wd * p[i];                              \
  const float pn = p[i] + step * u;                                                                      \
  muo[i] = m;                                                                                            \
  nuo[i] = v;                                                                                            \
  po[i] = pn;

// Updates [lo, hi) and returns the sum of p'^2 there (float lanes, then double).
#define XLIT_ADAMW_KERNEL(NAME)                                                                          \
  template <bool kScale>                                                                                 \
  static double NAME##_t(const Consts& c, const float* __restrict p, const float* __restrict g,          \
                         const float* __restrict mu, const float* __restrict nu, float* __restrict po,   \
                         float* __restrict muo, float* __restrict nuo, int64_t lo, int64_t hi) {         \
    const float gnorm = c.gnorm, clip = c.clip, omb1 = c.omb1, b1 = c.b1, omb2 = c.omb2, b2 = c.b2;      \
    const float bc1 = c.bc1, bc2 = c.bc2, eps = c.eps, wd = c.wd, step = c.step;                         \
    float acc[16] = {};                                                                                  \
    int64_t b = lo;                                                                                      \
    for (; b + 16 <= hi; b += 16) {                                                                      \
      for (int j = 0; j < 16; ++j) {                                                                     \
        const int64_t i = b + j;                                                                         \
        XLIT_ADAMW_ELEMENT(kScale)                                                                       \
        acc[j] += pn * pn;                                                                               \
      }                                                                                                  \
    }                                                                                                    \
    double total = 0;                                                                                    \
    for (int64_t i = b; i < hi; ++i) {                                                                   \
      XLIT_ADAMW_ELEMENT(kScale)                                                                         \
      total += double(pn) * pn;                                                                          \
    }                                                                                                    \
    for (int j = 0; j < 16; ++j) total += acc[j];                                                        \
    return total;                                                                                        \
  }                                                                                                      \
  static double NAME(const Consts& c, const float* p, const float* g, const float* mu, const float* nu,  \
                     float* po, float* muo, float* nuo, int64_t lo, int64_t hi) {                        \
    return c.scale_grad ? NAME##_t<true>(c, p, g, mu, nu, po, muo, nuo, lo, hi)                          \
                        : NAME##_t<false>(c, p, g, mu, nu, po, muo, nuo, lo, hi);                        \
  }

// The Makefile compiles this file with -ffp-contract=off (each product and sum rounds on its own, as in XLA's loops;
// no FMA) and -fno-math-errno (sqrt vectorises; the same correctly rounded square root).
#pragma GCC push_options
#pragma GCC target("avx512f")
XLIT_ADAMW_KERNEL(adamw_avx512)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2")
XLIT_ADAMW_KERNEL(adamw_avx2)
#pragma GCC pop_options
XLIT_ADAMW_KERNEL(adamw_generic)

using AdamWFn = double (*)(const Consts&, const float*, const float*, const float*, const float*, float*,
                           float*, float*, int64_t, int64_t);

ffi::Error AdamW(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> g,
                 ffi::Buffer<ffi::F32> mu, ffi::Buffer<ffi::F32> nu, ffi::Buffer<ffi::F32> s,
                 ffi::ResultBuffer<ffi::F32> po, ffi::ResultBuffer<ffi::F32> muo,
                 ffi::ResultBuffer<ffi::F32> nuo, ffi::ResultBuffer<ffi::F32> sumsq, float b1, float omb1,
                 float b2, float omb2, float eps, float weight_decay) {
  const int64_t n = p.element_count();
  if (g.element_count() != n || mu.element_count() != n || nu.element_count() != n ||
      po->element_count() != n || muo->element_count() != n || nuo->element_count() != n ||
      s.element_count() != 6 || sumsq->element_count() != 1) {
    return ffi::Error::InvalidArgument("xlit_adamw: p, g, mu, nu must have one size; s [6]; sumsq [1]");
  }
  const float* sv = s.typed_data();
  const Consts c{b1, omb1, b2, omb2, eps, weight_decay, sv[0] != 0.0f, sv[1], sv[2], sv[3], sv[4], sv[5]};
  static const AdamWFn fn = xlit::PickIsa<AdamWFn>(adamw_avx512, adamw_avx2, adamw_generic);
  const float *pp = p.typed_data(), *gp = g.typed_data(), *mp = mu.typed_data(), *np = nu.typed_data();
  float *pop = po->typed_data(), *mop = muo->typed_data(), *nop = nuo->typed_data();
  const int64_t units = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(units, 0.0);
  double* part = partial.data();
  xlit::ParallelUnits(pool, units, [=](int64_t u) {
    const int64_t lo = u * kBlock, hi = lo + kBlock < n ? lo + kBlock : n;
    part[u] = fn(c, pp, gp, mp, np, pop, mop, nop, lo, hi);
  });
  double total = 0;
  for (int64_t u = 0; u < units; ++u) total += part[u];  // fixed order: the same sum on every run
  sumsq->typed_data()[0] = static_cast<float>(total);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlitAdamW, AdamW,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // p
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mu
                                  .Arg<ffi::Buffer<ffi::F32>>()  // nu
                                  .Arg<ffi::Buffer<ffi::F32>>()  // s
                                  .Ret<ffi::Buffer<ffi::F32>>()  // p'
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mu'
                                  .Ret<ffi::Buffer<ffi::F32>>()  // nu'
                                  .Ret<ffi::Buffer<ffi::F32>>()  // sum of p'^2
                                  .Attr<float>("b1")
                                  .Attr<float>("one_minus_b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("one_minus_b2")
                                  .Attr<float>("eps")
                                  .Attr<float>("weight_decay"));
