// Causal attention without a cache (training, scoring), forward and backward: the XLA FFI targets
// "xlit_attention_fwd" and "xlit_attention_bwd" (CPU, float32).
//
//   q    [B, T, K, G, H]  G query heads per KV head (the caller's layout, read in place)
//   k, v [B, S, K, H]     S == T
//   mask [B, T, S] pred   which keys each query sees (same segment, not padding); the caller guarantees
//                          it is causal (no query sees a later key), so query block [a, e) reads keys [0, e)
//   fwd -> out [B, T, K, G, H], lse [B, K*G, T] (the log-sum-exp of each query's logits; -1e30 where the
//          query sees no key, whose output is then 0)
//   bwd (q, k, v, mask, out, lse, dout) -> dq, dk, dv in the inputs' layouts
//
// The sums of models/attention.py `blocked_causal_attention` (float32 logits q.k * scale, masked to -1e30,
// softmax, probabilities times values; the backward recomputes the probabilities from the log-sum-exp:
// dV = Pᵀ dO, dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O)) · scale, dQ = dS K, dK = dSᵀ Q), in blocks of kBlock
// queries that keep their [kBlock, keys] logits in a per-thread buffer, with register-blocked products
// (kRows rows x 2 vectors of sums). Why: XLA:CPU ran the blocked einsums' many small products and their
// element-wise passes as separate ops over memory; at the `tiny` preset's shapes they were ~70% of a training
// step. A work unit is one (row, query head); each head's key and value gradients go to its own buffer and
// are summed over the G heads of their KV head after, so no two units write the same memory. Rows that see
// no key (padding) give 0 here and the mean of the visible values in the einsum version; nothing reads them
// (their loss weight is 0, so their output gradient is 0 and they add nothing to dK, dV).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "models/native/parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kNegInf = -1e30f;  // models/attention.py NEG_INF
constexpr int kRows = 4;           // rows summed together in registers by each product kernel
constexpr int64_t kBlock = 32;     // queries per block (a multiple of kRows)
constexpr int64_t kColPad = 32;    // keys padded to a multiple of this (of 2 vectors in every build)

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Dims {
  int64_t B, T, S, K, G, H;
  float scale;
  int64_t Tpad() const { return RoundUp(T, kRows); }
  int64_t Spad() const { return RoundUp(S, kColPad); }
};

// Per-thread buffers: one head's queries and output gradients as [Tpad, H] rows, its keys and values as
// [H, Spad] (transposed, zero-padded), a block's logits / probabilities and their gradients [kBlock, Spad].
struct Scratch {
  std::vector<float> qp, dop, kt, vt, sc, dp, ob, delta;
  void Reserve(const Dims& d) {
    const size_t rows = d.Tpad() * d.H, cols = d.H * d.Spad(), block = kBlock * d.Spad();
    for (auto* b : {&qp, &dop}) b->assign(rows, 0.0f);
    for (auto* b : {&kt, &vt}) b->resize(cols);
    for (auto* b : {&sc, &dp}) b->resize(block);
    ob.resize(kBlock * d.H);
    delta.resize(d.Tpad());
  }
};

// dst [n, H] (rows beyond n left as they are: zero) from n rows of H floats `stride` apart.
void PackRows(const float* src, int64_t stride, int64_t n, int64_t H, float* dst) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * H, src + i * stride, H * sizeof(float));
}

// dst [H, ld] = the transpose of n rows of H floats `stride` apart, zero in columns [n, ld).
void PackTransposed(const float* src, int64_t stride, int64_t n, int64_t H, int64_t ld, float* dst) {
  for (int64_t h = 0; h < H; ++h) {
    float* d = dst + h * ld;
    for (int64_t j = 0; j < n; ++j) d[j] = src[j * stride + h];
    std::fill(d + n, d + ld, 0.0f);
  }
}

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef int i16 __attribute__((vector_size(64), aligned(4)));
typedef int i8 __attribute__((vector_size(32), aligned(4)));
typedef int i4 __attribute__((vector_size(16), aligned(4)));

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
typedef v16 V;
typedef i16 VI;
constexpr int LANES = 16;
#include "models/native/train_attention_body.inc"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
typedef v8 V;
typedef i8 VI;
constexpr int LANES = 8;
#include "models/native/train_attention_body.inc"
}  // namespace avx2
#pragma GCC pop_options

namespace generic {
typedef v4 V;
typedef i4 VI;
constexpr int LANES = 4;
#include "models/native/train_attention_body.inc"
}  // namespace generic

using ForwardFn = void (*)(const Dims&, const float*, const float*, const float*, const bool*, float*, float*,
                           int64_t, int64_t, Scratch&);
