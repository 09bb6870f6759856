"""Checkpoint import/export round trips, LoRA identities, GGUF import and bad-input errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from models.checkpoint import CheckpointError, export_hf, load_model
from models.config import UnsupportedModelError, from_hf_config
from models.lora import LoRAConfig, LoRAParam, merge_lora
from models.sharding import make_mesh, state_shardings
from tests.model_helpers import hf_logits, make_tiny_hf, padded_batch, run

VOCAB = 320


@pytest.fixture
def small_hf(tmp_path):
    return make_tiny_hf(tmp_path / "src", seed=7, vocab_size=VOCAB, rms_norm_eps=1e-5)


def _logits(model, toks, mask, pos):
    return np.asarray(run(model, toks, pos, mask)[0])


def test_export_round_trip_reloads_in_transformers(small_hf, tmp_path):
    toks, mask, pos = padded_batch([8, 3], 8, VOCAB)
    ref = hf_logits(AutoModelForCausalLM.from_pretrained(small_hf).eval(), toks, mask, pos)
    dst = export_hf(load_model(small_hf), tmp_path / "export", tokenizer_dir=small_hf)
    assert (dst / "tokenizer.json").exists() and (dst / "config.json").exists()
    again = hf_logits(AutoModelForCausalLM.from_pretrained(dst).eval(), toks, mask, pos)
    np.testing.assert_array_equal(again, ref)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]


def test_export_shards_with_index(small_hf, tmp_path):
    dst = export_hf(load_model(small_hf), tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    toks, mask, pos = padded_batch([5], 5, VOCAB)
    np.testing.assert_array_equal(
        _logits(load_model(dst), toks, mask, pos), _logits(load_model(small_hf), toks, mask, pos)
    )


def test_lora_zero_b_is_bit_identical_and_merge_equals_unmerged(small_hf):
    toks, mask, pos = padded_batch([6, 4], 6, VOCAB)
    base = _logits(load_model(small_hf), toks, mask, pos)
    model = load_model(small_hf, lora=LoRAConfig(rank=4, alpha=8))
    np.testing.assert_array_equal(_logits(model, toks, mask, pos), base)
    _, adapters, _ = nnx.split(model, LoRAParam, ...)
    assert {k for k in adapters.to_pure_dict()["lora"]} == {
        f"{t}_{s}" for t in LoRAConfig().targets for s in "ab"
    }
    for i, name in enumerate(("q_b", "o_b", "down_b")):
        v = model.lora[name]
        v[...] = 0.05 * jax.random.normal(jax.random.key(i), v[...].shape)
    unmerged = _logits(model, toks, mask, pos)
    assert np.abs(unmerged - base).max() > 1e-3
    merge_lora(model)
    np.testing.assert_allclose(_logits(model, toks, mask, pos), unmerged, rtol=1e-4, atol=1e-5)


def test_lora_export_merges_adapters(small_hf, tmp_path):
    model = load_model(small_hf, lora=LoRAConfig(rank=2))
    model.lora["v_b"][...] = 0.1 * jnp.ones_like(model.lora["v_b"][...])
    toks, mask, pos = padded_batch([7], 7, VOCAB)
    ours = _logits(model, toks, mask, pos)
    dst = export_hf(model, tmp_path / "merged")
    ref = hf_logits(AutoModelForCausalLM.from_pretrained(dst).eval(), toks, mask, pos)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    assert model.lora_cfg is not None  # export does not modify the model


def test_import_places_with_shardings(small_hf):
    mesh = make_mesh(data=1, fsdp=1, tensor=1)
    abstract = nnx.eval_shape(lambda: load_model(small_hf))
    shardings = dict(nnx.to_flat_state(state_shardings(nnx.state(abstract), mesh)))
    seen = []

    def place(path, var, arr):
        seen.append(path)
        return jax.device_put(arr.astype(np.float32), shardings[path])

    model = load_model(small_hf, place=place)
    assert ("layers", "q") in seen and ("embed",) in seen
    assert model.layers["q"][...].sharding == shardings[("layers", "q")]


# ------------------------------------------------------------------------------------------ bad input


def test_missing_tensor_names_file_and_tensor(small_hf):
    f = small_hf / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, f)
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: missing tensor 'model\.layers\.1\.mlp\.up_proj"
    ):
        load_model(small_hf)


def test_shape_mismatch_names_tensor(small_hf):
    f = small_hf / "model.safetensors"
    tensors = load_file(f)
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    save_file(tensors, f)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight' has shape \(16, 64\), expected \(32, 64\)"):
        load_model(small_hf)


def test_truncated_safetensors_names_file(small_hf):
    f = small_hf / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors"):
        load_model(small_hf)


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"model_type": "mixtral", "num_local_experts": 8}, "model_type"),
        ({"num_local_experts": 8}, "num_local_experts"),
        ({"sliding_window": 4096}, "sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"attention_bias": True}, "attention_bias"),
    ],
)
def test_unsupported_architectures(small_hf, patch, field):
    cfg = json.loads((small_hf / "config.json").read_text())
    (small_hf / "config.json").write_text(json.dumps({**cfg, **patch}))
    with pytest.raises(UnsupportedModelError, match=rf"config\.json: field '{field}'"):
        from_hf_config(small_hf)


def test_failed_export_leaves_destination_untouched(small_hf, tmp_path, monkeypatch):
    dst = tmp_path / "out"
    export_hf(load_model(small_hf), dst)
    before = sorted(p.name for p in dst.iterdir())
    model = load_model(small_hf)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, dst)
    assert sorted(p.name for p in dst.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# ----------------------------------------------------------------------------------------------- GGUF


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_dir, path, quant_type=None, quant_tensor="blk.0.ffn_up.weight"):
    """Writes the tiny HF model as a llama.cpp-style GGUF (F32, one tensor optionally quantized)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    n, k = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    t = {name: v.float().numpy() for name, v in load_file(hf_dir / "model.safetensors").items()}
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n)
    w.add_head_count_kv(k)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    names |= {f"self_attn.{a}_proj": f"attn_{a}" for a in "qkv"} | {"self_attn.o_proj": "attn_output"}
    names |= {f"mlp.{a}_proj": f"ffn_{a}" for a in ("gate", "up", "down")}
    out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    out["lm_head.weight"] = "output.weight"
    for hf, arr in t.items():
        if hf.startswith("model.layers."):
            i, rest = hf[len("model.layers.") :].split(".", 1)
            name = f"blk.{i}.{names[rest.removesuffix('.weight')]}.weight"
        else:
            name = out[hf]
        if ".attn_q." in name:
            arr = _llama_cpp_permute(arr, n)
        elif ".attn_k." in name:
            arr = _llama_cpp_permute(arr, k)
        arr = np.ascontiguousarray(arr, np.float32)
        if quant_type is not None and name == quant_tensor:
            if quant_type == gguf.GGMLQuantizationType.Q8_0:
                w.add_tensor(name, gguf.quants.quantize(arr, quant_type), raw_dtype=quant_type)
            else:  # raw bytes of the right size for a type we refuse
                block, size = gguf.GGML_QUANT_SIZES[quant_type]
                raw = np.zeros((arr.shape[0], arr.shape[1] // block * size), np.uint8)
                w.add_tensor(name, raw, raw_dtype=quant_type)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_import_matches_hf(small_hf, tmp_path):
    path = write_gguf(small_hf, tmp_path / "m.gguf")
    toks, mask, pos = padded_batch([6, 6], 6, VOCAB)
    ref = hf_logits(AutoModelForCausalLM.from_pretrained(small_hf).eval(), toks, mask, pos)
    got = _logits(load_model(path), toks, mask, pos)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_gguf_q8_0_tensor_is_dequantized(small_hf, tmp_path):
    path = write_gguf(small_hf, tmp_path / "q8.gguf", gguf.GGMLQuantizationType.Q8_0)
    model = load_model(path)
    ref = load_file(small_hf / "model.safetensors")["model.layers.0.mlp.up_proj.weight"].numpy().T
    got = np.asarray(model.layers["up"][...][0])
    assert 0 < np.abs(got - ref).max() < 0.01  # quantization error, not garbage


def test_gguf_unsupported_quantization(small_hf, tmp_path):
    path = write_gguf(small_hf, tmp_path / "iq.gguf", gguf.GGMLQuantizationType.IQ4_NL)
    with pytest.raises(
        CheckpointError, match=r"iq\.gguf: tensor 'blk\.0\.ffn_up\.weight' uses quantization IQ4_NL"
    ):
        load_model(path)


def test_convert_cli_failure_leaves_no_destination(small_hf, tmp_path):
    shutil.copytree(small_hf, tmp_path / "bad")
    f = tmp_path / "bad" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    r = subprocess.run(
        [sys.executable, "-m", "models.convert", f"--src={tmp_path / 'bad'}", f"--dst={tmp_path / 'dst'}"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "cannot read safetensors" in r.stderr
    assert not (tmp_path / "dst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "src"]
