"""The LLaMA decoder as one nnx Module with layer-stacked weights, scanned over layers.

Axis letters (einsum legend): B batch, T query length, S key/value length, D model width, N query heads,
K key/value heads, G query heads per KV head (N = K*G), H head dim, F MLP width, V vocabulary, L layers,
R LoRA rank.

Inputs are explicit: `tokens [B,T]`, `positions [B,T]` (RoPE positions, HF convention) and
`segment_ids [B,T]` (0 = padding; a query attends only to earlier keys of the same segment, which gives
causal masking, padding masks and packed examples without cross-attention). The KV cache is a pytree in
and out (see `init_cache`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import NEG_INF, blocked_causal_attention, native_causal_attention
from models.config import LlamaConfig, RopeScaling
from models.cpu_kernels import Packed, cache_attention, packed_dense
from models.dense import dense, dense_out_first
from models.lora import PROJ_EQ, LoRAConfig, LoRAParam, init_lora, lora_delta
from models.sharding import constrain

# Stacked per-layer weights: name -> (shape builder, logical axes). The leading axis is L.
_LAYER_WEIGHTS = {
    "attn_norm": (lambda c: (c.hidden_size,), ("norm",)),
    "q": (lambda c: (c.hidden_size, c.num_heads, c.head_dim), ("embed", "q_heads", "head_dim")),
    "k": (lambda c: (c.hidden_size, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim")),
    "v": (lambda c: (c.hidden_size, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim")),
    "o": (lambda c: (c.num_heads, c.head_dim, c.hidden_size), ("q_heads", "head_dim", "embed")),
    "mlp_norm": (lambda c: (c.hidden_size,), ("norm",)),
    "gate": (lambda c: (c.hidden_size, c.intermediate_size), ("embed", "mlp")),
    "up": (lambda c: (c.hidden_size, c.intermediate_size), ("embed", "mlp")),
    "down": (lambda c: (c.intermediate_size, c.hidden_size), ("mlp", "embed")),
}
LAYER_WEIGHT_NAMES = tuple(_LAYER_WEIGHTS)


def layer_weight_shape(cfg: LlamaConfig, name: str) -> tuple[int, ...]:
    return (cfg.num_layers, *_LAYER_WEIGHTS[name][0](cfg))


class Llama(nnx.Module):
    """LLaMA-architecture causal LM (LLaMA-2, LLaMA-3.x, TowerBase, SmolLM2). Optionally with LoRA adapters."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
        self.cfg = cfg
        self.lora_cfg = lora
        pdt = cfg.weight_dtype
        init = jax.nn.initializers.normal(0.02)
        key = rngs.params()

        def param(name, shape, axes, k, fill=None):
            value = jnp.full(shape, fill, pdt) if fill is not None else init(k, shape, pdt)
            return nnx.Param(value, logical_axes=axes)

        keys = iter(jax.random.split(key, len(_LAYER_WEIGHTS) + 4))
        self.embed = param("embed", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), next(keys))
        self.layers = nnx.Dict()
        for name, (shape_fn, axes) in _LAYER_WEIGHTS.items():
            fill = 1.0 if name.endswith("norm") else None
            self.layers[name] = param(
                name, (cfg.num_layers, *shape_fn(cfg)), ("layers", *axes), next(keys), fill
            )
        self.final_norm = param("final_norm", (cfg.hidden_size,), ("norm",), next(keys), 1.0)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else param("lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), next(keys))
        )
        self.lora = nnx.Dict()
        if lora is not None:
            for name, (value, axes) in init_lora(cfg, lora, next(keys)).items():
                self.lora[name] = LoRAParam(value, logical_axes=axes)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        cache: dict[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        """Returns (logits [B,T,V] float32, updated cache or None)."""
        return forward(self, tokens, positions, segment_ids, cache)


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype: Any = None) -> dict[str, jax.Array]:
    """An empty KV cache: k/v [L,B,K,S,H], per-slot segment ids [B,S] (0 = empty) and the write index.

    Heads before slots: the attention einsums then read each (row, head) block of keys/values as one
    contiguous [S,H] matrix, with no per-step transpose of the cache (measured on CPU: attention over a
    512-slot cache 2-3x faster than with [L,B,S,K,H]).
    """
    dtype = dtype or cfg.compute_dtype
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    names = ("layers", "batch", "act_kv_heads", "length", None)  # sharded like k/v activations under a mesh
    return {
        "k": constrain(jnp.zeros(shape, dtype), names),
        "v": constrain(jnp.zeros(shape, dtype), names),
        "segment_ids": jnp.zeros((batch, max_len), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """HF LlamaRMSNorm: normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """The H/2 rotary inverse frequencies (float32), with LLaMA-3's `llama3` scaling when given.

    LLaMA-3.x scaling, by the wavelength 2*pi/f (in positions) of each frequency f, with C the original
    context length: w < C / high_freq_factor keeps f; w > C / low_freq_factor divides it by `factor`; in
    between, f is interpolated between f / factor and f with weight s = (C / w - low_freq_factor) /
    (high_freq_factor - low_freq_factor) on f. Computed in float32 in the order transformers uses, so the
    frequencies are bit-for-bit (or within an ulp of) its own.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    context = scaling.original_max_position_embeddings
    short_wavelen = context / scaling.high_freq_factor  # shorter wavelengths: frequency kept
    long_wavelen = context / scaling.low_freq_factor  # longer wavelengths: frequency divided by `factor`
    wavelen = 2 * math.pi / inv_freq
    divided = jnp.where(wavelen > long_wavelen, inv_freq / scaling.factor, inv_freq)
    weight = (context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - weight) * divided / scaling.factor + weight * divided
    between = (wavelen >= short_wavelen) & (wavelen <= long_wavelen)
    return jnp.where(between, blended, divided)


def rope(x: jax.Array, positions: jax.Array, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """Rotary embedding, HF convention (rotate_half over the two halves of H). x [B,T,*,H].

    `scaling`: LLaMA-3.x frequency scaling (see rope_inv_freq); None = plain RoPE.
    """
    h = x.shape[-1]
    inv_freq = rope_inv_freq(h, theta, scaling)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B,T,H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B,T,1,H]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = x[..., : h // 2], x[..., h // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def _proj(x, w, lora_ab, scale, eq, out_first=False):
    if isinstance(w, Packed):
        y = packed_dense(eq, x, w).astype(x.dtype)
    else:
        y = dense_out_first(eq, x, w) if out_first else dense(eq, x, w)
    if lora_ab is not None:
        y = y + lora_delta(x, *lora_ab, eq, scale).astype(y.dtype)
    return y


def _layer(
    cfg: LlamaConfig,
    lora_scale: float,
    x,
    w,
    lw,
    positions,
    q_seg,
    k_seg,
    kv,
    index,
    window=None,
    out_first: bool = False,
    native: bool = False,
):
    """One decoder block. x [B,T,D]; kv = (k_cache [L,B,K,S,H], v_cache, layer index) or None (no cache).

    native: one-token steps with a cache (layer index a Python int) attend with `cpu_kernels.cache_attention`,
    reading the cache in place (decoding on CPU, `infer.decode.DecodeKernels.NATIVE`).

    out_first: the projection weights in w are held as `models.dense.to_out_first` gives them, or packed from
    that layout (`models.cpu_kernels.Packed`, decoding on CPU).

    window = (start, W) with a cache: attention reads only the W cache entries from `start` (W static; the
    caller guarantees every entry the queries may see lies in it), so a step's attention costs W, not S."""
    dt = cfg.compute_dtype
    w = {k: v if isinstance(v, Packed) else v.astype(dt) for k, v in w.items()}
    lw = {k: v.astype(dt) for k, v in lw.items()}

    def ab(name):
        return (lw[f"{name}_a"], lw[f"{name}_b"]) if f"{name}_a" in lw else None

    b, t, _ = x.shape
    h = rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
    q = _proj(h, w["q"], ab("q"), lora_scale, PROJ_EQ["q"], out_first)
    k = _proj(h, w["k"], ab("k"), lora_scale, PROJ_EQ["k"], out_first)
    v = _proj(h, w["v"], ab("v"), lora_scale, PROJ_EQ["v"], out_first)
    q = constrain(
        rope(q, positions, cfg.rope_theta, cfg.rope_scaling), ("batch", "length", "act_heads", None)
    )
    k = rope(k, positions, cfg.rope_theta, cfg.rope_scaling)
    if kv is not None:
        # kv = (k_cache [L,B,K,S,H], v_cache, layer): the whole cache is a scan carry, so the new keys and
        # values are written in place (a dynamic_update_slice on a loop carry) instead of the cache being
        # re-emitted as scan outputs, which would copy all of it at every decode step.
        k_cache, v_cache, layer = kv
        k_cache = jax.lax.dynamic_update_slice(
            k_cache, k.astype(k_cache.dtype).swapaxes(1, 2)[None], (layer, 0, 0, index, 0)
        )
        v_cache = jax.lax.dynamic_update_slice(
            v_cache, v.astype(v_cache.dtype).swapaxes(1, 2)[None], (layer, 0, 0, index, 0)
        )
        new_kv = (k_cache, v_cache)
        if native and t == 1:
            attn = _native_attention(cfg, q, k_cache, v_cache, layer, q_seg, k_seg, index, window)
            return _layer_rest(cfg, lora_scale, x, attn, w, ab, out_first), new_kv
        k = jax.lax.dynamic_index_in_dim(k_cache, layer, keepdims=False).astype(dt)  # [B,K,S,H]
        v = jax.lax.dynamic_index_in_dim(v_cache, layer, keepdims=False).astype(dt)
        q_slot = index + jnp.arange(t)
        kv_axes = "bksh"
        if window is not None:
            start, width = window
            k = jax.lax.dynamic_slice_in_dim(k, start, width, axis=2)
            v = jax.lax.dynamic_slice_in_dim(v, start, width, axis=2)
            k_seg = jax.lax.dynamic_slice_in_dim(k_seg, start, width, axis=1)
            q_slot = q_slot - start
    else:
        new_kv = None
        q_slot = jnp.arange(t)
        kv_axes = "bskh"
    impl = cfg.attention_impl()
    # asked for by name (auto has checked already)
    if cfg.attention == "native" and kv is None and (why := cfg.native_attention_unusable()) is not None:
        raise ValueError(f"LlamaConfig.attention=native: {why}")
    if kv is None and impl not in ("einsum", "native"):
        attn = _fused_attention(cfg, q, k, v, q_seg, k_seg, impl)
    else:
        k_slot = jnp.arange(k.shape[kv_axes.index("s")])
        # mask [B,T,S]: same non-zero segment, key not after query
        mask = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
        mask = mask & (k_slot[None, None, :] <= q_slot[None, :, None])
        if kv is None:  # no cache: causal by construction, query blocks + recomputing VJP
            g = cfg.num_heads // cfg.num_kv_heads
            qg = q.reshape(b, t, cfg.num_kv_heads, g, cfg.head_dim)
            fn = native_causal_attention if impl == "native" else blocked_causal_attention
            attn = fn(qg, k, v, mask, cfg.head_dim**-0.5)
            attn = attn.astype(dt).reshape(b, t, cfg.num_heads, cfg.head_dim)
        else:
            attn = _einsum_attention(cfg, q, k, v, mask, kv_axes)
    return _layer_rest(cfg, lora_scale, x, attn, w, ab, out_first), new_kv


def _native_attention(cfg: LlamaConfig, q, k_cache, v_cache, layer: int, q_seg, k_seg, index, window):
    """`_decode_attention` over the cache window (the mask of `_layer`), by the native kernel -> [B,1,N,H]."""
    b = q.shape[0]
    start, width = window if window is not None else (0, k_cache.shape[3])
    seg = jax.lax.dynamic_slice_in_dim(k_seg, start, width, axis=1)
    slot = jnp.arange(width) + start
    mask = (seg == q_seg[:, :1]) & (seg != 0) & (slot[None, :] <= index)
    qg = q.reshape(b, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)
    attn = cache_attention(qg, k_cache, v_cache, layer, start, mask, cfg.head_dim**-0.5)
    return attn.astype(cfg.compute_dtype).reshape(b, 1, cfg.num_heads, cfg.head_dim)


def _layer_rest(cfg: LlamaConfig, lora_scale: float, x, attn, w, ab, out_first: bool):
    """The block after attention: output projection, residual, MLP, residual."""
    x = x + _proj(attn, w["o"], ab("o"), lora_scale, PROJ_EQ["o"], out_first)
    x = constrain(x, ("batch", "length", "act_embed"))
    h = rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
    gate = _proj(h, w["gate"], ab("gate"), lora_scale, PROJ_EQ["gate"], out_first)
    up = _proj(h, w["up"], ab("up"), lora_scale, PROJ_EQ["up"], out_first)
    act = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    x = x + _proj(act, w["down"], ab("down"), lora_scale, PROJ_EQ["down"], out_first)
    return constrain(x, ("batch", "length", "act_embed"))


def _einsum_attention(cfg: LlamaConfig, q, k, v, mask, kv_axes: str):
    """q [B,T,N,H]; k, v laid out as `kv_axes` ("bskh" or the cache's "bksh"); mask [B,T,S] -> [B,T,N,H]."""
    dt = cfg.compute_dtype
    b, t = q.shape[:2]
    g = cfg.num_heads // cfg.num_kv_heads
    qg = q.reshape(b, t, cfg.num_kv_heads, g, cfg.head_dim)
    if t == 1 and kv_axes == "bksh":
        return _decode_attention(cfg, qg, k, v, mask)
    logits = jnp.einsum(f"btkgh,{kv_axes}->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = logits * (cfg.head_dim**-0.5)
    logits = jnp.where(mask[:, None, None, :, :], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    return jnp.einsum(f"bkgts,{kv_axes}->btkgh", probs, v).reshape(b, t, cfg.num_heads, cfg.head_dim)


def _decode_attention(cfg: LlamaConfig, qg, k, v, mask):
    """One query per row over the cache: qg [B,1,K,G,H], k, v [B,K,S,H], mask [B,1,S] -> [B,1,N,H].

    The same sums as `_einsum_attention`, with the key/value length ahead of the query heads in the
    einsums (k [S,H] the left operand, logits [B,K,S,G], softmax over S): on XLA:CPU each product then
    streams the cache once as a tall matrix times a few query columns; the [B,K,G,S] form ran a
    small-rows kernel at a few GB/s and was most of a decode step at batch 16 (bench/README.md)."""
    dt = cfg.compute_dtype
    b = qg.shape[0]
    logits = jnp.einsum("bksh,bkgh->bksg", k, qg[:, 0], preferred_element_type=jnp.float32)
    logits = logits * (cfg.head_dim**-0.5)
    logits = jnp.where(mask[:, 0, None, :, None], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=2).astype(dt)
    out = jnp.einsum("bksg,bksh->bkgh", probs, v)
    return out.reshape(b, 1, cfg.num_heads, cfg.head_dim)


def _fused_attention(cfg: LlamaConfig, q, k, v, q_seg, k_seg, impl: str):
    """jax.nn.dot_product_attention (no cache): q [B,T,N,H], k, v [B,S,K,H] -> [B,T,N,H].

    The kernel applies the causal mask itself; the mask passed is "same segment" only, so padding
    (segment 0) attends to earlier padding. That changes nothing for real tokens (they never see segment 0)
    and leaves no query with every key masked, which the fused kernel would turn into NaN.
    """
    same = (q_seg[:, :, None] == k_seg[:, None, :])[:, None]  # [B,1,T,S], broadcast over heads
    out = jax.nn.dot_product_attention(
        q, k, v, mask=same, is_causal=True, scale=cfg.head_dim**-0.5, implementation=impl
    )
    return out.astype(cfg.compute_dtype)


def forward(
    model: Llama,
    tokens,
    positions,
    segment_ids,
    cache=None,
    *,
    last_only: bool = False,
    return_hidden: bool = False,
):
    """Functional body of Llama.__call__ (scan over the stacked layers).

    `last_only` returns logits for the last position only ([B,1,V]), which is what a left-padded prefill
    needs (it avoids materialising [B,T,V] float32 logits). `return_hidden` returns the final-normed hidden
    states [B,T,D] (compute dtype) in place of the logits, for a loss that applies the LM head itself
    (train/step.py's chunked cross-entropy).
    """
    cfg = model.cfg
    dt = cfg.compute_dtype
    x = jnp.take(model.embed[...], tokens, axis=0).astype(dt)
    x = constrain(x, ("batch", "length", "act_embed"))
    layer_w = {k: v[...] for k, v in model.layers.items()}
    lora_w = {k: v[...] for k, v in model.lora.items()}
    lora_scale = model.lora_cfg.scale if model.lora_cfg is not None else 0.0
    segment_ids = segment_ids.astype(jnp.int32)

    if cache is None:
        k_seg, index = segment_ids, None
    else:
        index = cache["index"]
        k_seg = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, index))

    if cache is None:

        def body(x, per_layer):
            w, lw = per_layer
            return _layer(cfg, lora_scale, x, w, lw, positions, segment_ids, k_seg, None, index)

        if cfg.remat:
            body = jax.checkpoint(body, policy=getattr(jax.checkpoint_policies, cfg.remat_policy))
        x, _ = jax.lax.scan(body, x, (layer_w, lora_w))
    else:

        def cached_body(carry, per_layer):
            x, k_cache, v_cache = carry
            w, lw, layer = per_layer
            kv = (k_cache, v_cache, layer)
            x, kv = _layer(cfg, lora_scale, x, w, lw, positions, segment_ids, k_seg, kv, index)
            return (x, *kv), None

        layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        (x, k_out, v_out), _ = jax.lax.scan(
            cached_body, (x, cache["k"], cache["v"]), (layer_w, lora_w, layers)
        )
    if last_only:
        x = x[:, -1:]
    x = rms_norm(x, model.final_norm[...].astype(dt), cfg.rms_norm_eps)
    new_cache = None
    if cache is not None:
        new_cache = {
            "k": k_out,
            "v": v_out,
            "segment_ids": k_seg,
            "index": index + tokens.shape[1],
        }
    if return_hidden:
        return x, new_cache
    if cfg.tie_embeddings:
        logits = jnp.einsum("btd,vd->btv", x, model.embed[...].astype(dt), preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum(
            "btd,dv->btv", x, model.lm_head[...].astype(dt), preferred_element_type=jnp.float32
        )
    logits = constrain(logits, ("batch", "length", "act_vocab"))
    return logits, new_cache
