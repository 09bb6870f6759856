"""Convert a checkpoint (HF directory or GGUF file) to an HF LLaMA directory through our Flax model.

    python -m models.convert --src=SmolLM2-135M-Instruct.Q4_1.gguf --dst=~/.cache/xlit/models/smollm2-135m-instruct

The result (safetensors + config.json + tokenizer files + generation_config.json) loads with
`transformers.AutoModelForCausalLM.from_pretrained(dst)` and with `models.checkpoint.load_model(dst)`.
GGUF weights are dequantized to float32. Nothing is fetched from the network.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from absl import app, flags, logging

from models.checkpoint import GGUFSource, export_hf, load_model
from records.cli import expected_errors

_SRC = flags.DEFINE_string("src", None, "A .gguf file or an HF directory.", required=True)
_DST = flags.DEFINE_string("dst", None, "Output HF directory (replaced atomically).", required=True)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Stored weight dtype.")


def gguf_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Writes HF tokenizer files built from the GGUF's tokenizer metadata (via transformers)."""
    from transformers import AutoTokenizer

    src = GGUFSource(gguf_path)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    vocab = src.field("tokenizer.ggml.tokens")

    def token(key):
        i = src.field(key)
        return vocab[i] if i is not None and 0 <= i < len(vocab) else None

    # transformers' GGUF tokenizer conversion may mislabel special tokens; the GGUF ids are authoritative
    special = {
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
    }
    tok.clean_up_tokenization_spaces = False
    for k, v in special.items():
        if v is not None:
            setattr(tok, k, v)
    template = src.field("tokenizer.chat_template")
    if template and not tok.chat_template:
        tok.chat_template = template
    tok.save_pretrained(str(out_dir))
    gen = {
        k: src.field(f"tokenizer.ggml.{v}")
        for k, v in (
            ("bos_token_id", "bos_token_id"),
            ("eos_token_id", "eos_token_id"),
            ("pad_token_id", "padding_token_id"),
        )
    }
    (out_dir / "generation_config.json").write_text(
        json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2)
    )


def convert(src: str | Path, dst: str | Path, dtype: str = "float32") -> Path:
    """Converts `src` (GGUF file or HF directory) into an HF directory at `dst`."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    model = load_model(src)
    if src.is_file():
        tok_dir = Path(tempfile.mkdtemp(prefix="xlit-tok-"))
        try:
            gguf_tokenizer(src, tok_dir)
            return export_hf(model, dst, tokenizer_dir=tok_dir, torch_dtype=dtype)
        finally:
            shutil.rmtree(tok_dir, ignore_errors=True)
    return export_hf(model, dst, tokenizer_dir=src, torch_dtype=dtype)


def main(argv: list[str]) -> None:
    del argv
    out = convert(_SRC.value, _DST.value, _DTYPE.value)
    logging.info("wrote %s", out)
    print(out)


if __name__ == "__main__":
    app.run(expected_errors(main))
