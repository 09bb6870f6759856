"""What bench/gpu.sh takes to a lent GPU machine: the random-weight model of a given config
(bench/gpu_model.py) and the table rows that name it (bench/gpu_compare.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bench.gpu_compare import table
from bench.gpu_model import build


def _weights(d: Path) -> dict[str, np.ndarray]:
    return load_file(str(d / "model.safetensors"))


def test_random_model_has_the_config_and_tokenizer_and_new_weights(tiny_hf_dir: Path, tmp_path: Path) -> None:
    a = build(tiny_hf_dir, tmp_path / "a", seed=0)
    b = build(tiny_hf_dir, tmp_path / "b", seed=0)
    c = build(tiny_hf_dir, tmp_path / "c", seed=1)
    src_cfg = json.loads((tiny_hf_dir / "config.json").read_text())
    cfg = json.loads((a / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert cfg[key] == src_cfg[key], key
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (tiny_hf_dir / name).read_bytes()
    wa, wb, wc, src = _weights(a), _weights(b), _weights(c), _weights(tiny_hf_dir)
    assert wa.keys() == src.keys()
    key = "model.layers.0.mlp.up_proj.weight"
    assert wa[key].dtype == np.float32 and wa[key].shape == src[key].shape
    np.testing.assert_array_equal(wa[key], wb[key])  # the seed fixes the weights
    assert not np.array_equal(wa[key], wc[key])  # and is not copied from the source
    assert not (tmp_path / "a.tmp").exists()


def test_random_model_without_a_config_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make gpu-prep"):
        build(tmp_path / "missing", tmp_path / "out")


def test_decode_rows_are_labelled_by_their_model_directory() -> None:
    row = {"batch": 64, "xlit_decode_tok_s": 9000.0, "hf_decode_tok_s": 3000.0, "decode_speedup": 3.0}
    rep = {"model": "/tmp/xlit_gpu_model/smollm2-shapes-random-weights", "results": [row]}
    text = table({}, {}, {"continuous": rep})
    assert (
        "| bench/decode.py smollm2-shapes-random-weights continuous, batch 64 (64 prompts), decode phase |"
        in text
    )
    assert "3.00× |" in text