using BackwardFn = void (*)(const Dims&, const float*, const float*, const float*, const bool*, const float*,
                            const float*, const float*, float*, float*, float*, int64_t, int64_t, Scratch&);

// Reads and checks the shapes of q [B,T,K,G,H], k and v [B,S,K,H], mask [B,T,S].
ffi::Error ReadDims(const char* name, ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k,
                    ffi::Buffer<ffi::F32>& v, ffi::Buffer<ffi::PRED>& mask, float scale, Dims* d) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), md = mask.dimensions();
  if (qd.size() != 5 || kd.size() != 4 || vd.size() != 4 || md.size() != 3) {
    return ffi::Error::InvalidArgument(std::string(name) + ": bad ranks");
  }
  *d = Dims{qd[0], qd[1], kd[1], qd[2], qd[3], qd[4], scale};
  bool ok = kd[0] == d->B && kd[2] == d->K && kd[3] == d->H && d->S == d->T && d->H % 16 == 0;
  for (int i = 0; i < 4; ++i) ok &= vd[i] == kd[i];
  ok &= md[0] == d->B && md[1] == d->T && md[2] == d->S;
  if (!ok) {
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": expects q [B,T,K,G,H], k and v [B,T,K,H], mask [B,T,T], H % 16 == 0");
  }
  return ffi::Error::Success();
}

ffi::Error AttentionForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                            ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                            ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse, float scale) {
  Dims d{};
  if (auto err = ReadDims("xlit_attention_fwd", q, k, v, mask, scale, &d); err.failure()) return err;
  static const ForwardFn fn = xlit::PickIsa<ForwardFn>(avx512::Forward, avx2::Forward, generic::Forward);
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const bool* mp = mask.typed_data();
  float *op = out->typed_data(), *lp = lse->typed_data();
  const int64_t N = d.K * d.G;
  xlit::ParallelUnits(pool, d.B * N, [=](int64_t u) {
    thread_local Scratch s;
    fn(d, qp, kp, vp, mp, op, lp, u / N, u % N, s);
  });
  return ffi::Error::Success();
}

ffi::Error AttentionBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                             ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> out,
                             ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                             ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                             ffi::ResultBuffer<ffi::F32> dv, float scale) {
  Dims d{};
  if (auto err = ReadDims("xlit_attention_bwd", q, k, v, mask, scale, &d); err.failure()) return err;
  if (out.element_count() != q.element_count() || dout.element_count() != q.element_count() ||
      lse.element_count() != d.B * d.K * d.G * d.T) {
    return ffi::Error::InvalidArgument("xlit_attention_bwd: out and dout must be q's shape, lse [B,K*G,T]");
  }
  static const BackwardFn fn = xlit::PickIsa<BackwardFn>(avx512::Backward, avx2::Backward, generic::Backward);
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *op = out.typed_data(), *lp = lse.typed_data(), *gp = dout.typed_data();
  const bool* mp = mask.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  const int64_t N = d.K * d.G, H = d.H, part = d.Spad() * H;
  // each head's key and value gradients, [B, N, Spad, H] twice
  std::unique_ptr<float[]> parts(new float[2 * d.B * N * part]);
  float *dk_parts = parts.get(), *dv_parts = parts.get() + d.B * N * part;
  xlit::ParallelUnits(pool, d.B * N, [=](int64_t u) {
    thread_local Scratch s;
    fn(d, qp, kp, vp, mp, op, lp, gp, dqp, dk_parts + u * part, dv_parts + u * part, u / N, u % N, s);
  });
  // dk[b, j, kh] = the sum over the G heads of KV head kh (in head order), likewise dv
  xlit::ParallelUnits(pool, d.B * d.K, [=](int64_t u) {
    const int64_t b = u / d.K, kh = u % d.K;
    for (int64_t j = 0; j < d.S; ++j) {
      float* ko = dkp + ((b * d.S + j) * d.K + kh) * H;
      float* vo = dvp + ((b * d.S + j) * d.K + kh) * H;
      const int64_t first = (b * N + kh * d.G) * part + j * H;
      std::memcpy(ko, dk_parts + first, H * sizeof(float));
      std::memcpy(vo, dv_parts + first, H * sizeof(float));
      for (int64_t g = 1; g < d.G; ++g) {
        const float* kg = dk_parts + first + g * part;
        const float* vg = dv_parts + first + g * part;
        for (int64_t h = 0; h < H; ++h) ko[h] += kg[h], vo[h] += vg[h];
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlitAttentionForward, AttentionForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlitAttentionBackward, AttentionBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
