"""The optimizer update of `train.optim.make_optimizer` in one pass per tensor (CPU).

optax runs clip_by_global_norm + adamw + apply_updates as separate element-wise passes; on XLA:CPU that is five
passes over each parameter-sized tensor (clipped gradient, first moment, second moment, parameter, and the
norm of the new parameters for the `param_norm` metric), reading the gradient three times. The native kernel
(models/native/adamw.cc, `xlit_adamw`) reads p, g, mu, nu once, writes p, mu, nu in place and returns the
sum of the new parameters' squares. The arithmetic is optax's formula, one float32 rounding per operation,
with the step scalars (bias corrections, learning rate, clipping) computed here by the same expressions
optax uses. It equals a NumPy float32 transcription of that formula bit for bit, and optax under XLA to
float32 rounding: XLA's simplifier rewrites some of optax's divisions and LLVM fuses some multiply-adds,
differently from program to program (tests/test_train_fused_adamw.py, docs/train.md).

`config.optimizer.kernels`: "xla" = optax; "native" = this (an error where it cannot run); "auto" = native
where it applies (CPU backend, one device, float32 parameters and moments, library built), else optax.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from models import cpu_kernels


class OptimizerKernels(enum.Enum):
    """How the AdamW update runs (`config.optimizer.kernels`); the result is the same."""

    AUTO = "auto"  # NATIVE where it applies, else XLA
    XLA = "xla"  # optax's transformations, any backend, dtype and mesh
    NATIVE = "native"  # FusedAdamW: one pass per tensor, float32 on one CPU device


@dataclasses.dataclass(frozen=True)
class FusedAdamW:
    """`optax.chain([clip_by_global_norm(clip_norm),] adamw(schedule, b1, b2, eps, weight_decay))` followed by
    `optax.apply_updates`, on that chain's own state (so checkpoints and shardings do not change)."""

    b1: float
    b2: float
    eps: float
    weight_decay: float
    clip_norm: float  # 0 = no clipping (no clip state in the chain)

    def update(
        self, grads: Any, opt_state: tuple, params: Any, schedule: optax.Schedule, grad_norm: jax.Array
    ) -> tuple[Any, tuple, jax.Array]:
        """(new params, new optimizer state, global norm of the new params). `grad_norm` is
        `optax.tree.norm(grads)`, the norm clip_by_global_norm computes."""
        *clip_state, (adam, wd_state, sched_state) = opt_state
        if len(clip_state) != (self.clip_norm > 0) or not isinstance(adam, optax.ScaleByAdamState):
            raise ValueError(
                f"FusedAdamW(clip_norm={self.clip_norm}) needs the state of train.optim.make_optimizer's chain "
                f"for the same optimizer config; got {jax.tree.structure(opt_state)}"
            )
        count_inc = optax.safe_increment(adam.count)
        # the scalars as optax.tree.bias_correction, scale_by_learning_rate and clip_by_global_norm form them
        bc1 = (1 - self.b1**count_inc).astype(jnp.float32)
        bc2 = (1 - self.b2**count_inc).astype(jnp.float32)
        step = jnp.asarray(-1 * schedule(sched_state.count), jnp.float32)
        if self.clip_norm > 0:
            scale_grad = jnp.logical_not(grad_norm < self.clip_norm)
            clip = self.clip_norm
        else:
            scale_grad, clip = jnp.asarray(False), 1.0
        s = jnp.stack(
            [
                scale_grad.astype(jnp.float32),
                grad_norm.astype(jnp.float32),
                bc1,
                bc2,
                step,
                jnp.asarray(clip, jnp.float32),
            ]
        )
        attrs = dict(
            b1=np.float32(self.b1),
            one_minus_b1=np.float32(1 - self.b1),
            b2=np.float32(self.b2),
            one_minus_b2=np.float32(1 - self.b2),
            eps=np.float32(self.eps),
            weight_decay=np.float32(self.weight_decay),
        )
        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves, mu_leaves, nu_leaves = (treedef.flatten_up_to(t) for t in (grads, adam.mu, adam.nu))
        outs = [_adamw_leaf(*leaf, s, attrs) for leaf in zip(p_leaves, g_leaves, mu_leaves, nu_leaves)]
        new_p, new_mu, new_nu, sumsq = (list(x) for x in zip(*outs))
        unflat = treedef.unflatten
        new_adam = adam._replace(count=count_inc, mu=unflat(new_mu), nu=unflat(new_nu))
        new_sched = sched_state._replace(count=optax.safe_increment(sched_state.count))
        new_state = (*clip_state, (new_adam, wd_state, new_sched))
        return unflat(new_p), new_state, jnp.sqrt(sum(ss[0] for ss in sumsq))


def _adamw_leaf(p, g, mu, nu, s, attrs):
    cpu_kernels.require()
    shape = (p.shape, p.shape, p.shape, (1,))
    out = [jax.ShapeDtypeStruct(sh, jnp.float32) for sh in shape]
    call = jax.ffi.ffi_call(cpu_kernels.ADAMW_TARGET, out, input_output_aliases={0: 0, 2: 1, 3: 2})
    return call(p, g, mu, nu, s, **attrs)


def native_unusable(opt_cfg, mesh: Mesh, params: Any) -> str | None:
    """Why the one-pass update cannot run this optimizer here, or None if it can."""
    if jax.default_backend() != "cpu":
        return f"the backend is {jax.default_backend()}, the native kernel is CPU-only"
    if math.prod(mesh.devices.shape) > 1:
        return f"the parameters are sharded over {math.prod(mesh.devices.shape)} devices"
    dtypes = {jnp.dtype(x.dtype) for x in jax.tree.leaves(params)}
    if dtypes != {jnp.dtype(jnp.float32)}:
        return f"parameters {sorted(map(str, dtypes))}, not float32"
    if opt_cfg.mu_dtype != "float32":
        return f"optimizer.mu_dtype={opt_cfg.mu_dtype}, not float32"
    if not cpu_kernels.built():
        return cpu_kernels.NOT_BUILT
    return None


def choose(opt_cfg, mesh: Mesh, params: Any) -> FusedAdamW | None:
    """The one-pass update `config.optimizer.kernels` asks for (None = optax); raises ValueError where
    "native" is asked for and cannot run."""
    kernels = OptimizerKernels(opt_cfg.get("kernels", "auto"))
    if kernels is OptimizerKernels.XLA:
        return None
    why = native_unusable(opt_cfg, mesh, params)
    if why is not None:
        if kernels is OptimizerKernels.NATIVE:
            raise ValueError(f"optimizer.kernels=native: {why}")
        if jax.default_backend() == "cpu" and not cpu_kernels.built():
            logging.warning("optimizer.kernels=auto: optax's update (%s)", why)
        return None
    return FusedAdamW(
        b1=float(opt_cfg.b1),
        b2=float(opt_cfg.b2),
        eps=float(opt_cfg.eps),
        weight_decay=float(opt_cfg.weight_decay),
        clip_norm=float(opt_cfg.clip_norm),
    )
