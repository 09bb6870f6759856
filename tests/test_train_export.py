"""LoRA on a real (tiny, random) HF checkpoint: base bit-identical after training; merged export = same logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers import AutoModelForCausalLM

from models.checkpoint import export_hf, load_model
from models.sharding import make_mesh
from tests.train_helpers import tiny_config
from train.optim import make_optimizer
from train.state import build_state, merged_model
from train.step import make_train_step


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_lora_base_bit_identical_and_merged_export_matches(tiny_hf_dir, tmp_path):
    cfg = tiny_config(
        "", **{"model.init_from": str(tiny_hf_dir), "model.tokenizer": "", "optimizer.lr": 1e-2}
    )
    assert cfg.lora.enabled
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:1])
    tx, sched = make_optimizer(cfg.optimizer, cfg.train.steps)
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx)
    assert set(built.state["params"]) == {"lora"}
    n_lora = sum(x.size for x in jax.tree.leaves(built.state["params"]))
    n_opt = sum(x.size for x in jax.tree.leaves(built.state["opt_state"]) if x.ndim > 0)
    assert n_opt == 2 * n_lora  # Adam moments over the adapters only

    rng = np.random.default_rng(0)
    step = jax.jit(make_train_step(built.graphdef, tx, sched))
    state = built.state
    for _ in range(2):
        toks = rng.integers(3, 49152, size=(1, 2, 24)).astype(np.int32)
        batch = {
            "inputs": toks,
            "targets": np.roll(toks, -1, axis=-1),
            "weights": np.tile((np.arange(24) >= 8).astype(np.float32), (1, 2, 1)),
            "segment_ids": np.ones_like(toks),
            "positions": np.tile(np.arange(24, dtype=np.int32), (1, 2, 1)),
        }
        state, m = step(state, batch)
        assert np.isfinite(float(m["loss"]))

    base = load_model(tiny_hf_dir)  # the frozen weights, straight from the checkpoint
    flat_base = _flat(nnx.to_pure_dict(nnx.state(base)))
    flat_frozen = _flat(state["frozen"])
    assert flat_base.keys() == flat_frozen.keys()
    for k in flat_base:
        np.testing.assert_array_equal(flat_base[k], flat_frozen[k], err_msg=k)
    assert np.abs(np.asarray(state["params"]["lora"]["q_b"])).max() > 0

    model = merged_model(built, state)  # adapters still separate: forward = W x + B A x
    toks = rng.integers(3, 49152, size=(2, 12)).astype(np.int32)
    ours, _ = model(jnp.asarray(toks), jnp.tile(jnp.arange(12), (2, 1)), jnp.ones((2, 12), jnp.int32))
    dst = export_hf(model, tmp_path / "export", tokenizer_dir=tiny_hf_dir)
    hf = AutoModelForCausalLM.from_pretrained(dst).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(toks, dtype=torch.long)).logits.float().numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=2e-4)
