"""The one-pass AdamW update (train/fused_adamw.py, models/native/adamw.cc) against its formula and optax.

1. The kernel, called on its own with chosen step scalars, equals a float32 NumPy transcription of optax's
   formula bit for bit (each operation rounded once, as IEEE float32 does it) over sizes that cover whole
   16-element groups, a ragged tail and several 64 Ki work units, with and without gradient scaling.
2. `FusedAdamW.update` follows optax's chain (clip_by_global_norm + adamw + apply_updates) step after step,
   on optax's own state: counts equal, parameters and moments to float32 rounding (XLA rewrites some of
   optax's divisions, so not bit for bit), with the clipping on, off and not triggered.
3. The trainer's jitted step on the tiny preset takes the native update under `optimizer.kernels=auto` and
   gives the same losses and parameters as `xla` over a few steps; "native" where it cannot run is an error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.smollm2 import get_config
from models import cpu_kernels
from models.sharding import make_mesh
from tests.train_helpers import override, tiny_config
from train.fused_adamw import FusedAdamW, _adamw_leaf, choose
from train.optim import make_optimizer
from train.state import build_state, jit_train_step, put_batch

pytestmark = pytest.mark.skipif(not cpu_kernels.built(), reason="`make native` has not been run")

B1, B2, EPS, WD = 0.9, 0.95, 1e-8, 0.1
F = np.float32


def numpy_adamw(p, g, mu, nu, s):
    """optax's arithmetic in float32, one rounding per operation (s as the kernel takes it)."""
    scale, gnorm, bc1, bc2, step, clip = (F(x) for x in s)
    gc = (g / gnorm) * clip if scale else g
    m = F(1 - B1) * gc + F(B1) * mu
    v = F(1 - B2) * (gc * gc) + F(B2) * nu
    u = (m / bc1) / (np.sqrt(v / bc2) + F(EPS)) + F(WD) * p
    return p + step * u, m, v


ATTRS = dict(
    b1=F(B1), one_minus_b1=F(1 - B1), b2=F(B2), one_minus_b2=F(1 - B2), eps=F(EPS), weight_decay=F(WD)
)


@pytest.mark.parametrize("shape", [(5,), (3, 70_001), (2, 65_536)])
@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_kernel_equals_formula(shape, scale):
    rng = np.random.default_rng(len(shape) + int(scale))
    p, g = (rng.normal(size=shape).astype(F) for _ in range(2))
    mu = (rng.normal(size=shape) * 0.1).astype(F)
    nu = np.abs(rng.normal(size=shape) * 0.01).astype(F)
    s = np.array([scale, 3.7, 1 - B1**3, 1 - B2**3, -1e-3, 1.0], F)
    got = jax.jit(lambda *a: _adamw_leaf(*a, ATTRS))(p, g, mu, nu, s)
    want = numpy_adamw(p, g, mu, nu, s)
    for name, a, b in zip(("p", "mu", "nu"), got[:3], want):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=name)
    np.testing.assert_allclose(float(got[3][0]), np.sum(want[0].astype(np.float64) ** 2), rtol=1e-6)


def _tree(rng, scale=1.0):
    return {
        "w": jnp.asarray(rng.normal(size=(3, 40, 33)) * scale, jnp.float32),
        "b": jnp.asarray(rng.normal(size=(7,)) * scale, jnp.float32),
    }


