"""The training step: response-only cross-entropy, gradient accumulation, one optimizer update.

`train_step(state, batch) -> (state, metrics)` where
  state = {"step": int32[], "params": trainable weights, "frozen": frozen weights, "opt_state", "rng"}
  batch = {inputs, targets, weights, segment_ids, positions}, each [grad_accum, rows, seq_len].
The loss is Σ weight·CE over every micro-batch divided by the number of response tokens of the whole
accumulated batch (so 4 micro-batches give exactly the gradient of one batch holding the same tokens).
Compute runs in the model config's `dtype` (bf16 by default) on `param_dtype` master weights (fp32);
gradients and their accumulator are in the master dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

TrainState = dict[str, Any]


def token_nll(graphdef, params, frozen, mb) -> tuple[jax.Array, jax.Array]:
    """(Σ weighted CE, Σ weights) of one micro-batch."""
    model = nnx.merge(graphdef, params, frozen)
    logits, _ = model(mb["inputs"], mb["positions"], mb["segment_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), mb["targets"])
    w = mb["weights"].astype(jnp.float32)
    return jnp.sum(ce * w), jnp.sum(w)


def accumulated_grads(graphdef, params, frozen, batch):
    """(mean loss, mean grads, response-token count) over the micro-batches of `batch` ([A, rows, T])."""
    n_resp = jnp.sum(batch["weights"].astype(jnp.float32))

    def micro(carry, mb):
        g_acc, loss_acc = carry
        loss, g = jax.value_and_grad(lambda p: token_nll(graphdef, p, frozen, mb)[0])(params)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), g_acc, g)
        return (g_acc, loss_acc + loss), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (g_sum, loss_sum), _ = jax.lax.scan(micro, (zeros, jnp.zeros((), jnp.float32)), batch)
    denom = jnp.maximum(n_resp, 1.0)
    grads = jax.tree.map(lambda g: (g / denom).astype(g.dtype), g_sum)
    return loss_sum / denom, grads, n_resp


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule) -> Callable:
    """The un-jitted step function (jit it with shardings, see train/state.py)."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        params = state["params"]
        loss, grads, n_resp = accumulated_grads(graphdef, params, state["frozen"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        rng, _ = jax.random.split(state["rng"])  # dropout is 0; the key still advances with the step
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(new_params),
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
