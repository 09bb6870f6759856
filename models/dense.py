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
Each product is one `dot_general` with its contracted axes in the weight's order (`_contract`).

Decoding (`dense_out_first`) holds each weight transposed, output axes first and contracted axes last (as
`torch.nn.Linear` stores [out, in]), and issues the product with the weight as the left operand: for a
few activation rows XLA:CPU then streams the weight as one tall matrix. At 16 rows the 30 layers' gate and
up products took 21 ms that way against 35 ms as x · w (bench/README.md, "Decode").
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax


def dense_axes(eq: str) -> tuple[str, str, str]:
    """The axis letters of a projection equation: (x, w, out)."""
    ins, out = eq.replace(" ", "").split("->")
    xs, ws = ins.split(",")
    return xs, ws, out


def _contract(
    a: jax.Array, a_ax: str, b: jax.Array, b_ax: str, out_ax: str, preferred_element_type: Any = None
) -> jax.Array:
    """`einsum(f"{a_ax},{b_ax}->{out_ax}", a, b)` as one `dot_general` whose contracted axes are listed in
    b's order. `jnp.einsum` may list them in another order ("btnh,nhd->btd" contracts (h, n)), and XLA then
    copies both operands into that order; for the o projection that is a transposed copy of its weight at
    every call (every decode step). No batch axes: a letter may not be in a, b and the output."""
    shared = [c for c in b_ax if c in a_ax]
    if any(c in out_ax for c in shared) or len(set(a_ax + b_ax)) != len(a_ax) + len(b_ax) - len(shared):
        raise ValueError(f"dense: {a_ax},{b_ax}->{out_ax} is not a projection (no batch or repeated axes)")
    dims = ([a_ax.index(c) for c in shared], [b_ax.index(c) for c in shared])
    y = jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=preferred_element_type)
    got = [c for c in a_ax if c not in shared] + [c for c in b_ax if c not in shared]
    return y if got == list(out_ax) else y.transpose([got.index(c) for c in out_ax])


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def dense(eq: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum(eq, x, w)` (x and w of one dtype) with the VJP described in the module docstring."""
    xs, ws, out = dense_axes(eq)
    return _contract(x, xs, w, ws, out)


def _dense_fwd(eq, x, w):
    return dense(eq, x, w), (x, w)


def _dense_bwd(eq, res, dy):
    x, w = res
    xs, ws, out = dense_axes(eq)
    dx = _contract(dy, out, w, ws, xs)
    dw = _contract(x, xs, dy, out, ws)
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def out_first_axes(eq: str) -> str:
    """The axes of eq's weight with the kept (output) axes first and the contracted ones last, each group in
    the weight's own order: "btd,dnh->btnh" -> "nhd", "btnh,nhd->btd" -> "dnh"."""
    xs, ws, _ = dense_axes(eq)
    return "".join(c for c in ws if c not in xs) + "".join(c for c in ws if c in xs)


def to_out_first(eq: str, w: jax.Array) -> jax.Array:
    """eq's weight w transposed to `out_first_axes(eq)`, the layout `dense_out_first` takes."""
    _, ws, _ = dense_axes(eq)
    return w.transpose([ws.index(c) for c in out_first_axes(eq)])


def dense_out_first(eq: str, x: jax.Array, w_t: jax.Array, preferred_element_type: Any = None) -> jax.Array:
    """`jnp.einsum(eq, x, w)` with w held as `to_out_first(eq, w)`, computed as w_t · x (the weight the left
    operand, result [kept w axes, x axes]) and then transposed to eq's output. The optimization barrier
    keeps XLA from folding that transpose into the next product, which would turn it back into a
    slow x-left form. For decoding and prefill; training uses `dense`. preferred_element_type: as for
    `jax.lax.dot_general` (the LM head's float32 logits)."""
    xs, _, out = dense_axes(eq)
    ws = out_first_axes(eq)
    got = "".join(c for c in ws + xs if (c in ws) != (c in xs))  # dot_general's own output order
    y = jax.lax.optimization_barrier(_contract(w_t, ws, x, xs, got, preferred_element_type))
    return y.transpose([got.index(c) for c in out])
