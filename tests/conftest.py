"""Shared fixtures: the embedded SmolLM2 directory and a tiny random LLaMA with SmolLM2's tokenizer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from models.checkpoint import TOKENIZER_FILES  # noqa: E402
from models.embedded import embedded_model_dir  # noqa: E402

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


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted embedded model (made by `make setup`)."""
    return embedded_model_dir()


def make_tiny_hf(dst: Path, seed: int = 0, **overrides) -> Path:
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


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """Tiny random LLaMA (GQA 4/2, untied, 2 layers, width 64) + SmolLM2 tokenizer and chat template."""
    return make_tiny_hf(tmp_path_factory.mktemp("tiny_hf"))
