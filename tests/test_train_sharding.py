"""A train step on a 2×2×2 (data, fsdp, tensor) mesh of 8 fake CPU devices equals the 1-device step.

Runs in a subprocess: the device count is fixed when XLA starts (the main pytest process has one device).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.train_helpers import compile_cache_env

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import jax, numpy as np
assert jax.device_count() == 8, jax.devices()
from models.sharding import make_mesh
from tests.train_helpers import tiny_config
from train.optim import make_optimizer
from train.state import build_state, jit_train_step, put_batch

cfg = tiny_config("ft", **{"model.tokenizer": "", "optimizer.lr": 1e-3})
tx, sched = make_optimizer(cfg.optimizer, cfg.train.steps)
rng = np.random.default_rng(0)
toks = rng.integers(3, 512, size=(2, 4, 32)).astype(np.int32)
seg = np.repeat(np.repeat(np.array([1, 2]), 16)[None, None], 4, 1).repeat(2, 0).astype(np.int32)
batch = {"inputs": toks, "targets": np.roll(toks, -1, -1), "segment_ids": seg,
         "weights": (rng.random(toks.shape) > 0.3).astype(np.float32),
         "positions": np.tile(np.arange(16), 2)[None, None].repeat(4, 1).repeat(2, 0).astype(np.int32)}
results = {}
init = None
for name, mesh in [("one", make_mesh(1, -1, 1, devices=jax.devices()[:1])), ("mesh", make_mesh(2, 2, 2))]:
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx)
        if init is None:
            init = jax.tree.map(np.asarray, built.state)
        else:  # the same starting values, laid out on the 2x2x2 mesh
            built.state = jax.device_put(init, built.shardings)
            q = built.state["params"]["layers"]["q"]
            assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape != q.shape
        step = jit_train_step(built, tx, sched)
        state, m = step(built.state, put_batch(batch, mesh))
        state, m2 = step(state, put_batch(batch, mesh))
        results[name] = (jax.tree.map(np.asarray, state["params"]), float(m["loss"]), float(m2["grad_norm"]))
(p1, l1, g1), (p8, l8, g8) = results["one"], results["mesh"]
assert abs(l1 - l8) < 1e-5 and abs(g1 - g8) < 1e-5 * max(1, g1), (l1, l8, g1, g8)
worst = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
assert worst < 1e-5, worst
print("OK", l1, l8, worst)
"""


def test_sharded_step_equals_single_device():
    env = {
        **os.environ,
        **compile_cache_env(),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
