"""Helpers shared by the model tests (no tests here): tiny random HF LLaMA directories, left-padded token
batches, our model's forward under jit, and transformers' logits as the reference."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.checkpoint import TOKENIZER_FILES
from models.embedded import embedded_model_dir

TINY_HF = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def make_tiny_hf(dst: Path, seed: int = 0, **overrides: Any) -> Path:
    """A random tiny LlamaForCausalLM saved as an HF directory, with SmolLM2's tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_HF, **overrides})).eval()
    model.save_pretrained(dst)
    for f in TOKENIZER_FILES:
        src = embedded_model_dir() / f
        if src.exists():
            shutil.copy2(src, dst / f)
    return dst


def padded_batch(
    lengths: list[int], total: int, vocab: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded random tokens (ids >= 3), attention mask and HF-convention positions."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(3, vocab, size=(len(lengths), total))
    mask = np.zeros_like(toks)
    for i, n in enumerate(lengths):
        mask[i, total - n :] = 1
    toks = np.where(mask == 1, toks, 0)
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    return toks, mask, pos


@functools.cache
def _jitted(graphdef):
    return jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))


def run(model: nnx.Module, toks, pos, seg, cache=None):
    """model(...) under jit (eager nnx calls re-trace the layer scan on every call): (logits, cache)."""
    graphdef, state = nnx.split(model)
    return _jitted(graphdef)(state, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(seg), cache)


def hf_logits(hm: Any, toks: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """transformers' logits (float32 numpy) for the batch, with explicit positions."""
    import torch

    with torch.no_grad():
        out = hm(
            input_ids=torch.tensor(toks), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)
        )
    return out.logits.float().numpy()
