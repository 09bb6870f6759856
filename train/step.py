"""The training step: response-only cross-entropy, gradient accumulation, one optimizer update.

`train_step(state, batch) -> (state, metrics)` where
  state = {"step": int32[], "params": trainable weights, "frozen": frozen weights, "opt_state", "rng"}
  batch = {inputs, targets, weights, segment_ids, positions}, each [grad_accum, rows, seq_len].
The loss is Σ weight·CE over every micro-batch divided by the number of response tokens of the whole
accumulated batch (so 4 micro-batches give exactly the gradient of one batch holding the same tokens).
Compute runs in the model config's `dtype` (bf16 by default) on `param_dtype` master weights (fp32);
gradients and their accumulator are in the master dtype. The optimizer update is optax's, or the same
arithmetic in one pass per tensor on one CPU device (`config.optimizer.kernels`, train/fused_adamw.py).

`loss_chunk_tokens` (config `train.loss_chunk_tokens`, 0 = off): the cross-entropy is computed by
`chunked_nll`, a few sequence positions at a time, instead of from the full float32 [rows, T, vocab] logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.custom_derivatives import SymbolicZero

from models.modules import forward
from models.sharding import constrain

from .fused_adamw import FusedAdamW

TrainState = dict[str, Any]


def token_nll(graphdef, params, frozen, mb, loss_chunk_tokens: int = 0) -> tuple[jax.Array, jax.Array]:
    """(Σ weighted CE, Σ weights) of one micro-batch; `loss_chunk_tokens` > 0: by `chunked_nll`."""
    model = nnx.merge(graphdef, params, frozen)
    w = mb["weights"].astype(jnp.float32)
    if loss_chunk_tokens > 0:
        hidden, _ = forward(model, mb["inputs"], mb["positions"], mb["segment_ids"], return_hidden=True)
        tied = model.cfg.tie_embeddings
        head = model.embed[...] if tied else model.lm_head[...]
        return chunked_nll(hidden, head, mb["targets"], w, loss_chunk_tokens, tied=tied), jnp.sum(w)
    logits, _ = model(mb["inputs"], mb["positions"], mb["segment_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), mb["targets"])
    return jnp.sum(ce * w), jnp.sum(w)


def _to_chunks(a: jax.Array, n_chunks: int, chunk_len: int) -> jax.Array:
    """[B, T, ...] -> [C, B, n, ...], T zero-padded to C·n (padding has weight 0)."""
    pad = n_chunks * chunk_len - a.shape[1]
    a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    return jnp.moveaxis(a.reshape(a.shape[0], n_chunks, chunk_len, *a.shape[2:]), 1, 0)


def _from_chunks(a: jax.Array, t: int) -> jax.Array:
    """[C, B, n, ...] -> [B, T, ...] (padding dropped)."""
    a = jnp.moveaxis(a, 0, 1)
    return a.reshape(a.shape[0], -1, *a.shape[3:])[:, :t]


def chunked_nll(
    hidden: jax.Array,
    head: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    chunk_tokens: int,
    *,
    tied: bool,
) -> jax.Array:
    """Σ weights · cross-entropy(hidden @ head, targets), never holding more than ~`chunk_tokens` positions
    of float32 logits, and skipping the LM head wherever no position has a weight.

    hidden [B,T,D] (compute dtype, final norm applied); head: the LM head [D,V], or the embedding [V,D] when
    `tied`, in its master dtype (cast to the compute dtype for the matmuls, as the model does); targets int
    [B,T]; weights float32 [B,T], a mask (response tokens), treated as constants: no gradient flows to them.
    The sequence is cut into C chunks of n = ⌈T/C⌉ positions (all rows together, B·n ≤ chunk_tokens where
    it can; T zero-padded to C·n with weight 0) and a scan goes over them.

    A chunk whose weights are all 0 (prompt, padding) adds nothing to the loss or the gradients, so a
    `lax.cond` skips its LM-head products and softmax (measured on the shipped data at 64-token chunks and
    256-token rows: 26% of Dolly's chunks and 14% of LIMA's; the prompt half of bench/train_step.py's rows).

    A custom VJP computes the gradient in the same pass as the loss: per chunk, logits -> log-sum-exp,
    d logits = (softmax - one_hot) · weight, cast to the compute dtype, then d hidden = d logits · headᵀ and
    d head += hiddenᵀ · d logits (accumulated in float32 across chunks). The backward pass only scales them
    by the incoming cotangent, so the LM head matmul runs 3 times as without chunking (no recompute), the
    [B,T,V] float32 logits, softmax and their gradient are never in memory at once, and the two
    gradient matmuls run in the compute dtype (bf16) instead of float32 × bf16. d head is skipped when the
    head is not being differentiated (LoRA: the head is frozen). Without differentiation (evaluation) the
    scan computes the loss only.
    """
    b, t, _ = hidden.shape
    n_chunks = max(1, math.ceil(b * t / max(chunk_tokens, 1)))
    n_chunks = min(n_chunks, t)
    chunk_len = math.ceil(t / n_chunks)
    n_chunks = math.ceil(t / chunk_len)
    dt = hidden.dtype
    eq_logits, eq_dx, eq_dw = (
        ("bnd,vd->bnv", "bnv,vd->bnd", "bnd,bnv->vd")
        if tied
        else ("bnd,dv->bnv", "bnv,dv->bnd", "bnd,bnv->dv")
    )

    def scan_chunks(h, hd, tg, w, need_dx: bool, need_dw: bool):
        hd_c = hd.astype(dt)
        vocab = hd.shape[0] if tied else hd.shape[1]

        def chunk(x, tgt, wt, dw):
            logits = jnp.einsum(eq_logits, x, hd_c, preferred_element_type=jnp.float32)
            logits = constrain(logits, ("batch", "length", "act_vocab"))
            lse = jax.nn.logsumexp(logits, axis=-1)
            ce = lse - jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
            dx = None
            if need_dx or need_dw:
                onehot = tgt[..., None] == jnp.arange(vocab, dtype=tgt.dtype)
                dlogits = ((jnp.exp(logits - lse[..., None]) - onehot) * wt[..., None]).astype(dt)
                if need_dx:
                    dx = jnp.einsum(eq_dx, dlogits, hd_c, preferred_element_type=jnp.float32).astype(dt)
                if need_dw:
                    dw = dw + jnp.einsum(eq_dw, x, dlogits, preferred_element_type=jnp.float32)
            return jnp.sum(ce * wt), dw, dx

        def no_weights(x, tgt, wt, dw):  # nothing to add: no LM-head product, no softmax
            return jnp.zeros((), jnp.float32), dw, jnp.zeros(x.shape, dt) if need_dx else None

        def body(carry, xs):
            loss, dw = carry
            x, tgt, wt = xs  # [B,n,D], [B,n], [B,n]
            chunk_loss, dw, dx = jax.lax.cond(jnp.any(wt != 0), chunk, no_weights, x, tgt, wt, dw)
            return (loss + chunk_loss, dw), dx

        dw0 = jnp.zeros(hd.shape, jnp.float32) if need_dw else None
        xs = (_to_chunks(h, n_chunks, chunk_len), _to_chunks(tg, n_chunks, chunk_len))
        xs = (*xs, _to_chunks(w, n_chunks, chunk_len))
        (loss, dw), dx = jax.lax.scan(body, (jnp.zeros((), jnp.float32), dw0), xs)
        return loss, dw, None if dx is None else _from_chunks(dx, t)

    @jax.custom_vjp
    def nll(h, hd, tg, w):
        return scan_chunks(h, hd, tg, w, False, False)[0]

    def nll_fwd(h, hd, tg, w):
        loss, dw, dx = scan_chunks(h.value, hd.value, tg.value, w.value, h.perturbed, hd.perturbed)
        return loss, (dx, dw)

    def nll_bwd(res, g):
        dx, dw = res
        if isinstance(g, SymbolicZero):
            return None, None, None, None
        dh = (g * dx.astype(jnp.float32)).astype(dt) if dx is not None else None
        dhd = (g * dw).astype(head.dtype) if dw is not None else None
        return dh, dhd, None, None  # targets and weights are data: no cotangent

    nll.defvjp(nll_fwd, nll_bwd, symbolic_zeros=True)
    return nll(hidden, head, targets, weights)


def accumulated_grads(graphdef, params, frozen, batch, loss_chunk_tokens: int = 0):
    """(mean loss, mean grads, response-token count) over the micro-batches of `batch` ([A, rows, T]).

    Each micro-batch's loss is divided by the response tokens of the whole batch before differentiating, so
    the gradients come out already averaged (no pass over them to divide), and the first micro-batch's
    gradients start the sum (no zero-filled accumulator; with A = 1 there is no accumulation at all)."""
    n_resp = jnp.sum(batch["weights"].astype(jnp.float32))
    denom = jnp.maximum(n_resp, 1.0)

    def grads(mb):
        return jax.value_and_grad(lambda p: token_nll(graphdef, p, frozen, mb, loss_chunk_tokens)[0] / denom)(
            params
        )

    loss, g = grads(jax.tree.map(lambda a: a[0], batch))
    if batch["weights"].shape[0] > 1:

        def micro(carry, mb):
            g_acc, loss_acc = carry
            loss, g = grads(mb)
            return (jax.tree.map(jnp.add, g_acc, g), loss_acc + loss), None

        rest = jax.tree.map(lambda a: a[1:], batch)
        (g, loss), _ = jax.lax.scan(micro, (g, loss), rest)
    return loss, g, n_resp


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    schedule,
    loss_chunk_tokens: int = 0,
    fused: FusedAdamW | None = None,
) -> Callable:
    """The un-jitted step function (jit it with shardings, see train/state.py). `fused` runs `tx`'s update
    in one pass per tensor (train/fused_adamw.py; `tx` must be `train.optim.make_optimizer`'s)."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        params = state["params"]
        loss, grads, n_resp = accumulated_grads(graphdef, params, state["frozen"], batch, loss_chunk_tokens)
        grad_norm = optax.tree.norm(grads)
        if fused is None:
            updates, opt_state = tx.update(grads, state["opt_state"], params)
            new_params = optax.apply_updates(params, updates)
            param_norm = optax.tree.norm(new_params)
        else:
            new_params, opt_state, param_norm = fused.update(
                grads, state["opt_state"], params, schedule, grad_norm
            )
        rng, _ = jax.random.split(state["rng"])  # dropout is 0; the key still advances with the step
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "param_norm": param_norm,
            "lr": schedule(state["step"]),
            "tokens": jnp.sum(batch["segment_ids"] > 0),
            "response_tokens": n_resp,
        }
        new_state = {
            "step": state["step"] + 1,
            "params": new_params,
            "frozen": state["frozen"],
            "opt_state": opt_state,
            "rng": rng,
        }
        return new_state, metrics

    return train_step
