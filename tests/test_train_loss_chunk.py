"""The chunked cross-entropy (train.loss_chunk_tokens, train/step.py chunked_nll) against the plain path, and
the remat policies (model.remat_policy) against no remat, on the tiny preset (vocab 512) in float32.

Tolerances: both paths do the same float32 arithmetic in a different order (per-chunk sums, the LM-head
gradient accumulated chunk by chunk instead of in one matmul), so they differ by float32 rounding only:
a few ulps per element (~1e-7 relative), summed over at most a few hundred terms here, well inside rtol 1e-5.
A mistake (a chunk dropped or counted twice, padding or a prompt token counted, a missing gradient term) moves
the loss or the gradients by whole per-token contributions, i.e. by ~1e-2 relative or more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import base
from models.config import LlamaConfig
from tests.train_helpers import built_tiny, tiny_config
from train.loop import ConfigError, validate_config
from train.state import jit_train_step, put_batch
from train.step import chunked_nll, token_nll

VOCAB = 512


@pytest.fixture(scope="module")
def ft():
    return built_tiny()[0]


def _batch(seed: int, rows: int, t: int, n_examples: int) -> dict[str, np.ndarray]:
    """Examples packed left to right into `rows` rows of `t` slots: a prompt (weight 0) then a response
    (weight 1), segment ids from 1, positions restarting at 0; the rest of each row is padding (segment 0)."""
    rng = np.random.default_rng(seed)
    out = {k: np.zeros((rows, t), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
    out["weights"] = np.zeros((rows, t), np.float32)
    fill, seg = [0] * rows, [0] * rows
    for i in range(n_examples):
        row, n, prompt = i % rows, int(rng.integers(6, 14)), int(rng.integers(2, 5))
        ids = rng.integers(3, VOCAB, size=n + 1)
        a = fill[row]
        assert a + n <= t, "test layout: the examples must fit"
        seg[row] += 1
        out["inputs"][row, a : a + n] = ids[:-1]
        out["targets"][row, a : a + n] = ids[1:]
        out["weights"][row, a + prompt : a + n] = 1.0
        out["segment_ids"][row, a : a + n] = seg[row]
        out["positions"][row, a : a + n] = np.arange(n)
        fill[row] = a + n
    return out


def _widen(mb: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    """The same micro-batch with more padding slots at the end of every row."""
    return {k: np.pad(v, [(0, 0), (0, t - v.shape[1])]) for k, v in mb.items()}


def _assert_trees_close(got, want, rtol: float = 1e-5) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        # atol relative to the leaf's scale: elements near 0 carry the rounding of the large ones
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), 1e-30))


def _plain_nll(hidden, head, targets, weights, tied: bool):
    """The unchunked reference: full float32 logits, optax's cross-entropy."""
    eq = "btd,vd->btv" if tied else "btd,dv->btv"
    logits = jnp.einsum(eq, hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk_tokens", [1, 7, 48, 10_000])  # 1 position per chunk, odd split, 1 chunk
def test_chunked_nll_equals_plain_cross_entropy(tied, chunk_tokens):
    rng = np.random.default_rng(3)
    b, t, d, v = 3, 17, 8, 40
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(v, d) if tied else (d, v)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    weights = jnp.asarray(rng.random((b, t)) > 0.3, jnp.float32)

    def chunked(h, w_head, wts):
        return chunked_nll(h, w_head, targets, wts, chunk_tokens, tied=tied)

    def plain(h, w_head, wts):
        return _plain_nll(h, w_head, targets, wts, tied)

    want, want_g = jax.value_and_grad(plain, argnums=(0, 1))(hidden, head, weights)
    got, got_g = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(hidden, head, weights)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    _assert_trees_close(got_g, want_g)
    # without differentiation (evaluation) the scan computes the loss only: same value
    np.testing.assert_allclose(float(jax.jit(chunked)(hidden, head, weights)), float(want), rtol=1e-6)
    # the cotangent is applied: grad of 2.5 × loss is 2.5 × grad
    scaled = jax.jit(jax.grad(lambda h: 2.5 * chunked(h, head, weights)))(hidden)
    _assert_trees_close(scaled, 2.5 * want_g[0])


@pytest.mark.parametrize("tied", [False, True])
def test_chunks_without_weights_are_skipped(tied):
    """A chunk whose weights are all 0 runs no LM-head product: NaN hidden states there leave the loss and
    the gradients finite and equal to the plain path's on the same input with those positions zeroed
    (which the plain path would turn into NaN: 0 × NaN). Chunks with a single weighted position anywhere
    are still computed (the loss would lose that position's cross-entropy otherwise), and a weight on a
    NaN position makes the loss NaN: the skip keys on the weights, not on the values."""
    rng = np.random.default_rng(5)
    b, t, d, v = 2, 16, 8, 40
    hidden = np.asarray(rng.normal(size=(b, t, d)), np.float32)
    head = jnp.asarray(rng.normal(size=(v, d) if tied else (d, v)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    weights = np.zeros((b, t), np.float32)
    weights[:, 8:] = 1.0  # chunk_tokens 8 with 2 rows: chunks of 4 positions; positions 0-7 have no weight
    weights[1, 5] = 1.0  # ... except one, so positions 4-7 form a computed chunk
    nan_hidden = hidden.copy()
    nan_hidden[:, :4] = np.nan  # the skipped chunk
    clean = hidden.copy()
    clean[:, :4] = 0.0

    def chunked(h, w_head, wts):
        return chunked_nll(h, w_head, targets, wts, 8, tied=tied)

    got, got_g = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(nan_hidden, head, weights)
    want, want_g = jax.value_and_grad(lambda h, w: _plain_nll(h, w, targets, weights, tied), (0, 1))(
        clean, head
    )
    assert np.isfinite(float(got))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    _assert_trees_close(got_g, want_g)
    assert float(jnp.abs(got_g[0][:, :4]).max()) == 0.0
    # the plain path on the NaN input is NaN: the finite result above comes from the skip
    assert np.isnan(float(_plain_nll(nan_hidden, head, targets, weights, tied)))
    poisoned = nan_hidden.copy()
    poisoned[1, 5] = np.nan  # the one weighted prompt position: its chunk must be computed
    assert np.isnan(float(jax.jit(chunked)(poisoned, head, weights)))


def test_chunked_nll_bfloat16_compute():
    """bf16 hidden states on a float32 master head, as in training. The loss uses the same bf16 products
    with float32 accumulation on both sides (rtol 1e-5). The gradients differ by bf16 rounding (8-bit
    mantissa, 2^-9 ≈ 2e-3 relative per element): the chunked path rounds d logits to bf16 before the two
    gradient matmuls, the plain path rounds the head gradient to bf16 after them; so the gradients are
    compared by relative norm of the difference, < 1e-2."""
    rng = np.random.default_rng(4)
    b, t, d, v = 2, 24, 16, 64
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.bfloat16)
    head = jnp.asarray(rng.normal(size=(d, v)) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    weights = jnp.ones((b, t), jnp.float32)
    want, want_g = jax.value_and_grad(lambda h, w: _plain_nll(h, w, targets, weights, False), (0, 1))(
        hidden, head
    )
    got, got_g = jax.value_and_grad(lambda h, w: chunked_nll(h, w, targets, weights, 16, tied=False), (0, 1))(
        hidden, head
    )
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for a, w in zip(got_g, want_g, strict=True):
        assert a.dtype == w.dtype  # bf16 for the hidden states, float32 for the master head
        a, w = np.asarray(a, np.float64), np.asarray(w, np.float64)
        assert np.linalg.norm(a - w) / np.linalg.norm(w) < 1e-2


@pytest.mark.parametrize("chunk_tokens", [16, 37, 10_000])
def test_model_loss_and_grads_equal_plain_path(ft, chunk_tokens):
    built = ft
    p, f = built.state["params"], built.state["frozen"]
    mb = _batch(0, rows=3, t=40, n_examples=7)

    def loss(params, mb, chunk):
        return token_nll(built.graphdef, params, f, mb, chunk)

    want = jax.jit(jax.value_and_grad(lambda q: loss(q, mb, 0)[0]))(p)
    got = jax.jit(jax.value_and_grad(lambda q: loss(q, mb, chunk_tokens)[0]))(p)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    _assert_trees_close(got[1], want[1])
    assert float(loss(p, mb, chunk_tokens)[1]) == float(mb["weights"].sum())


def test_masked_and_padded_batch_gives_the_same_loss(ft):
    """Padding slots and prompt tokens (weight 0) contribute nothing: the same examples in longer rows (53
    slots, not a multiple of the chunk length) give the same loss and gradients, and changing the targets
    at every weight-0 position changes neither, exactly."""
    built = ft
    p, f = built.state["params"], built.state["frozen"]
    mb = _batch(1, rows=2, t=40, n_examples=6)
    padded = _widen(mb, 53)
    grad = jax.jit(
        jax.value_and_grad(lambda q, mb, chunk: token_nll(built.graphdef, q, f, mb, chunk)[0]),
        static_argnums=2,
    )
    l_plain, g_plain = grad(p, mb, 0)
    l_pad, g_pad = grad(p, padded, 24)
    np.testing.assert_allclose(float(l_pad), float(l_plain), rtol=1e-6)
    _assert_trees_close(g_pad, g_plain)

    unweighted = padded["weights"] == 0
    assert unweighted.sum() > 30 and (unweighted & (padded["segment_ids"] > 0)).sum() > 6  # padding + prompts
    perturbed = dict(
        padded, targets=np.where(unweighted, (padded["targets"] + 123) % VOCAB, padded["targets"])
    )
    l_pert, g_pert = grad(p, perturbed, 24)
    assert float(l_pert) == float(l_pad)
    for a, b in zip(jax.tree.leaves(g_pert), jax.tree.leaves(g_pad), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("lora", [False, True])
def test_train_step_with_chunked_loss(lora):
    """The trainer's own jitted step (build_state + jit_train_step, 2 accumulated micro-batches): the
    config key reaches it and one update gives the same loss and parameters. LoRA: the head is frozen, so
    its gradient is not computed (symbolic zero) and only the adapters move."""
    mbs = [_batch(10 + i, rows=2, t=40, n_examples=5) for i in range(2)]
    np_batch = {k: np.stack([m[k] for m in mbs]) for k in mbs[0]}
    out = {}
    for chunk in (0, 20):
        built, tx, sched, mesh = built_tiny(lora, **{"train.loss_chunk_tokens": chunk})
        assert built.loss_chunk_tokens == chunk
        with jax.set_mesh(mesh):
            state, metrics = jit_train_step(built, tx, sched)(built.state, put_batch(np_batch, mesh))
        out[chunk] = (jax.device_get(state["params"]), float(metrics["loss"]), float(metrics["grad_norm"]))
    np.testing.assert_allclose(out[20][1], out[0][1], rtol=1e-6)
    np.testing.assert_allclose(out[20][2], out[0][2], rtol=1e-5)
    # Adam's first update is lr·g/(|g|+ε) ≈ ±lr for every element however small g is, so for elements with
    # |g| near ε (here: embedding rows of rarely seen tokens) float32 rounding of g shows in the update
    # (measured: up to 2.7e-3·lr); a real difference moves elements by ~lr
    lr = tiny_config("").optimizer.lr  # the lr _built trains with (lora or not)
    for a, b in zip(jax.tree.leaves(out[20][0]), jax.tree.leaves(out[0][0]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-2 * lr)


@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable"])
def test_remat_policies_give_the_same_gradients(ft, policy):
    built = ft
    p, f = built.state["params"], built.state["frozen"]
    mb = _batch(2, rows=2, t=32, n_examples=4)
    want = jax.jit(jax.value_and_grad(lambda q: token_nll(built.graphdef, q, f, mb)[0]))(p)
    remat, _, _, _ = built_tiny(**{"model.remat": True, "model.remat_policy": policy})
    assert remat.model_cfg.remat and remat.model_cfg.remat_policy == policy
    got = jax.jit(jax.value_and_grad(lambda q: token_nll(remat.graphdef, q, f, mb)[0]))(p)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    _assert_trees_close(got[1], want[1])


def test_bad_values_are_rejected_by_name():
    with pytest.raises(ValueError, match="train.loss_chunk_tokens=-1"):
        built_tiny(**{"train.loss_chunk_tokens": -1})
    with pytest.raises(ValueError, match="remat_policy='everything'"):
        LlamaConfig(64, 16, 32, 1, 2, 2, 8, remat_policy="everything")
    cfg = base()
    cfg.model.init_from = "x"
    cfg.model.remat_policy = "everything"
    with pytest.raises(ConfigError, match="model.remat_policy"):
        validate_config(cfg)
    cfg.model.remat_policy = "dots_saveable"
    validate_config(cfg)  # both keys are in the schema with valid defaults
