"""Builds the sharded train state: model (imported directly sharded), trainable/frozen split, optimizer.

Full fine-tuning trains every `nnx.Param`; LoRA trains the `LoRAParam` adapters only and keeps the base in
`state["frozen"]`, which the step returns untouched (and checkpoints leave out: it is `init_from`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models.checkpoint import load_model, open_source
from models.config import LlamaConfig, preset
from models.embedded import resolve_model
from models.lora import LoRAConfig, LoRAParam
from models.modules import Llama
from models.sharding import state_shardings

from .fused_adamw import FusedAdamW, choose
from .step import make_train_step


@dataclasses.dataclass
class Built:
    graphdef: Any
    state: dict[str, Any]
    shardings: dict[str, Any]  # same tree as state, NamedSharding leaves
    model_cfg: LlamaConfig
    lora: LoRAConfig | None
    mesh: Mesh
    loss_chunk_tokens: int = 0  # config train.loss_chunk_tokens (train/step.py's chunked_nll; 0 = off)
    fused: FusedAdamW | None = None  # the one-pass AdamW update (config optimizer.kernels); None = optax

    @property
    def optimizer_kernels(self) -> str:
        """Which update the step runs: "native" (train/fused_adamw.py) or "xla" (optax)."""
        return "xla" if self.fused is None else "native"


def lora_config(cfg) -> LoRAConfig | None:
    if not cfg.lora.enabled:
        return None
    return LoRAConfig(
        rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=tuple(cfg.lora.targets), init=cfg.lora.init
    )


def model_overrides(cfg) -> dict[str, Any]:
    return dict(
        dtype=cfg.model.dtype,
        param_dtype=cfg.model.param_dtype,
        remat=cfg.model.remat,
        remat_policy=cfg.model.get("remat_policy", "nothing_saveable"),
        attention=cfg.model.get("attention", "auto"),
    )


def _placer(shard_of: dict[tuple[str, ...], NamedSharding]):
    def place(path, var, arr: np.ndarray) -> jax.Array:
        arr = np.asarray(arr, dtype=var.get_value().dtype)
        return jax.make_array_from_callback(arr.shape, shard_of[path], lambda idx: arr[idx])

    return place


def build_model(cfg, mesh: Mesh, vocab_size: int | None = None) -> nnx.Module:
    """The model with every weight already placed with its NamedSharding.

    `model.init_from` (HF dir, .gguf, or "embedded") is streamed weight by weight onto the mesh; an empty
    `init_from` builds a random model from `model.preset` (tests and `:runlocal` only), with the vocabulary
    widened to `vocab_size` (the tokenizer's) when that is larger.
    """
    lora = lora_config(cfg)
    if cfg.model.init_from:
        path = resolve_model(cfg.model.init_from)
        _, mcfg = open_source(path)
        mcfg = mcfg.replace(**model_overrides(cfg))
    else:
        mcfg = preset(cfg.model.preset, **model_overrides(cfg))
        if vocab_size and vocab_size > mcfg.vocab_size:
            mcfg = mcfg.replace(vocab_size=vocab_size)
    abstract = nnx.eval_shape(lambda: Llama(mcfg, rngs=nnx.Rngs(cfg.seed), lora=lora))
    shard_state = state_shardings(nnx.state(abstract), mesh)
    shard_of = {p: s for p, s in nnx.to_flat_state(shard_state)}
    if cfg.model.init_from:
        return load_model(path, lora=lora, **model_overrides(cfg), place=_placer(shard_of), seed=cfg.seed)
    graphdef = nnx.graphdef(abstract)

    def init():
        return nnx.to_pure_dict(nnx.state(Llama(mcfg, rngs=nnx.Rngs(cfg.seed), lora=lora)))

    return nnx.merge(graphdef, jax.jit(init, out_shardings=nnx.to_pure_dict(shard_state))())


def split_trainable(model: nnx.Module, lora: LoRAConfig | None):
    """(graphdef, trainable State, frozen State)."""
    if lora is not None:
        return nnx.split(model, LoRAParam, ...)
    return nnx.split(model, nnx.Param, ...)


def build_state(cfg, mesh: Mesh, tx: optax.GradientTransformation, vocab_size: int | None = None) -> Built:
    chunk = cfg.train.get("loss_chunk_tokens", 0)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ValueError(f"config.train.loss_chunk_tokens={chunk!r}: must be an integer >= 0 (0 = off)")
    lora = lora_config(cfg)
    model = build_model(cfg, mesh, vocab_size)
    graphdef, trainable, frozen = split_trainable(model, lora)
    p_sh = nnx.to_pure_dict(state_shardings(trainable, mesh))
    f_sh = nnx.to_pure_dict(state_shardings(frozen, mesh))
    params = nnx.to_pure_dict(trainable)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shapes = jax.eval_shape(tx.init, params)
    o_sh = optax.tree_map_params(
        tx,
        lambda _, s: s,
        opt_shapes,
        p_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    opt_state = jax.jit(tx.init, out_shardings=o_sh)(params)
    state = {
        "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
        "params": params,
        "frozen": nnx.to_pure_dict(frozen),
        "opt_state": opt_state,
        "rng": jax.device_put(jax.random.PRNGKey(cfg.seed), replicated),
    }
    shardings = {
        "step": replicated,
        "params": p_sh,
        "frozen": f_sh,
        "opt_state": o_sh,
        "rng": replicated,
    }
    fused = choose(cfg.optimizer, mesh, params)
    return Built(graphdef, state, shardings, model.cfg, lora, mesh, chunk, fused)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[grad_accum, rows, seq_len]: rows split over ("data", "fsdp")."""
    return NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp"), None))


def jit_train_step(built: Built, tx, schedule):
    step = make_train_step(built.graphdef, tx, schedule, built.loss_chunk_tokens, built.fused)
    replicated = NamedSharding(built.mesh, PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(built.shardings, batch_sharding(built.mesh)),
        out_shardings=(built.shardings, replicated),
        donate_argnums=(0,),
    )


def local_rows(mesh: Mesh, rows: int) -> np.ndarray:
    """The rows of a global `[grad_accum, rows, seq_len]` batch that this process's devices hold, in the
    order `put_batch` takes them: all rows on one process; on a multi-host mesh, this host's share of the
    ("data", "fsdp") shards (every row when the processes differ only along "tensor")."""
    index = batch_sharding(mesh).addressable_devices_indices_map((1, rows, 1))
    spans = sorted({(s.start or 0, rows if s.stop is None else s.stop) for _, s, _ in index.values()})
    return np.concatenate([np.arange(a, b) for a, b in spans])


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, rows: int | None = None) -> dict[str, jax.Array]:
    """Host arrays → global arrays sharded by `batch_sharding` (jax.make_array_from_process_local_data).

    `batch` holds this process's rows only (`local_rows(mesh, rows)` of the global batch of `rows` rows);
    with `rows` None it is the whole global batch, the same on every process.
    """
    sh = batch_sharding(mesh)
    out = {}
    for k, v in batch.items():
        shape = (v.shape[0], v.shape[1] if rows is None else rows, *v.shape[2:])
        out[k] = jax.make_array_from_process_local_data(sh, v, shape)
    return out


def merged_model(built: Built, state: dict[str, Any]) -> nnx.Module:
    """An nnx model from the current state (for export / evaluation)."""
    return nnx.merge(built.graphdef, state["params"], state["frozen"])


def tokenizer_dir(cfg) -> Path:
    spec = cfg.model.tokenizer or cfg.model.init_from
    if not spec:
        raise ValueError("model.tokenizer must be set when model.init_from is empty")
    return resolve_model(spec)
