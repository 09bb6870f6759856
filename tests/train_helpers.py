"""Helpers shared by the training tests (no tests here): dotted config overrides, the tiny `:runlocal`
config, and the persistent XLA compilation cache every test process shares (tests/conftest.py turns it on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from configs.smollm2 import get_config

CACHE_DIR = Path(__file__).resolve().parents[1] / ".pytest_cache" / "xlit_jax_cache"
# jax reads each of its options from the upper-case environment variable of the same name
_CACHE_OPTIONS = {
    "jax_compilation_cache_dir": str(CACHE_DIR),
    "jax_persistent_cache_min_compile_time_secs": 0.5,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}


def enable_compile_cache() -> None:
    """Persistent XLA cache in .pytest_cache/: the shipped configs' runlocal runs share a few compiled steps.

    Call it before the first compilation (jax decides once per process whether the cache is used)."""
    import jax

    for name, value in _CACHE_OPTIONS.items():
        jax.config.update(name, value)


def compile_cache_env() -> dict[str, str]:
    """Environment variables that give a Python subprocess the same compilation cache."""
    return {name.upper(): str(value) for name, value in _CACHE_OPTIONS.items()}


def override(c: ConfigDict, **kw: Any) -> ConfigDict:
    """override(c, **{"train.steps": 3}) sets dotted keys."""
    for k, v in kw.items():
        node = c
        *parents, last = k.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    return c


def tiny_config(arg: str = "", **kw: Any) -> ConfigDict:
    """Tiny random model (SmolLM2 tokenizer), shipped Dolly subset, fp32, 2 rows × 128 tokens, no export."""
    c = get_config(",".join(a for a in (arg, "runlocal") if a))
    c.export.enabled = False
    c.checkpoint.async_save = False
    return override(c, **kw)


def built_tiny(lora: bool = False, **kw: Any) -> tuple[Any, Any, Any, Any]:
    """(train.state.Built, optimizer, schedule, mesh) of the tiny config on one device (no tokenizer)."""
    import jax

    from models.sharding import make_mesh
    from train.optim import make_optimizer
    from train.state import build_state

    cfg = tiny_config("", **{"model.tokenizer": "", **kw})
    cfg.lora.enabled = lora
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:1])
    tx, sched = make_optimizer(cfg.optimizer, cfg.train.steps)
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx)
    return built, tx, sched, mesh
