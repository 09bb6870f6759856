// One decode step's attention read straight from the layer-stacked KV cache: the XLA FFI target
// "xlit_decode_attention" (CPU).
//
//   q     [B, K, G, H] f32   one query per row, G query heads per KV head
//   kc/vc [L, B, K, S, H] f32  the whole cache (already holding this step's keys and values)
//   mask  [B, W] pred        which of the W cache slots from `start` the row may see
//   start []  s32            first slot of the window; attrs: layer (which of the L), scale
//   out   [B, K, G, H] f32
//
// The sums of models/modules.py `_decode_attention`: float32 logits q.k * scale, masked to -1e30, softmax
// over the window (max subtracted, exp, divided by the sum; the exp on vectors, models/native/vec_exp.inc),
// then the probabilities times the values, slot by slot. Why: in XLA each layer's [B, K, W, H] keys and
// values were first copied out of the stacked cache (a dynamic slice is a copy there), then read by the
// products; this reads them once, in place.
// H must be a multiple of 16 (infer/decode.py checks). Work units are (row, KV head) pairs, spread over
// XLA's intra-op pool (parallel.h). Each build uses its ISA's vectors (see XLIT_ATTN_KERNEL); on an AVX2
// machine (2 cores) this took 30 layers of a batch-16 step over 128 slots from 27 ms (one dot product and
// its horizontal sum per slot, 64-byte vectors, values added into memory) to 6.5 ms; XLA's einsums: 46 ms.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "models/native/parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kNegInf = -1e30f;  // models/attention.py NEG_INF
// a scratch row's padding past the window: below every logit, and exp(kPad - max) is exactly 0 even when
// every slot is masked (max = kNegInf), so a row's softmax is over its W slots alone, as before
constexpr float kPad = -3.0e38f;

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef int i16 __attribute__((vector_size(64)));
typedef int i8 __attribute__((vector_size(32)));
typedef int i4 __attribute__((vector_size(16)));

struct Shape {
  int64_t B, K, G, H, L, S, W, Wp, start, layer;  // Wp: W rounded up to 16, a scratch row's length
  float scale;
};

// Transposed sums: a[0..N) (N vectors of N lanes) -> a[0] with lane i = the sum of a[i]'s lanes, by
// log2(N) rounds of pairwise shuffles and adds (each round halves the vectors and doubles the lanes summed).
#define XLIT_FOLD(x, y, LO, HI) (__builtin_shuffle(x, y, LO) + __builtin_shuffle(x, y, HI))
static const i4 kLo4a = {0, 4, 2, 6}, kHi4a = {1, 5, 3, 7}, kLo4b = {0, 1, 4, 5}, kHi4b = {2, 3, 6, 7};
static const i8 kLo8a = {0, 8, 2, 10, 4, 12, 6, 14}, kHi8a = {1, 9, 3, 11, 5, 13, 7, 15};
static const i8 kLo8b = {0, 1, 8, 9, 4, 5, 12, 13}, kHi8b = {2, 3, 10, 11, 6, 7, 14, 15};
static const i8 kLo8c = {0, 1, 2, 3, 8, 9, 10, 11}, kHi8c = {4, 5, 6, 7, 12, 13, 14, 15};
static const i16 kLo16a = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
static const i16 kHi16a = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
static const i16 kLo16b = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
static const i16 kHi16b = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
static const i16 kLo16c = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
static const i16 kHi16c = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
static const i16 kLo16d = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
static const i16 kHi16d = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
#define XLIT_ROUND(a, n, LO, HI) \
  for (int i = 0; i < (n); ++i) a[i] = XLIT_FOLD(a[2 * i], a[2 * i + 1], LO, HI);
#define XLIT_HSUM4(a) XLIT_ROUND(a, 2, kLo4a, kHi4a) XLIT_ROUND(a, 1, kLo4b, kHi4b)
#define XLIT_HSUM8(a) \
  XLIT_ROUND(a, 4, kLo8a, kHi8a) XLIT_ROUND(a, 2, kLo8b, kHi8b) XLIT_ROUND(a, 1, kLo8c, kHi8c)
#define XLIT_HSUM16(a)                                                                                  \
  XLIT_ROUND(a, 8, kLo16a, kHi16a) XLIT_ROUND(a, 4, kLo16b, kHi16b) XLIT_ROUND(a, 2, kLo16c, kHi16c) \
  XLIT_ROUND(a, 1, kLo16d, kHi16d)

