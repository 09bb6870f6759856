"""Native CPU kernels, called from jitted code through XLA's FFI (models/native/*.cc, built into libxlit_cpu.so
by `make native`): two for decoding, below; the no-cache causal attention's forward and backward
(`causal_attention_fwd` / `_bwd`, models/native/train_attention.cc, called by models/attention.py for
`LlamaConfig.attention="native"`); and the trainer's one-pass AdamW update (`ADAMW_TARGET`,
models/native/adamw.cc, called by train/fused_adamw.py).

A decode step multiplies a few activation rows by every weight once, so it is a stream over the weights
(and the KV cache). XLA:CPU's dots repack the weight at every call and read it at 12-18 GB/s at 16 rows on
a machine whose memory streams at ~40 GB/s, and each layer's keys and values are first copied out of the
stacked cache (bench/README.md, "Decode"). Two kernels read each byte once, in order:

- `packed_dense`: `pack` lays a weight out once as [NB, K, 32] (panel j = output columns 32j..32j+31, each
  row k contiguous); `xlit_packed_matmul` keeps the sums of a block of rows and a panel in registers over all
  of K (8 x 32 on AVX-512, 3 x 32 on AVX2) and prefetches the panel it will take next.
- `cache_attention`: `xlit_decode_attention` computes one query per row over a window of the layer-stacked
  cache in place (the sums of `models.modules._decode_attention`).

float32 on one CPU device (`infer.decode.DecodeKernels.NATIVE`, chosen by `Decoder`). The sums are the same
products in another order, so results match XLA's to float32 rounding, not bit for bit; the decode tests
compare generated ids with transformers and with the XLA path.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from models.dense import dense_axes, out_first_axes, to_out_first

PANEL = 32
LIBRARY = Path(__file__).parent / "native" / "libxlit_cpu.so"
TARGET = "xlit_packed_matmul"
ATTENTION_TARGET = "xlit_decode_attention"
ADAMW_TARGET = "xlit_adamw"
ATTENTION_FWD_TARGET = "xlit_attention_fwd"
ATTENTION_BWD_TARGET = "xlit_attention_bwd"
# each FFI target and the handler symbol models/native/*.cc exports for it
SYMBOLS = {
    TARGET: "XlitPackedMatmul",
    ATTENTION_TARGET: "XlitDecodeAttention",
    ADAMW_TARGET: "XlitAdamW",
    ATTENTION_FWD_TARGET: "XlitAttentionForward",
    ATTENTION_BWD_TARGET: "XlitAttentionBackward",
}
NOT_BUILT = f"{LIBRARY} is not built (`make native`, needs g++)"  # why a native path cannot run
ISA_ENV = "XLIT_NATIVE_ISA"  # caps the build the kernels run (models/native/parallel.h PickIsa)
ISA_CAPS = ("", "avx2", "generic")


@functools.cache
def _register() -> bool:
    """Loads the native library and registers its FFI targets once; False if the library is not built."""
    if not LIBRARY.is_file():
        return False
    cap = os.environ.get(ISA_ENV, "")
    if cap not in ISA_CAPS:
        raise ValueError(
            f"environment variable {ISA_ENV}={cap!r}: expected one of {', '.join(ISA_CAPS[1:])} or unset"
        )
    lib = ctypes.CDLL(str(LIBRARY))
    try:
        handlers = {target: getattr(lib, symbol) for target, symbol in SYMBOLS.items()}
    except AttributeError as e:  # built from older sources
        raise RuntimeError(f"{LIBRARY} is out of date ({e}): rebuild it with `make native`") from None
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    return True


def require() -> None:
    """Raises RuntimeError naming the missing library (and how to build it) unless the kernels are registered."""
    if not _register():
        raise RuntimeError(f"{LIBRARY} is missing: run `make native` (needs g++) to build it")


def built() -> bool:
    """Whether models/native/libxlit_cpu.so exists (`make native`) and its kernels are registered."""
    return _register()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
    """A weight as [NB, K, 32] panels; `out_shape` is its kept (output) axes, K the product of the rest."""

    panels: jax.Array
    out_shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})


def pack(w_t: jax.Array, n_out_axes: int) -> Packed:
    """A weight held output axes first (`models.dense.to_out_first`) as panels; the output columns are
    zero-padded to a multiple of 32."""
    out_shape = tuple(w_t.shape[:n_out_axes])
    n, k = math.prod(out_shape), math.prod(w_t.shape[n_out_axes:])
    w2 = w_t.reshape(n, k).astype(jnp.float32)
    pad = -n % PANEL
    if pad:
        w2 = jnp.pad(w2, ((0, pad), (0, 0)))
    return Packed(w2.reshape(-1, PANEL, k).transpose(0, 2, 1), out_shape)


def pack_weight(eq: str, w: jax.Array) -> Packed:
    """Projection eq's weight w, as the model stores it, packed (`pack` of `models.dense.to_out_first`)."""
    xs, _, _ = dense_axes(eq)
    n_out = sum(c not in xs for c in out_first_axes(eq))
    return pack(to_out_first(eq, w), n_out)


