"""The loss, its gradient, accumulation, schedules and LoRA freezing, on the tiny preset (vocab 512)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.train_helpers import built_tiny
from train.optim import make_schedule
from train.step import accumulated_grads, token_nll

VOCAB = 512


@pytest.fixture(scope="module")
def ft():
    built = built_tiny()[0]
    built.grads = jax.jit(
        lambda b: accumulated_grads(built.graphdef, built.state["params"], built.state["frozen"], b)
    )
    return built


def _pack(examples, rows: int, t: int):
    """examples: list of (row, ids, loss_mask) placed left to right in their row → one micro-batch dict."""
    out = {k: np.zeros((rows, t), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
    out["weights"] = np.zeros((rows, t), np.float32)
    fill, seg = [0] * rows, [0] * rows
    for row, ids, mask in examples:
        n = len(ids) - 1
        a, b = fill[row], fill[row] + n
        seg[row] += 1
        out["inputs"][row, a:b] = ids[:-1]
        out["targets"][row, a:b] = ids[1:]
        out["weights"][row, a:b] = mask[1:]
        out["segment_ids"][row, a:b] = seg[row]
        out["positions"][row, a:b] = np.arange(n)
        fill[row] = b
    return out


def _examples(seed: int, n: int, rows: int):
    rng = np.random.default_rng(seed)
    ex = []
    for i in range(n):
        length, prompt = int(rng.integers(6, 14)), int(rng.integers(2, 5))
        ids = rng.integers(3, VOCAB, size=length)
        mask = np.r_[np.zeros(prompt), np.ones(length - prompt)]
        ex.append((i % rows, ids, mask))
    return ex


def test_loss_matches_hand_computation_on_two_examples(ft):
    built = ft
    ids1, ids2 = np.array([5, 17, 99, 3, 250, 42, 7]), np.array([8, 300, 21, 77, 12])
    m1, m2 = np.array([0, 0, 0, 1, 1, 1, 1]), np.array([0, 0, 1, 1, 1])
    mb = _pack([(0, ids1, m1), (0, ids2, m2)], rows=1, t=16)
    s, w = jax.jit(lambda mb: token_nll(built.graphdef, built.state["params"], built.state["frozen"], mb))(mb)
    model = nnx.merge(built.graphdef, built.state["params"], built.state["frozen"])
    apply = nnx.jit(lambda m, x: m(x, jnp.arange(x.shape[1])[None], jnp.ones_like(x))[0])
    total, count = 0.0, 0
    for ids, m in ((ids1, m1), (ids2, m2)):  # each example alone, unpacked
        n = len(ids)
        logits = apply(model, jnp.asarray(ids[None], jnp.int32))
        lp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float64)))
        for i in range(n - 1):
            if m[i + 1]:
                total += -lp[i, ids[i + 1]]
                count += 1
    assert float(w) == count == 7
    np.testing.assert_allclose(float(s) / float(w), total / count, rtol=1e-5)


def test_prompt_tokens_get_zero_gradient(ft):
    built = ft
    p, f = built.state["params"], built.state["frozen"]
    mb = _pack(_examples(1, 8, 4), rows=4, t=40)
    batch = {k: v[None] for k, v in mb.items()}
    perturbed = {k: v.copy() for k, v in batch.items()}
    prompt = (batch["weights"] == 0) & (batch["segment_ids"] > 0)
    assert prompt.sum() > 4
    perturbed["targets"] = np.where(prompt, (batch["targets"] + 123) % VOCAB, batch["targets"])
    grads = built.grads
    l1, g1, _ = grads(batch)
    l2, g2, _ = grads(perturbed)
    assert float(l1) == float(l2)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # and the loss's gradient w.r.t. the logits is exactly 0 at every prompt and padding position
    @jax.jit
    def dloss_dlogits(mb):
        model = nnx.merge(built.graphdef, p, f)
        logits, _ = model(mb["inputs"], mb["positions"], mb["segment_ids"])

        def loss_of_logits(lg):
            ce = optax.softmax_cross_entropy_with_integer_labels(lg, mb["targets"])
            return jnp.sum(ce * mb["weights"]) / jnp.sum(mb["weights"])

        return jax.grad(loss_of_logits)(logits)

    dl = np.asarray(dloss_dlogits(mb))
    assert np.all(dl[mb["weights"] == 0] == 0)
    assert np.abs(dl[mb["weights"] == 1]).sum() > 0


def test_four_micro_batches_equal_one_batch(ft):
    built = ft
    mbs = [_pack(_examples(10 + i, 3, 1), rows=1, t=40) for i in range(4)]
    accum = {k: np.stack([m[k] for m in mbs]) for k in mbs[0]}  # [4, 1, T]
    whole = {k: np.concatenate([m[k] for m in mbs])[None] for k in mbs[0]}  # [1, 4, T]
    la, ga, na = built.grads(accum)
    lw, gw, nw = built.grads(whole)
    assert float(na) == float(nw)
    np.testing.assert_allclose(float(la), float(lw), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gw)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def reference_lr(name: str, t: int, *, lr: float, min_lr: float, steps: int, warmup: int = 0) -> float:
    """The schedules of train/optim.py's docstring in plain Python, written independently of make_schedule."""
    if name == "inverse_sqrt":
        tau = max(warmup, 1)
        v = lr * math.sqrt(tau / max(t + 1, tau))
    elif name == "linear_to_min":
        v = lr + (min_lr - lr) * min(t, steps) / steps
    else:
        assert name == "constant", name
        v = lr
    if warmup > 0 and t < warmup:
        v *= (t + 1) / warmup
    return v


@pytest.mark.parametrize("name", ["inverse_sqrt", "linear_to_min", "constant"])
def test_schedule_values(name):
    lr, min_lr, steps = 1e-5, 1e-6, 1000
    formula = {  # without warmup: the paper's lr/sqrt(t+1), a straight line to min_lr, a constant
        "inverse_sqrt": lambda t: lr / math.sqrt(t + 1),
        "linear_to_min": lambda t: lr - (lr - min_lr) * t / steps,
        "constant": lambda t: lr,
    }[name]
    sched = make_schedule(name, lr=lr, min_lr=min_lr, steps=steps)
    for t in (0, 1, 10, 999):
        assert reference_lr(name, t, lr=lr, min_lr=min_lr, steps=steps) == pytest.approx(
            formula(t), rel=1e-12
        )
        assert float(sched(t)) == pytest.approx(formula(t), rel=1e-6)
    # with warmup W = 4: lr(t) scaled by (t + 1)/W for t < W; past the end, linear_to_min stays at min_lr
    warm = make_schedule(name, lr=lr, min_lr=min_lr, steps=steps, warmup=4)
    for t in (0, 1, 3, 4, 5, 999, 1500):
        want = reference_lr(name, t, lr=lr, min_lr=min_lr, steps=steps, warmup=4)
        assert float(warm(t)) == pytest.approx(want, rel=1e-6), t
    # by hand: inverse_sqrt, lr 1, W 4 (τ = 4): t = 1 -> sqrt(4/4) · 2/4 = 0.5; t = 15 -> sqrt(4/16) = 0.5
    hand = make_schedule("inverse_sqrt", lr=1.0, min_lr=0, steps=10, warmup=4)
    assert float(hand(1)) == pytest.approx(0.5) and float(hand(15)) == pytest.approx(0.5)
    assert float(make_schedule("linear_to_min", lr=1.0, min_lr=0.5, steps=10)(20)) == pytest.approx(0.5)