@pytest.mark.parametrize("clip_norm", [1.0, 0.0, 1e4])
def test_update_follows_optax(clip_norm):
    cfg = get_config("ft")
    override(cfg, **{"optimizer.clip_norm": clip_norm, "optimizer.lr": 1e-2, "optimizer.min_lr": 1e-3})
    tx, sched = make_optimizer(cfg.optimizer, 10)
    fused = FusedAdamW(B1, B2, EPS, WD, clip_norm)
    rng = np.random.default_rng(0)
    params = _tree(rng)
    ref = jax.jit(lambda p, s, g: (optax.apply_updates(p, tx.update(g, s, p)[0]), tx.update(g, s, p)[1]))
    fus = jax.jit(lambda p, s, g: fused.update(g, s, p, sched, optax.tree.norm(g)))
    p_ref, s_ref = params, tx.init(params)
    p_fus, s_fus = params, tx.init(params)
    for i in range(6):
        g = _tree(rng, scale=10.0 if i % 2 else 1e-3)  # clipped (norm ~100) and not
        p_ref, s_ref = ref(p_ref, s_ref, g)
        p_fus, s_fus, p_norm = fus(p_fus, s_fus, g)
        assert jax.tree.structure(s_fus) == jax.tree.structure(s_ref)
        for a, b in zip(jax.tree.leaves((p_fus, s_fus)), jax.tree.leaves((p_ref, s_ref))):
            if jnp.issubdtype(a.dtype, jnp.integer):
                assert int(a) == int(b)  # the step counts
            else:
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(float(p_norm), float(optax.tree.norm(p_fus)), rtol=1e-6)


def _run(kernels: str, steps: int = 3):
    cfg = tiny_config("ft", **{"optimizer.kernels": kernels, "optimizer.lr": 1e-3, "train.grad_accum": 1})
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:1])
    tx, sched = make_optimizer(cfg.optimizer, steps)
    rng = np.random.default_rng(0)
    t = cfg.data.seq_len
    toks = rng.integers(3, 500, size=(2, t + 1)).astype(np.int32)  # tiny preset: vocab 512
    batch = {
        "inputs": toks[None, :, :-1],
        "targets": toks[None, :, 1:],
        "weights": np.ones((1, 2, t), np.float32),
        "segment_ids": np.ones((1, 2, t), np.int32),
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, 2, t)).copy(),
    }
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx)
        step = jit_train_step(built, tx, sched)
        state, losses = built.state, []
        for _ in range(steps):
            state, m = step(state, put_batch(batch, mesh))
            losses.append((float(m["loss"]), float(m["grad_norm"]), float(m["param_norm"])))
        hlo = step.lower(state, put_batch(batch, mesh)).as_text()
    return built.optimizer_kernels, losses, jax.device_get(state["params"]), hlo


def test_train_step_native_equals_xla():
    kind_a, losses_a, params_a, hlo_a = _run("auto")
    kind_x, losses_x, params_x, hlo_x = _run("xla")
    assert (kind_a, kind_x) == ("native", "xla")
    assert cpu_kernels.ADAMW_TARGET in hlo_a and cpu_kernels.ADAMW_TARGET not in hlo_x
    np.testing.assert_allclose(losses_a, losses_x, rtol=1e-5)
    assert losses_a[-1][0] < losses_a[0][0]  # it trains
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_native_where_it_cannot_run_is_an_error():
    cfg = get_config("ft")
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:1])
    params = {"w": jnp.zeros((4, 4), jnp.float32)}
    cfg.optimizer.mu_dtype = "bfloat16"
    assert choose(cfg.optimizer, mesh, params) is None  # auto: optax
    cfg.optimizer.kernels = "native"
    with pytest.raises(ValueError, match="optimizer.kernels=native: optimizer.mu_dtype=bfloat16"):
        choose(cfg.optimizer, mesh, params)
    cfg.optimizer.mu_dtype = "float32"
    with pytest.raises(ValueError, match=r"parameters \['bfloat16'\], not float32"):
        choose(cfg.optimizer, mesh, {"w": jnp.zeros((4, 4), jnp.bfloat16)})
    assert isinstance(choose(cfg.optimizer, mesh, params), FusedAdamW)
    cfg.optimizer.kernels = "xla"
    assert choose(cfg.optimizer, mesh, params) is None


def test_state_of_another_chain_is_an_error():
    cfg = get_config("ft")
    cfg.optimizer.clip_norm = 0.0  # the chain has no clipping state
    tx, sched = make_optimizer(cfg.optimizer, 10)
    params = {"w": jnp.ones((4, 4), jnp.float32)}
    with pytest.raises(ValueError, match=r"FusedAdamW\(clip_norm=1.0\) needs the state"):
        FusedAdamW(B1, B2, EPS, WD, 1.0).update(params, tx.init(params), params, sched, jnp.float32(1.0))