constexpr int kValueVectors = 4;  // value vectors summed in registers per pass over the window

// One (row b, KV head kh): logits for the G heads over the W slots, softmax, weighted sum of values.
// Logits: LANES slots at a time, each slot's H products summed lane-wise in its own vector, then the LANES
// vectors transposed-summed into one vector of LANES logits. Values: per head, kValueVectors vectors of
// the output summed over the window in registers. V is the vector of the build's ISA (LANES floats).
#define XLIT_ATTN_KERNEL(NAME, V, LANES, HSUM)                                                          \
  static void NAME(const Shape& d, const float* q, const float* kc, const float* vc, const bool* mask,  \
                   float* out, int64_t b, int64_t kh, float* logits /* [G, Wp] scratch */) {            \
    const int64_t hv = d.H / (LANES);                                                                  \
    const size_t row = ((size_t(d.layer) * d.B + b) * d.K + kh) * d.S + d.start;                       \
    const float* kr = kc + row * d.H;                                                                  \
    const float* vr = vc + row * d.H;                                                                  \
    const float* qb = q + (size_t(b) * d.K + kh) * d.G * d.H;                                          \
    const bool* mb = mask + size_t(b) * d.W;                                                           \
    int64_t s = 0;                                                                                     \
    for (; s + (LANES) <= d.W; s += (LANES)) {                                                         \
      for (int64_t g = 0; g < d.G; ++g) {                                                              \
        const float* qg = qb + g * d.H;                                                                \
        V acc[LANES] = {};                                                                             \
        for (int64_t j = 0; j < hv; ++j) {                                                             \
          const V qv = *reinterpret_cast<const V*>(qg + (LANES) * j);                                  \
          for (int i = 0; i < (LANES); ++i)                                                            \
            acc[i] += qv * *reinterpret_cast<const V*>(kr + (s + i) * d.H + (LANES) * j);              \
        }                                                                                              \
        HSUM(acc)                                                                                      \
        float dots[LANES];                                                                             \
        std::memcpy(dots, &acc[0], sizeof(dots));                                                      \
        for (int i = 0; i < (LANES); ++i)                                                              \
          logits[g * d.Wp + s + i] = mb[s + i] ? dots[i] * d.scale : kNegInf;                           \
      }                                                                                                \
    }                                                                                                  \
    for (; s < d.W; ++s) {                                                                             \
      const float* ks = kr + s * d.H;                                                                  \
      for (int64_t g = 0; g < d.G; ++g) {                                                              \
        const float* qg = qb + g * d.H;                                                                \
        V acc = {};                                                                                    \
        for (int64_t j = 0; j < hv; ++j)                                                               \
          acc += *reinterpret_cast<const V*>(qg + (LANES) * j) * *reinterpret_cast<const V*>(ks + (LANES) * j); \
        float dot = 0;                                                                                 \
        for (int i = 0; i < (LANES); ++i) dot += acc[i];                                               \
        logits[g * d.Wp + s] = mb[s] ? dot * d.scale : kNegInf;                                         \
      }                                                                                                \
    }                                                                                                  \
    /* softmax, (LANES) slots at a time over the row padded to Wp with kPad, whose exp is exactly 0 */   \
    for (int64_t g = 0; g < d.G; ++g) {                                                                \
      float* lg = logits + g * d.Wp;                                                                   \
      std::fill(lg + d.W, lg + d.Wp, kPad);                                                            \
      V mv = V{} + kNegInf;                                                                            \
      for (int64_t t = 0; t < d.Wp; t += (LANES)) {                                                    \
        const V x = *reinterpret_cast<const V*>(lg + t);                                               \
        mv = x > mv ? x : mv;                                                                          \
      }                                                                                                \
      float mx = kNegInf;                                                                              \
      for (int i = 0; i < (LANES); ++i) mx = std::max(mx, mv[i]);                                      \
      V sv = {};                                                                                       \
      for (int64_t t = 0; t < d.Wp; t += (LANES)) {                                                    \
        const V e = Exp(*reinterpret_cast<const V*>(lg + t) - mx);                                     \
        *reinterpret_cast<V*>(lg + t) = e;                                                             \
        sv += e;                                                                                       \
      }                                                                                                \
      float sum = 0;                                                                                   \
      for (int i = 0; i < (LANES); ++i) sum += sv[i];                                                  \
      for (int64_t t = 0; t < d.Wp; t += (LANES))                                                      \
        *reinterpret_cast<V*>(lg + t) = *reinterpret_cast<const V*>(lg + t) / sum;                     \
    }                                                                                                  \
    float* ob = out + (size_t(b) * d.K + kh) * d.G * d.H;                                              \
    for (int64_t g = 0; g < d.G; ++g) {                                                                \
      const float* lg = logits + g * d.Wp;                                                              \
      float* og = ob + g * d.H;                                                                        \
      int64_t j = 0;                                                                                   \
      for (; j + kValueVectors <= hv; j += kValueVectors) {                                            \
        V o[kValueVectors] = {};                                                                       \
        for (int64_t t = 0; t < d.W; ++t) {                                                            \
          const float pr = lg[t];                                                                      \
          const float* vs = vr + t * d.H + (LANES) * j;                                                \
          for (int u = 0; u < kValueVectors; ++u)                                                      \
            o[u] += pr * *reinterpret_cast<const V*>(vs + (LANES) * u);                                \
        }                                                                                              \
        std::memcpy(og + (LANES) * j, o, sizeof(o));                                                   \
      }                                                                                                \
      for (; j < hv; ++j) {                                                                            \
        V o = {};                                                                                      \
        for (int64_t t = 0; t < d.W; ++t) o += lg[t] * *reinterpret_cast<const V*>(vr + t * d.H + (LANES) * j); \
        std::memcpy(og + (LANES) * j, &o, sizeof(o));                                                  \
      }                                                                                                \
    }                                                                                                  \
  }

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
typedef v16 V;
typedef i16 VI;
#include "models/native/vec_exp.inc"
XLIT_ATTN_KERNEL(attn, V, 16, XLIT_HSUM16)
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
typedef v8 V;
typedef i8 VI;
#include "models/native/vec_exp.inc"
XLIT_ATTN_KERNEL(attn, V, 8, XLIT_HSUM8)
}  // namespace avx2
#pragma GCC pop_options
namespace generic {
typedef v4 V;
typedef i4 VI;
#include "models/native/vec_exp.inc"
XLIT_ATTN_KERNEL(attn, V, 4, XLIT_HSUM4)
}  // namespace generic

