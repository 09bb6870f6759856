"""LoRA as in the authors' pasero runs (configs/released/defaults.json): init, forward, and optimizer steps.

The references below are written independently of models/lora.py, in pasero's own shapes: a LoRA'd Linear has
`down.weight` [rank, in] and `up.weight` [out, rank] and computes x·Wᵀ + up(down(x))·lora_alpha/rank
(pasero/models/modules.py:85-95, 290-320); our A, B are down.weightᵀ, up.weightᵀ. Updates follow
pasero/optimization.py: clip by global norm (coef min(1, c/(norm+1e-6))), then Adam with decoupled weight decay.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from models.config import preset
from models.lora import _IN_OUT, PROJ_EQ, LoRAConfig, init_lora
from models.modules import _proj
from models.sharding import make_mesh
from tests.train_helpers import tiny_config
from train.optim import make_optimizer
from train.state import build_state
from train.step import make_train_step, token_nll

RANK, ALPHA = 16, 8.0


# ------------------------------------------------------------------------------------------------ init


def _fan_in(a_shape: tuple[int, ...]) -> int:
    return math.prod(a_shape[1:-1])


@pytest.fixture(scope="module")
def wide_init():
    cfg = preset("tiny").replace(hidden_size=256, intermediate_size=512, head_dim=64)
    return init_lora(cfg, LoRAConfig(rank=RANK, alpha=ALPHA), jax.random.PRNGKey(0))


def test_config_defaults_are_pasero():
    lora = LoRAConfig()
    assert (lora.rank, lora.alpha, lora.init) == (RANK, ALPHA, "pasero")
    assert lora.scale == 0.5  # lora_alpha / projection_dim (pasero/models/modules.py:301)
    with pytest.raises(ValueError, match="init"):
        LoRAConfig(init="xavier")


def test_pasero_init_distribution(wide_init):
    for name in _IN_OUT:
        a = np.asarray(wide_init[f"{name}_a"][0], np.float64)
        b = np.asarray(wide_init[f"{name}_b"][0])
        fan_in = _fan_in(a.shape)
        bound = 1 / math.sqrt(fan_in)
        assert np.all(b == 0), name
        assert np.abs(a).max() <= bound * (1 + 1e-6), name
        assert np.abs(a).max() > 0.98 * bound, name
        assert a.std() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05), name
        assert abs(a.mean()) < 0.05 * bound, name


def test_pasero_init_matches_torch_kaiming_uniform(wide_init):
    """Same law as torch.nn.init.kaiming_uniform_(a=√5) on a Linear(fan_in → rank) weight [rank, fan_in]."""
    torch.manual_seed(0)
    for name in ("q", "o", "down"):
        a = np.asarray(wide_init[f"{name}_a"][0], np.float64)
        fan_in = _fan_in(a.shape)
        w = torch.empty(a.size // fan_in, fan_in)  # pasero's down.weight, as many values as ours
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        ref = w.double().numpy().ravel()
        qs = np.linspace(0.01, 0.99, 25)
        np.testing.assert_allclose(np.quantile(a, qs), np.quantile(ref, qs), atol=0.04 / math.sqrt(fan_in))
        assert np.abs(ref).max() <= 1 / math.sqrt(fan_in) * (1 + 1e-6)


def test_normal_init_kept_as_option():
    cfg = preset("tiny").replace(hidden_size=256, intermediate_size=512, head_dim=64)
    out = init_lora(cfg, LoRAConfig(init="normal"), jax.random.PRNGKey(0))
    a = np.asarray(out["q_a"][0], np.float64)
    assert a.std() == pytest.approx(1 / math.sqrt(_fan_in(a.shape)), rel=0.05)
    assert np.abs(a).max() > 1 / math.sqrt(_fan_in(a.shape))  # not bounded like the uniform


# ------------------------------------------------------------------------------------------------ forward


def _pasero_linear(x: np.ndarray, weight: np.ndarray, down: np.ndarray, up: np.ndarray, alpha: float):
    """pasero's Linear with LoRA, torch layout: weight [out, in], down [r, in], up [out, r]."""
    rank = down.shape[0]
    return x @ weight.T + (x @ down.T) @ up.T * (alpha / rank)


