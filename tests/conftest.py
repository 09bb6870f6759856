"""Shared fixtures: the embedded SmolLM2 directory and a tiny random LLaMA with SmolLM2's tokenizer.

Helpers that tests import live in modules that hold no tests: tests/model_helpers.py, tests/train_helpers.py,
tests/report_helpers.py, tests/infer_helpers.py, tests/fake_openai_server.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from models.embedded import embedded_model_dir  # noqa: E402
from tests.model_helpers import make_tiny_hf  # noqa: E402
from tests.train_helpers import enable_compile_cache  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """One persistent XLA compilation cache for the whole session, on before anything compiles."""
    enable_compile_cache()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted embedded model (made by `make setup`)."""
    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """Tiny random LLaMA (GQA 4/2, untied, 2 layers, width 64) + SmolLM2 tokenizer and chat template."""
    return make_tiny_hf(tmp_path_factory.mktemp("tiny_hf"))
