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
so the layer scan stores no [B,K,G,T,S] probabilities and their copies. Measured on CPU (bench/README.md):
the `tiny` preset's attention forward + backward 88 → 40 ms.

A query with no visible key at all (padding, segment 0) gets the mean of the values its block can see
instead of the mean over all S keys; nothing reads those positions (no query attends to segment 0, and
their loss weight is 0).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

NEG_INF = -1e30
MIN_BLOCK = 64  # queries per block at least
MAX_BLOCKS = 8


def query_blocks(t: int) -> list[tuple[int, int]]:
    """[(start, end)] of the query blocks for length t: up to MAX_BLOCKS blocks of >= MIN_BLOCK queries."""
    n = max(1, min(MAX_BLOCKS, t // MIN_BLOCK))
    bounds = [round(i * t / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _block_probs(q, k, mask, scale, lse=None):
    """Probabilities (float32) of one query block over its keys; with lse=None also returns the lse."""
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
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


def _forward(q, k, v, mask, scale):
    outs, lses = [], []
    for a, e in query_blocks(q.shape[1]):
        p, lse = _block_probs(q[:, a:e], k[:, :e], mask[:, a:e, :e], scale)
        outs.append(jnp.einsum("bkgts,bskh->btkgh", p.astype(q.dtype), v[:, :e]))
        lses.append(lse)
    out = jnp.concatenate(outs, axis=1)
    return out, (q, k, v, mask, out, tuple(lses))


def _backward(scale, res, d_out):
    q, k, v, mask, out, lses = res
    dt = q.dtype
    dqs, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    for (a, e), lse in zip(query_blocks(q.shape[1]), lses, strict=True):
        qb, dob = q[:, a:e], d_out[:, a:e]
        p = _block_probs(qb, k[:, :e], mask[:, a:e, :e], scale, lse)
        dv = dv.at[:, :e].add(
            jnp.einsum("bkgts,btkgh->bskh", p.astype(dt), dob, preferred_element_type=jnp.float32)
        )
        dp = jnp.einsum("btkgh,bskh->bkgts", dob, v[:, :e], preferred_element_type=jnp.float32)
        delta = jnp.einsum("btkgh,btkgh->bkgt", dob.astype(jnp.float32), out[:, a:e].astype(jnp.float32))
        ds = (p * (dp - delta[..., None]) * scale).astype(dt)
        dqs.append(jnp.einsum("bkgts,bskh->btkgh", ds, k[:, :e]))
        dk = dk.at[:, :e].add(jnp.einsum("bkgts,btkgh->bskh", ds, qb, preferred_element_type=jnp.float32))
    return jnp.concatenate(dqs, axis=1), dk.astype(k.dtype), dv.astype(v.dtype), None


blocked_causal_attention.defvjp(_forward, _backward)
