"""Optimizer and learning-rate schedules.

Adam (β1, β2) with decoupled weight decay (optax.adamw: p ← p − lr·(adam_update + wd·p), as PyTorch AdamW),
optional global-norm clipping. The optimizer only ever sees the trainable parameters (all of them for full
fine-tuning, the LoRA adapters alone for LoRA), so frozen weights have no optimizer state.

Schedules, for update t = 0, 1, 2, ... (the t-th optimizer step uses lr(t)), with W = warmup_steps:
  * "inverse_sqrt" (paper, Appendix B): lr · sqrt(τ / max(t + 1, τ)) with τ = max(W, 1) — without warmup the
    first update uses lr, then lr/√2, lr/√3, ... (fairseq's inverse_sqrt with warmup 1);
  * "linear_to_min" (released configs: warmup 0, lr → min_lr over max_steps): lr + (min_lr − lr) · min(t, T)/T;
  * "constant": lr.
With W > 0, lr(t) is first scaled by (t + 1)/W for t < W (linear warmup).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("inverse_sqrt", "linear_to_min", "constant")


def make_schedule(name: str, *, lr: float, min_lr: float, steps: int, warmup: int = 0) -> optax.Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={name!r}: use one of {SCHEDULES}")

    def fn(count):
        t = jnp.asarray(count, jnp.float32)
        if name == "inverse_sqrt":
            tau = float(max(warmup, 1))
            v = lr * jnp.sqrt(tau / jnp.maximum(t + 1.0, tau))
        elif name == "linear_to_min":
            v = lr + (min_lr - lr) * jnp.minimum(t, steps) / steps
        else:
            v = jnp.full((), lr, jnp.float32)
        if warmup > 0:
            v = v * jnp.minimum((t + 1.0) / warmup, 1.0)
        return v

    return fn


def make_optimizer(opt_cfg, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule) from `config.optimizer` (see configs/common.py)."""
    sched = make_schedule(
        opt_cfg.schedule, lr=opt_cfg.lr, min_lr=opt_cfg.min_lr, steps=steps, warmup=opt_cfg.warmup_steps
    )
    mu_dtype = None if opt_cfg.mu_dtype == "float32" else jnp.dtype(opt_cfg.mu_dtype)
    parts = []
    if opt_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt_cfg.clip_norm))
    parts.append(
        optax.adamw(
            sched,
            b1=opt_cfg.b1,
            b2=opt_cfg.b2,
            eps=opt_cfg.eps,
            weight_decay=opt_cfg.weight_decay,
            mu_dtype=mu_dtype,
        )
    )
    return optax.chain(*parts), sched