def packed_matmul(x2: jax.Array, panels: jax.Array) -> jax.Array:
    """x2 [M, K] float32 times packed panels [NB, K, 32] -> [M, NB*32] float32 (the native kernel)."""
    require()
    m = x2.shape[0]
    out = jax.ShapeDtypeStruct((m, panels.shape[0] * PANEL), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(x2, panels)


def packed_dense(eq: str, x: jax.Array, w: Packed) -> jax.Array:
    """`jnp.einsum(eq, x, w)` (float32 result) for eq's weight packed as `pack(to_out_first(eq, w), ...)`."""
    xs, _, out = dense_axes(eq)
    ws = out_first_axes(eq)
    contracted = [c for c in ws if c in xs]
    kept_x = [c for c in xs if c not in contracted]
    kept_w = [c for c in ws if c not in xs]
    x = x.transpose([xs.index(c) for c in kept_x + contracted])
    lead = x.shape[: len(kept_x)]
    x2 = x.reshape(math.prod(lead), -1).astype(jnp.float32)
    n = math.prod(w.out_shape)
    y = packed_matmul(x2, w.panels)[:, :n].reshape(*lead, *w.out_shape)
    got = kept_x + kept_w
    return y.transpose([got.index(c) for c in out])


def cache_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    layer: int,
    start: jax.Array,
    mask: jax.Array,
    scale: float,
) -> jax.Array:
    """One decode step's attention over layer `layer` of the stacked cache, read in place (the native kernel):
    q [B,K,G,H] f32, caches [L,B,K,S,H] f32, mask [B,W] over the W slots from `start` -> [B,K,G,H] f32."""
    require()
    out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    return jax.ffi.ffi_call(ATTENTION_TARGET, out, vmap_method="sequential")(
        q,
        k_cache,
        v_cache,
        mask,
        jnp.asarray(start, jnp.int32),
        layer=np.int64(layer),
        scale=np.float32(scale),
    )


def causal_attention_fwd(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float
) -> tuple[jax.Array, jax.Array]:
    """Causal attention without a cache (the native kernel): q [B,T,K,G,H] f32, k, v [B,T,K,H] f32, mask
    [B,T,T] bool (causal: no query sees a later key) -> (out [B,T,K,G,H] f32, lse [B,K*G,T] f32)."""
    require()
    b, t, kh, g, _ = q.shape
    shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, kh * g, t), jnp.float32))
    return jax.ffi.ffi_call(ATTENTION_FWD_TARGET, shapes, vmap_method="sequential")(
        q, k, v, mask, scale=np.float32(scale)
    )


def causal_attention_bwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    d_out: jax.Array,
    scale: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The gradients (dq, dk, dv) of `causal_attention_fwd` for the output gradient d_out (the native kernel)."""
    require()
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    return jax.ffi.ffi_call(ATTENTION_BWD_TARGET, shapes, vmap_method="sequential")(
        q, k, v, mask, out, lse, d_out, scale=np.float32(scale)
    )
