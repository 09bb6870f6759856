"""A SmolLM2-shaped HF directory with random weights, for bench/decode.py on a machine without the model.

    python -m bench.gpu_model --src=.gpu_model --dst=/tmp/xlit_gpu/smollm2-shapes-random-weights

The lent GPU machine has no package index and takes at most 64 MiB of carried files per call, so the embedded
model (a 98 MB GGUF, 538 MB as float32 safetensors) cannot reach it; `make gpu-prep` puts its config and
tokenizer files (~4 MB) in `.gpu_model/`, and this builds the weights there: transformers' own initialisation
of `LlamaForCausalLM` from that config (seed 0), saved as float32 safetensors with the tokenizer files next to
them. bench/decode.py then runs unchanged (real prompts, real tokenizer, ids asserted identical between xlit
and transformers); only the weights are random, which the directory's name says in every table and JSON
(bench/gpu_compare.py labels rows by it). Random weights never choose EOS in practice, so every row runs to
max_new_tokens: tokens/s are comparable, answer lengths are not those of the real model.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from absl import app, flags

from models.checkpoint import TOKENIZER_FILES


def copy_files(src: Path, dst: Path, names: tuple[str, ...] = TOKENIZER_FILES) -> None:
    """Copies the files of `names` that `src` has into `dst` (`make gpu-prep`: config.json too)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def build(src: Path, dst: Path, seed: int = 0) -> Path:
    """Writes `dst` (config + random float32 weights + tokenizer files of `src`); returns it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (src / "config.json").exists():
        raise FileNotFoundError(
            f"{src / 'config.json'}: missing; run `make gpu-prep` where the model is set up"
        )
    cfg = AutoConfig.from_pretrained(src)
    torch.manual_seed(seed)
    with torch.device("cpu"):  # bench.gpu_decode may have made the GPU torch's default device
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    copy_files(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def main() -> None:
    # defined here, not at import, so tests can import `build` next to other entry points' flags
    src = flags.DEFINE_string("src", ".gpu_model", "Directory with config.json and the tokenizer files.")
    dst = flags.DEFINE_string("dst", None, "Output HF directory (replaced).", required=True)
    seed = flags.DEFINE_integer("seed", 0, "torch seed of the initialisation.")
    app.run(lambda argv: sys.exit(print(build(Path(src.value), Path(dst.value), seed.value)) or 0))


if __name__ == "__main__":
    main()
