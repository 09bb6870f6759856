"""Helpers shared by the tests/test_train_*.py files (no tests here)."""

from __future__ import annotations

import os
from typing import Any

import jax
from ml_collections import ConfigDict

from configs.smollm2 import get_config

CACHE_DIR = os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xlit_jax_cache")


def enable_compile_cache() -> None:
    """Persistent XLA cache: the shipped configs' runlocal runs share a few compiled steps."""
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(CACHE_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


enable_compile_cache()


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
