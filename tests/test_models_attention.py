"""models/attention.py's blocked causal attention (the no-cache path: training, scoring) against the plain
einsum attention it replaces (`models.modules._einsum_attention`, differentiated by JAX), on packed rows with
padding: values and gradients of q, k, v.

Tolerances: float32, the same sums in a different order (per block; the backward recomputes the probabilities
from the saved log-sum-exp instead of reusing them): ~1e-6 relative. A wrong block boundary (a query missing
a visible key), a missing gradient term (the rowsum(dO ⊙ O) correction, the scale) or a key gradient not
accumulated over blocks moves values or gradients by O(1) relative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.attention import blocked_causal_attention, query_blocks
from models.config import LlamaConfig
from models.modules import _einsum_attention


def test_query_blocks():
    # by hand: up to 8 blocks of at least 64 queries, boundaries rounded from i * t / n
    assert query_blocks(1) == [(0, 1)]
    assert query_blocks(127) == [(0, 127)]
    assert query_blocks(128) == [(0, 64), (64, 128)]
    assert query_blocks(200) == [(0, 67), (67, 133), (133, 200)]
    assert query_blocks(256) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert query_blocks(4096) == [(i * 512, (i + 1) * 512) for i in range(8)]


def _inputs(t: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    b, k, g, h = 2, 2, 3, 16
    q = jnp.asarray(rng.normal(size=(b, t, k, g, h)), jnp.float32)
    kk = jnp.asarray(rng.normal(size=(b, t, k, h)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, k, h)), jnp.float32)
    seg = np.ones((b, t), np.int32)
    seg[0, t // 3 :] = 2  # row 0: two packed examples
    seg[1, t - t // 5 :] = 0  # row 1: one example, then padding
    seg = jnp.asarray(seg)
    pos = jnp.arange(t)
    mask = (
        (seg[:, :, None] == seg[:, None, :])
        & (seg[:, None, :] != 0)
        & (pos[None, None, :] <= pos[None, :, None])
    )
    return q, kk, v, mask, seg


def _plain(q, k, v, mask):
    b, t, kh, g, h = q.shape
    cfg = LlamaConfig(
        vocab_size=8, hidden_size=kh * g * h, intermediate_size=8, num_layers=1, num_heads=kh * g,
        num_kv_heads=kh, head_dim=h, dtype="float32",
    )  # fmt: skip
    return _einsum_attention(cfg, q.reshape(b, t, kh * g, h), k, v, mask, "bskh").reshape(q.shape)


@pytest.mark.parametrize("t", [40, 200, 256])  # one block; three uneven blocks; four blocks
def test_blocked_attention_equals_plain_attention(t):
    q, k, v, mask, seg = _inputs(t)
    scale = 16**-0.5
    real = (seg != 0)[:, :, None, None, None]  # padding queries see no key: their output is not compared
    cot = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * real

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)

    got = blocked_causal_attention(q, k, v, mask, scale)
    want = _plain(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(got * real), np.asarray(want * real), rtol=1e-5, atol=1e-5)
    got_g = jax.jit(
        jax.grad(loss(lambda q, k, v: blocked_causal_attention(q, k, v, mask, scale)), (0, 1, 2))
    )(q, k, v)
    want_g = jax.grad(loss(lambda q, k, v: _plain(q, k, v, mask)), (0, 1, 2))(q, k, v)
    for a, w in zip(got_g, want_g, strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(w), rtol=1e-4, atol=1e-5 * float(jnp.abs(w).max())
        )


def test_blocked_attention_bfloat16_keeps_the_compute_dtype():
    """bf16 inputs: outputs and gradients come back in bf16, within bf16 rounding of the float32 result."""
    q, k, v, mask, seg = _inputs(128, seed=2)
    real = (seg != 0)[:, :, None, None, None]
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = blocked_causal_attention(*bf, mask, 0.25)
    assert out.dtype == jnp.bfloat16
    ref = blocked_causal_attention(q, k, v, mask, 0.25)
    err = jnp.linalg.norm(((out.astype(jnp.float32) - ref) * real).ravel()) / jnp.linalg.norm(
        (ref * real).ravel()
    )
    assert float(err) < 2e-2
    grads = jax.grad(
        lambda q, k, v: jnp.sum(blocked_causal_attention(q, k, v, mask, 0.25) * real), (0, 1, 2)
    )(*bf)
    assert all(g.dtype == jnp.bfloat16 for g in grads)