@pytest.mark.parametrize("name", ["q", "o", "down"])
def test_projection_with_lora_matches_pasero(name):
    cfg = preset("tiny")
    rng = np.random.default_rng(1)
    in_axes, out_axes = _IN_OUT[name]
    dims = {"embed": cfg.hidden_size, "q_heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads}
    dims |= {"head_dim": cfg.head_dim, "mlp": cfg.intermediate_size}
    ins, outs = [dims[a] for a in in_axes], [dims[a] for a in out_axes]
    x = rng.normal(size=(2, 5, *ins)).astype(np.float32)
    w = rng.normal(size=(*ins, *outs)).astype(np.float32) / math.sqrt(math.prod(ins))
    a = rng.uniform(-0.2, 0.2, size=(*ins, RANK)).astype(np.float32)
    b = rng.normal(size=(RANK, *outs)).astype(np.float32) * 0.1
    ours = np.asarray(
        _proj(jnp.asarray(x), jnp.asarray(w), (jnp.asarray(a), jnp.asarray(b)), ALPHA / RANK, PROJ_EQ[name])
    )
    n_in, n_out = math.prod(ins), math.prod(outs)
    ref = _pasero_linear(
        x.reshape(2, 5, n_in).astype(np.float64),
        w.reshape(n_in, n_out).T.astype(np.float64),
        a.reshape(n_in, RANK).T.astype(np.float64),
        b.reshape(RANK, n_out).T.astype(np.float64),
        ALPHA,
    )
    np.testing.assert_allclose(ours.reshape(2, 5, n_out), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ steps


def _batch(seed: int, rows: int = 2, t: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 512, size=(1, rows, t + 1))
    weights = np.ones((1, rows, t), np.float32)
    weights[..., :4] = 0  # a prompt
    return {
        "inputs": ids[..., :-1].astype(np.int32),
        "targets": ids[..., 1:].astype(np.int32),
        "weights": weights,
        "segment_ids": np.ones((1, rows, t), np.int32),
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, rows, t)).copy(),
    }


def _pasero_lora_grads(lora: dict, g_w: dict, alpha: float) -> dict[str, np.ndarray]:
    """dL/d(our A, B) from dL/dW of each adapted projection, through pasero's down/up weights, per layer."""
    out = {}
    for name in _IN_OUT:
        a, b = lora[f"{name}_a"], lora[f"{name}_b"]
        layers, rank = a.shape[0], a.shape[-1]
        n_in, n_out = math.prod(a.shape[1:-1]), math.prod(b.shape[2:])
        ga, gb = np.zeros((layers, n_in, rank)), np.zeros((layers, rank, n_out))
        for li in range(layers):
            down = a[li].reshape(n_in, rank).T  # [r, in]
            up = b[li].reshape(rank, n_out).T  # [out, r]
            g = g_w[name][li].reshape(n_in, n_out).T  # dL/d weight in torch layout [out, in]
            d_up = alpha / rank * g @ down.T  # [out, r]
            d_down = alpha / rank * up.T @ g  # [r, in]
            ga[li], gb[li] = d_down.T, d_up.T
        out[f"{name}_a"], out[f"{name}_b"] = ga.reshape(a.shape), gb.reshape(b.shape)
    return out


def _pasero_update(params, grads, m, v, t: int, lr: float, opt) -> dict[str, np.ndarray]:
    """clip_grad_norm_ then optimization.Adam.step (t = 1, 2, ...), in float64; updates m, v in place."""
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    coef = min(1.0, opt.clip_norm / (norm + 1e-6)) if opt.clip_norm > 0 else 1.0
    new = {}
    for k, p in params.items():
        g = grads[k] * coef
        m[k] = opt.b1 * m[k] + (1 - opt.b1) * g
        v[k] = opt.b2 * v[k] + (1 - opt.b2) * g * g
        step_size = lr / (1 - opt.b1**t)
        denom = np.sqrt(v[k]) / math.sqrt(1 - opt.b2**t) + opt.eps
        p = p - lr * opt.weight_decay * p
        new[k] = p - step_size * m[k] / denom
    return new


def _pasero_lr(opt, steps: int, step: int) -> float:
    """pasero/optimization.py:43-50 with warmup 0."""
    return max(opt.lr - step * (opt.lr - opt.min_lr) / steps, opt.min_lr)


