"""Causal attention for the no-cache path (training, scoring) on the einsum implementation: query blocks
that read only the keys up to their own end, and a VJP that recomputes the probabilities instead of keeping
them for the backward pass.

Axis letters as in models/modules.py: B batch, T query length, S key length, K KV heads, G query heads per
KV head, H head dim.

`blocked_causal_attention(q [B,T,K,G,H], k, v [B,S,K,H], mask [B,T,S], scale)` -> [B,T,K,G,H] in q's dtype.
The sums are `_einsum_attention`'s (float32 logits, masked to -1e30, float32 softmax, probabilities cast to
the compute dtype before the product with v), split at query-block boundaries: block i holds queries
[a_i, e_i) and reads keys [0, e_i), since a query never sees a later key (the mask is causal; the caller
guarantees it). With 4 blocks that is 10/16 of the score work. Forward keeps only q, k, v, the output and
the per-query log-sum-exp; the backward pass recomputes each block's probabilities from them (the
flash-attention gradient: dV = Pᵀ dO, dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O)), dQ = dS K, dK = dSᵀ Q, scaled),
so the layer scan stores no [B,K,G,T,S] probabilities and their copies. Inside, q, k, v and the output are
laid out heads first ([B,K,G,T,H], [B,K,S,H]) once, so every block's product has its batch axes (B, K)
leading and needs no transposed copy of its operands; the caller's layout is restored once at the end.
Measured on CPU (bench/README.md): the `tiny` preset's attention forward + backward 88 → 40 ms with the
blocks and recomputing VJP; the heads-first layout then took one layer's forward + backward from 10.7 to
7.6 ms (tiny shapes, 8 × 256 tokens) and 7.7 to 6.8 ms (SmolLM2 shapes, 1 × 256).

A query with no visible key at all (padding, segment 0) gets the mean of the values its block can see
instead of the mean over all S keys; nothing reads those positions (no query attends to segment 0, and
their loss weight is 0).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from models import cpu_kernels

NEG_INF = -1e30
MIN_BLOCK = 64  # queries per block at least
MAX_BLOCKS = 8


def query_blocks(t: int) -> list[tuple[int, int]]:
    """[(start, end)] of the query blocks for length t: up to MAX_BLOCKS blocks of >= MIN_BLOCK queries."""
    n = max(1, min(MAX_BLOCKS, t // MIN_BLOCK))
    bounds = [round(i * t / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _block_probs(q, k, mask, scale, lse=None):
    """Probabilities (float32) of one query block, q [B,K,G,t,H] over its keys k [B,K,s,H], mask [B,t,s];
    with lse=None also returns the log-sum-exp [B,K,G,t,1]."""
    logits = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, None, None, :, :], logits, NEG_INF)
    if lse is None:
        lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        return jnp.exp(logits - lse), lse
    return jnp.exp(logits - lse)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def blocked_causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float
) -> jax.Array:
    return _forward(q, k, v, mask, scale)[0]


def _heads_first(q, k, v):
    """q [B,T,K,G,H] -> [B,K,G,T,H]; k, v [B,S,K,H] -> [B,K,S,H]."""
    return q.transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _forward(q, k, v, mask, scale):
    qh, kh, vh = _heads_first(q, k, v)
    outs, lses = [], []
    for a, e in query_blocks(q.shape[1]):
        p, lse = _block_probs(qh[:, :, :, a:e], kh[:, :, :e], mask[:, a:e, :e], scale)
        outs.append(jnp.einsum("bkgts,bksh->bkgth", p.astype(q.dtype), vh[:, :, :e]))
        lses.append(lse)
    out_h = jnp.concatenate(outs, axis=3)  # [B,K,G,T,H]
    return out_h.transpose(0, 3, 1, 2, 4), (qh, kh, vh, mask, out_h, tuple(lses))


def _backward(scale, res, d_out):
    qh, kh, vh, mask, out_h, lses = res
    dt = qh.dtype
    doh = d_out.transpose(0, 2, 3, 1, 4)  # [B,K,G,T,H]
    dqs, dk, dv = [], jnp.zeros(kh.shape, jnp.float32), jnp.zeros(vh.shape, jnp.float32)
    for (a, e), lse in zip(query_blocks(qh.shape[3]), lses, strict=True):
        qb, dob = qh[:, :, :, a:e], doh[:, :, :, a:e]
        p = _block_probs(qb, kh[:, :, :e], mask[:, a:e, :e], scale, lse)
        dv = dv.at[:, :, :e].add(
            jnp.einsum("bkgts,bkgth->bksh", p.astype(dt), dob, preferred_element_type=jnp.float32)
        )
        dp = jnp.einsum("bkgth,bksh->bkgts", dob, vh[:, :, :e], preferred_element_type=jnp.float32)
        delta = jnp.einsum(
            "bkgth,bkgth->bkgt", dob.astype(jnp.float32), out_h[:, :, :, a:e].astype(jnp.float32)
        )
        ds = (p * (dp - delta[..., None]) * scale).astype(dt)
        dqs.append(jnp.einsum("bkgts,bksh->bkgth", ds, kh[:, :, :e]))
        dk = dk.at[:, :, :e].add(jnp.einsum("bkgts,bkgth->bksh", ds, qb, preferred_element_type=jnp.float32))
    dq = jnp.concatenate(dqs, axis=3).transpose(0, 3, 1, 2, 4)
    dk = dk.astype(kh.dtype).transpose(0, 2, 1, 3)
    dv = dv.astype(vh.dtype).transpose(0, 2, 1, 3)
    return dq, dk, dv, None


blocked_causal_attention.defvjp(_forward, _backward)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def native_causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float
) -> jax.Array:
    """`blocked_causal_attention` by the native CPU kernels (models/native/train_attention.cc), float32:
    the same sums in blocks of 32 queries, forward and backward each one call. A query that sees no key
    gets 0 (not the mean of its block's values); nothing reads it, as above."""
    return cpu_kernels.causal_attention_fwd(q, k, v, mask, scale)[0]


def _native_forward(q, k, v, mask, scale):
    out, lse = cpu_kernels.causal_attention_fwd(q, k, v, mask, scale)
    return out, (q, k, v, mask, out, lse)


def _native_backward(scale, res, d_out):
    q, k, v, mask, out, lse = res
    dq, dk, dv = cpu_kernels.causal_attention_bwd(q, k, v, mask, out, lse, d_out.astype(jnp.float32), scale)
    return dq, dk, dv, None


native_causal_attention.defvjp(_native_forward, _native_backward)
