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
// over the window (max subtracted, exp, divided by the sum), then the probabilities times the values,
// slot by slot. Why: in XLA each layer's [B, K, W, H] keys and values were first copied out of the stacked
// cache (a dynamic slice is a copy there), then read by the products; this reads them once, in place.
// H must be a multiple of 16 (infer/decode.py checks). Work units are (row, KV head) pairs, spread over
// XLA's intra-op pool (parallel.h).
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

typedef float v16 __attribute__((vector_size(64), aligned(4)));

struct Shape {
  int64_t B, K, G, H, L, S, W, start, layer;
  float scale;
};

// One (row b, KV head kh): logits for the G heads over the W slots, softmax, weighted sum of values.
#define XLIT_ATTN_KERNEL(NAME)                                                                         \
  static void NAME(const Shape& d, const float* q, const float* kc, const float* vc, const bool* mask,  \
                   float* out, int64_t b, int64_t kh, float* logits /* [G, W] scratch */) {            \
    const int64_t hv = d.H / 16;                                                                       \
    const size_t row = ((size_t(d.layer) * d.B + b) * d.K + kh) * d.S + d.start;                       \
    const float* kr = kc + row * d.H;                                                                  \
    const float* vr = vc + row * d.H;                                                                  \
    const float* qb = q + (size_t(b) * d.K + kh) * d.G * d.H;                                          \
    const bool* mb = mask + size_t(b) * d.W;                                                           \
    for (int64_t s = 0; s < d.W; ++s) {                                                                \
      const float* ks = kr + s * d.H;                                                                  \
      for (int64_t g = 0; g < d.G; ++g) {                                                              \
        const float* qg = qb + g * d.H;                                                                \
        v16 acc = {};                                                                                  \
        for (int64_t j = 0; j < hv; ++j)                                                               \
          acc += *reinterpret_cast<const v16*>(qg + 16 * j) * *reinterpret_cast<const v16*>(ks + 16 * j); \
        float dot = 0;                                                                                 \
        for (int i = 0; i < 16; ++i) dot += acc[i];                                                    \
        logits[g * d.W + s] = mb[s] ? dot * d.scale : kNegInf;                                         \
      }                                                                                                \
    }                                                                                                  \
    for (int64_t g = 0; g < d.G; ++g) {                                                                \
      float* lg = logits + g * d.W;                                                                    \
      float mx = kNegInf;                                                                              \
      for (int64_t s = 0; s < d.W; ++s) mx = std::max(mx, lg[s]);                                      \
      float sum = 0;                                                                                   \
      for (int64_t s = 0; s < d.W; ++s) sum += (lg[s] = std::exp(lg[s] - mx));                        \
      for (int64_t s = 0; s < d.W; ++s) lg[s] /= sum;                                                  \
    }                                                                                                  \
    float* ob = out + (size_t(b) * d.K + kh) * d.G * d.H;                                              \
    std::memset(ob, 0, sizeof(float) * d.G * d.H);                                                     \
    for (int64_t s = 0; s < d.W; ++s) {                                                                \
      const float* vs = vr + s * d.H;                                                                  \
      for (int64_t g = 0; g < d.G; ++g) {                                                              \
        const float p = logits[g * d.W + s];                                                           \
        float* og = ob + g * d.H;                                                                      \
        for (int64_t j = 0; j < hv; ++j) {                                                             \
          v16 o;                                                                                       \
          std::memcpy(&o, og + 16 * j, 64);                                                            \
          o += p * *reinterpret_cast<const v16*>(vs + 16 * j);                                         \
          std::memcpy(og + 16 * j, &o, 64);                                                            \
        }                                                                                              \
      }                                                                                                \
    }                                                                                                  \
  }

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
XLIT_ATTN_KERNEL(attn_avx512)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
XLIT_ATTN_KERNEL(attn_avx2)
#pragma GCC pop_options
XLIT_ATTN_KERNEL(attn_generic)

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
  d.L = cd[0], d.S = cd[3], d.W = md[1], d.layer = layer, d.scale = scale;
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
  static const AttnFn fn = xlit::PickIsa<AttnFn>(attn_avx512, attn_avx2, attn_generic);
  const float *qp = q.typed_data(), *kp = kc.typed_data(), *vp = vc.typed_data();
  const bool* mp = mask.typed_data();
  float* op = out->typed_data();
  // a unit: one (row, KV head) pair
  xlit::ParallelUnits(pool, d.B * d.K, [=](int64_t u) {
    thread_local std::vector<float> logits;  // [G, W] scratch, per thread
    logits.resize(d.G * d.W);
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