def test_two_lora_steps_match_pasero_reference():
    """From the pasero init (B = 0) and from a random B: two steps, clipping active, against the reference."""
    cfg = tiny_config("", **{"model.tokenizer": ""})
    cfg.lora.enabled = True
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.init) == (RANK, ALPHA, "pasero")
    cfg.optimizer.lr, cfg.optimizer.min_lr = 1e-3, 1e-4
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:1])
    tx, sched = make_optimizer(cfg.optimizer, cfg.train.steps)
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx)

    def grad_w(params, mb):
        """dL/dW of the frozen projections (= dL/d(W + A·B·s)) for the mean response-token loss."""
        n = jnp.sum(mb["weights"])
        g = jax.grad(lambda fr: token_nll(built.graphdef, params, fr, mb)[0] / n)(built.state["frozen"])
        return {k: g["layers"][k] for k in _IN_OUT}

    jit_grad_w = jax.jit(grad_w)

    def ref_grads(params: dict[str, np.ndarray], batch) -> dict[str, np.ndarray]:
        jparams = {"lora": {k: jnp.asarray(p, jnp.float32) for k, p in params.items()}}
        g_w = jit_grad_w(jparams, {k: jnp.asarray(x[0]) for k, x in batch.items()})
        return _pasero_lora_grads(params, {k: np.asarray(g, np.float64) for k, g in g_w.items()}, ALPHA)

    batches = [_batch(10), _batch(11)]
    rng = np.random.default_rng(2)
    p_init = {k: np.asarray(v, np.float64) for k, v in built.state["params"]["lora"].items()}
    p_rand = {k: rng.normal(size=p.shape) * 0.05 if k.endswith("_b") else p for k, p in p_init.items()}
    p_rand = {k: p.astype(np.float32).astype(np.float64) for k, p in p_rand.items()}
    # clip at half the first gradient's norm so that clipping shapes the second update
    g0 = ref_grads(p_init, batches[0])
    cfg.optimizer.clip_norm = 0.5 * math.sqrt(sum(float(np.sum(g * g)) for g in g0.values()))
    tx, sched = make_optimizer(cfg.optimizer, cfg.train.steps)
    step = jax.jit(make_train_step(built.graphdef, tx, sched))
    opt = cfg.optimizer

    for case, p0 in (("init", p_init), ("random B", p_rand)):
        params = {"lora": {k: jnp.asarray(p, jnp.float32) for k, p in p0.items()}}
        ours = {**built.state, "params": params, "opt_state": jax.jit(tx.init)(params)}
        m = {k: np.zeros_like(p) for k, p in p0.items()}
        v = {k: np.zeros_like(p) for k, p in p0.items()}
        for t, batch in enumerate(batches, start=1):
            # each step starts from our parameters (ill-conditioned elements of the previous update, see below,
            # would otherwise carry over), with the reference's own Adam moments
            ref = {k: np.asarray(x, np.float64) for k, x in ours["params"]["lora"].items()}
            grads = ref_grads(ref, batch)
            if case == "init" and t == 1:
                assert all(np.all(grads[f"{n}_a"] == 0) for n in _IN_OUT)  # B = 0: no gradient for A yet
                assert all(np.any(grads[f"{n}_b"] != 0) for n in _IN_OUT)
            lr = _pasero_lr(opt, cfg.train.steps, t - 1)
            ref = _pasero_update(ref, grads, m, v, t, lr, opt)
            ours, metrics = step(ours, {k: jnp.asarray(x) for k, x in batch.items()})
            (adam,) = [
                x
                for x in jax.tree.leaves(ours["opt_state"], is_leaf=lambda x: hasattr(x, "nu"))
                if hasattr(x, "nu")
            ]
            assert float(metrics["lr"]) == pytest.approx(lr, rel=1e-6)
            ours_g = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            assert float(metrics["grad_norm"]) == pytest.approx(ours_g, rel=1e-4), (case, t)
            for k, want in ref.items():
                got = np.asarray(ours["params"]["lora"][k], np.float64)
                # the clipped gradients' moments: Adam's μ, ν against pasero's exp_avg, exp_avg_sq
                for name, mine, theirs in (("mu", adam.mu, m), ("nu", adam.nu, v)):
                    np.testing.assert_allclose(
                        np.asarray(mine["lora"][k], np.float64),
                        theirs[k],
                        rtol=1e-4,
                        atol=1e-4 * np.abs(theirs[k]).max(),
                        err_msg=f"{case} step {t} {k} {name}",
                    )
                # Adam divides by sqrt(v̂) + eps: where a gradient is within ~1e2·eps of 0 the update is
                # ill-conditioned (float32 rounding of g decides it), so compare where sqrt(v̂) ≥ 1e-6 or v = 0
                # (no gradient yet: weight decay alone)
                ok = (np.sqrt(v[k] / (1 - opt.b2**t)) >= 1e-6) | (v[k] == 0)
                np.testing.assert_allclose(
                    got[ok], want[ok], rtol=1e-5, atol=5e-3 * lr, err_msg=f"{case} step {t} {k}"
                )
                np.testing.assert_allclose(got, want, atol=2 * lr)  # everywhere: at most one Adam step apart
                if k.endswith("_b") or t == 2:
                    assert np.abs(got - p0[k]).max() > 0.5 * lr, (case, t, k)  # the adapter moved
