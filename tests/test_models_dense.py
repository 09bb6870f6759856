"""models.dense: the projection einsum with a hand-written VJP gives the same values and gradients as
the einsum under autodiff, and the gradients match products written out in numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.dense import dense, dense_out_first, out_first_axes, to_out_first

# The projections models.modules and models.lora run: (equation, x shape, w shape).
CASES = [
    ("btd,df->btf", (2, 5, 6), (6, 7)),  # gate / up
    ("btf,fd->btd", (2, 5, 7), (7, 6)),  # down
    ("btd,dnh->btnh", (2, 5, 6), (6, 3, 4)),  # q / k / v
    ("btnh,nhd->btd", (2, 5, 3, 4), (3, 4, 6)),  # o
    ("btnh,nhr->btr", (2, 5, 3, 4), (3, 4, 2)),  # LoRA A of o
    ("btr,rnh->btnh", (2, 5, 2), (2, 3, 4)),  # LoRA B of q
]


def _data(xs, ws, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    return x, w


@pytest.mark.parametrize("eq,xs,ws", CASES)
def test_values_and_gradients_match_autodiff_einsum(eq, xs, ws):
    x, w = _data(xs, ws)
    out_shape = jnp.einsum(eq, x, w).shape
    probe = np.random.default_rng(1).standard_normal(out_shape).astype(np.float32)

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w) * probe)

    ours = jax.jit(jax.value_and_grad(loss(lambda x, w: dense(eq, x, w)), argnums=(0, 1)))(x, w)
    ref = jax.jit(jax.value_and_grad(loss(lambda x, w: jnp.einsum(eq, x, w)), argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    for g, r in zip(ours[1], ref[1], strict=True):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_mlp_gradients_against_numpy_products():
    """dW = xᵀ·dy and dx = dy·Wᵀ over the flattened tokens, computed in float64 numpy."""
    x, w = _data((2, 5, 6), (6, 7))
    dy = np.random.default_rng(2).standard_normal((2, 5, 7))
    _, vjp = jax.vjp(lambda x, w: dense("btd,df->btf", x, w), x, w)
    dx, dw = vjp(jnp.asarray(dy, jnp.float32))
    x2, dy2 = x.reshape(10, 6).astype(np.float64), dy.reshape(10, 7)
    np.testing.assert_allclose(dw, x2.T @ dy2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, (dy2 @ w.astype(np.float64).T).reshape(2, 5, 6), rtol=1e-5, atol=1e-5)


def test_cotangents_keep_operand_dtypes():
    x, w = _data((2, 3, 4), (4, 5))
    x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    y, vjp = jax.vjp(lambda x, w: dense("btd,df->btf", x, w), x16, w16)
    dx, dw = vjp(jnp.ones_like(y))
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16)


def test_second_operand_frozen_still_differentiates_x():
    """LoRA: the base weight is not differentiated; dx still flows (XLA drops the unused dw)."""
    x, w = _data((2, 3, 4), (4, 5))
    g = jax.grad(lambda x: jnp.sum(dense("btd,df->btf", x, jax.lax.stop_gradient(w)) ** 2))(x)
    r = jax.grad(lambda x: jnp.sum(jnp.einsum("btd,df->btf", x, w) ** 2))(x)
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_contracted_axes_follow_the_weight_order():
    """jnp.einsum contracts "btnh,nhd->btd" as (h, n), which makes XLA copy the weight transposed at every
    call; dense lists them as (n, h), the weight's own order, in the forward and in both gradients."""
    x, w = _data((2, 5, 3, 4), (3, 4, 6))
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(dense("btnh,nhd->btd", x, w)), argnums=(0, 1)))(x, w)
    dims = [e.params["dimension_numbers"][0] for e in _dot_generals(jaxpr.jaxpr)]
    dims = [(tuple(a), tuple(b)) for a, b in dims]  # contracting axes (x side, w side) of each product
    assert ((2, 3), (0, 1)) in dims  # forward: x's (n, h) with w's (n, h)
    assert ((2,), (2,)) in dims  # dx: dy's d with w's d
    assert ((0, 1), (0, 1)) in dims  # dw: x's (b, t) with dy's (b, t)
    assert ((3, 2), (1, 0)) not in dims


def _dot_generals(jaxpr):
    for e in jaxpr.eqns:
        if e.primitive.name == "dot_general":
            yield e
        for p in e.params.values():
            if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
                yield from _dot_generals(p.jaxpr)
            elif hasattr(p, "eqns"):
                yield from _dot_generals(p)


def test_equations_with_batch_axes_are_refused():
    x, w = _data((2, 5, 6), (2, 6, 7))
    with pytest.raises(ValueError, match="not a projection"):
        dense("btd,bdf->btf", x, w)


def test_out_first_axes_put_the_kept_axes_first():
    assert [out_first_axes(eq) for eq, _, _ in CASES] == ["fd", "df", "nhd", "dnh", "rnh", "nhr"]


@pytest.mark.parametrize("eq,xs,ws", CASES)
def test_out_first_product_equals_the_numpy_product(eq, xs, ws):
    """The decoding form (weight transposed, left operand) against the same sum in float64 numpy."""
    x, w = _data(xs, ws)
    w_t = to_out_first(eq, w)
    assert w_t.shape == tuple(ws[eq.split(",")[1].index(c)] for c in out_first_axes(eq))
    ref = np.einsum(eq, x.astype(np.float64), w.astype(np.float64))
    got = jax.jit(lambda x, w_t: dense_out_first(eq, x, w_t))(x, w_t)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_out_first_puts_the_weight_on_the_left_behind_a_barrier():
    """The weight is the dot's left operand and the transpose to eq's output comes after an optimization
    barrier (without it XLA folds the transpose into the next product, back into the slow x-left form)."""
    x, w = _data((2, 5, 3, 4), (3, 4, 6))
    w_t = to_out_first("btnh,nhd->btd", w)
    jaxpr = jax.make_jaxpr(lambda x, w_t: dense_out_first("btnh,nhd->btd", x, w_t))(x, w_t).jaxpr
    names = [e.primitive.name for e in jaxpr.eqns]
    assert names == ["dot_general", "optimization_barrier", "transpose"], names
    dot = jaxpr.eqns[0]
    assert dot.invars[0] is jaxpr.invars[1]  # w_t [d, n, h] on the left
    assert tuple(map(tuple, dot.params["dimension_numbers"][0])) == ((1, 2), (2, 3))