using AttnFn = void (*)(const Shape&, const float*, const float*, const float*, const bool*, float*, int64_t,
                        int64_t, float*);

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kc,
                           ffi::Buffer<ffi::F32> vc, ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::S32> start,
                           ffi::ResultBuffer<ffi::F32> out, int64_t layer, float scale) {
  const auto qd = q.dimensions(), cd = kc.dimensions(), md = mask.dimensions();
  Shape d{};
  if (qd.size() != 4 || cd.size() != 5 || md.size() != 2 || start.element_count() != 1 ||
      vc.dimensions().size() != 5) {
    return ffi::Error::InvalidArgument("xlit_decode_attention: bad ranks");
  }
  d.B = qd[0], d.K = qd[1], d.G = qd[2], d.H = qd[3];
  d.L = cd[0], d.S = cd[3], d.W = md[1], d.Wp = (d.W + 15) / 16 * 16, d.layer = layer, d.scale = scale;
  d.start = start.typed_data()[0];
  bool same_cache = true;
  for (int i = 0; i < 5; ++i) same_cache &= cd[i] == vc.dimensions()[i];
  if (!same_cache || cd[1] != d.B || cd[2] != d.K || cd[4] != d.H || md[0] != d.B || d.H % 16 != 0 ||
      layer < 0 || layer >= d.L || d.start < 0 || d.start + d.W > d.S) {
    return ffi::Error::InvalidArgument(
        "xlit_decode_attention: expects q [B,K,G,H], caches [L,B,K,S,H], mask [B,W], H % 16 == 0, "
        "0 <= layer < L, 0 <= start <= S - W");
  }
  if (d.W == 0) return ffi::Error::Success();
  static const AttnFn fn = xlit::PickIsa<AttnFn>(avx512::attn, avx2::attn, generic::attn);
  const float *qp = q.typed_data(), *kp = kc.typed_data(), *vp = vc.typed_data();
  const bool* mp = mask.typed_data();
  float* op = out->typed_data();
  // a unit: one (row, KV head) pair
  xlit::ParallelUnits(pool, d.B * d.K, [=](int64_t u) {
    thread_local std::vector<float> logits;  // [G, Wp] scratch, per thread
    logits.resize(d.G * d.Wp);
    fn(d, qp, kp, vp, mp, op, u / d.K, u % d.K, logits.data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlitDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<float>("scale"));
