"""Activation × weight einsums whose backward pass writes each cotangent directly in its operand's axes.

`dense(eq, x, w)` is `jnp.einsum(eq, x, w)` for a projection equation such as "btd,df->btf" (x an
activation, w a weight; every axis of w is either contracted with x or kept in the output). Its VJP is
the two products written as einsums over the same axis letters:

    dx = einsum("{out},{w}->{x}", dy, w)      dw = einsum("{x},{out}->{w}", x, dy)

so the weight gradient is a dot whose output already has w's axis order. JAX's own transpose rule
for `dot_general` computes the weight cotangent with the output axes swapped and then transposes it;
on XLA:CPU the transpose is pushed into the producer of dy, and for the SwiGLU MLP that is an
element-wise fusion writing a [F, T] copy of dgate column by column (~9 ms per SmolLM2 layer at
256 tokens, 10% of a full fine-tuning step; bench/README.md). The sums are the same; only the
order in which XLA lays them out differs. The saved residuals (x and w) are what autodiff keeps anyway.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def _axes(eq: str) -> tuple[str, str, str]:
    ins, out = eq.replace(" ", "").split("->")
    xs, ws = ins.split(",")
    return xs, ws, out


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def dense(eq: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum(eq, x, w)` with the VJP described in the module docstring."""
    return jnp.einsum(eq, x, w)


def _dense_fwd(eq, x, w):
    return jnp.einsum(eq, x, w), (x, w)


def _dense_bwd(eq, res, dy):
    x, w = res
    xs, ws, out = _axes(eq)
    dx = jnp.einsum(f"{out},{ws}->{xs}", dy, w)
    dw = jnp.einsum(f"{xs},{out}->{ws}", x, dy)
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)
