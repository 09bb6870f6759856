"""Checkpoint import (Hugging Face safetensors, GGUF) and export (Hugging Face directory).

Import streams one stacked weight at a time (the L per-layer tensors of one kind, then the next kind), so
host memory holds at most one stacked weight besides the model being built; each stacked weight can be
placed directly with a given sharding. Export writes to a temporary directory renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.config import LlamaConfig, UnsupportedModelError, from_hf_config, to_hf_config
from models.lora import LoRAConfig, init_lora, merged_weight
from models.modules import LAYER_WEIGHT_NAMES, Llama, layer_weight_shape
from records.errors import InputError


class CheckpointError(InputError):
    """A checkpoint file is missing a tensor, has a wrong shape, or cannot be read."""


_HF_LAYER = {
    "attn_norm": "input_layernorm.weight",
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "added_tokens.json",
)


def hf_name(name: str, layer: int | None = None) -> str:
    if name == "embed":
        return "model.embed_tokens.weight"
    if name == "final_norm":
        return "model.norm.weight"
    if name == "lm_head":
        return "lm_head.weight"
    return f"model.layers.{layer}.{_HF_LAYER[name]}"


def hf_to_ours(name: str, w: np.ndarray, cfg: LlamaConfig) -> np.ndarray:
    """One HF tensor (PyTorch Linear layout [out, in]) to our einsum layout."""
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    if name == "q":
        return w.T.reshape(d, n, h)
    if name in ("k", "v"):
        return w.T.reshape(d, k, h)
    if name == "o":
        return w.T.reshape(n, h, d)
    if name in ("gate", "up", "down", "lm_head"):
        return w.T
    return w


def ours_to_hf(name: str, w: np.ndarray) -> np.ndarray:
    """Inverse of hf_to_ours for one layer's tensor."""
    if name in ("q", "k", "v"):
        return w.reshape(w.shape[0], -1).T
    if name == "o":
        return w.reshape(-1, w.shape[-1]).T
    if name in ("gate", "up", "down", "lm_head"):
        return w.T
    return w


def _expected_hf_shape(name: str, cfg: LlamaConfig) -> tuple[int, ...]:
    if name == "embed":
        return (cfg.vocab_size, cfg.hidden_size)
    if name == "lm_head":
        return (cfg.vocab_size, cfg.hidden_size)
    if name == "final_norm":
        return (cfg.hidden_size,)
    ours = layer_weight_shape(cfg, name)[1:]
    return tuple(ours_to_hf(name, np.empty(ours, np.int8)).shape)


# ----------------------------------------------------------------------------------------------- sources


class TensorSource:
    """Named float tensors in HF naming and layout, read one at a time."""

    path: str

    def names(self) -> set[str]:
        raise NotImplementedError

    def get(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def where(self, name: str) -> str:
        return self.path


class SafetensorsSource(TensorSource):
    """An HF directory: `model.safetensors` or shards listed in `model.safetensors.index.json`."""

    def __init__(self, directory: str | os.PathLike):
        from safetensors import safe_open

        self.path = str(directory)
        d = Path(directory)
        index = d / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in d.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{d}: no *.safetensors file and no model.safetensors.index.json")
            weight_map = None
        self._index = index if index.exists() else None
        self._files = files
        self._handles = {}
        self._map: dict[str, str] = {}
        for f in files:
            fp = d / f
            if not fp.exists():
                raise CheckpointError(f"{index}: lists shard {f}, which does not exist")
            try:
                h = safe_open(str(fp), framework="pt")
                keys = list(h.keys())
            except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
                raise CheckpointError(f"{fp}: cannot read safetensors file ({e})") from None
            self._handles[f] = h
            for k in keys:
                self._map[k] = f
        if weight_map is not None:
            for k, f in weight_map.items():
                if self._map.get(k) != f:
                    raise CheckpointError(f"{d / f}: tensor {k!r} listed in the index is not in the file")

    def names(self) -> set[str]:
        return set(self._map)

    def where(self, name: str) -> str:
        if name in self._map:
            return str(Path(self.path) / self._map[name])
        if self._index is not None:
            return str(self._index)
        return str(Path(self.path) / self._files[0]) if len(self._files) == 1 else self.path

    def get(self, name: str) -> np.ndarray:
        t = self._handles[self._map[name]].get_tensor(name)
        return t.float().numpy()


GGUF_SUPPORTED_QUANTS = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip
_GGUF_LAYER = {
    "attn_norm": "attn_norm",
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_output",
    "mlp_norm": "ffn_norm",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}


class GGUFSource(TensorSource):
    """A llama.cpp GGUF file of a LLaMA-architecture model, dequantized tensor by tensor.

    llama.cpp stores Q and K projections with rows permuted for its RoPE kernel; they are permuted back to
    the HF layout here, as transformers' GGUF loader does.
    """

    def __init__(self, path: str | os.PathLike):
        import gguf

        self.path = str(path)
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read GGUF file ({e})") from None
        arch = self.field("general.architecture")
        if arch != "llama":
            raise UnsupportedModelError(
                f"{path}: field 'general.architecture': {arch!r} is not supported (llama)"
            )
        self._tensors = {t.name: t for t in self.reader.tensors}
        self.cfg = self._config()
        self._hf_to_gguf = {
            "model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight",
        }
        if "output.weight" in self._tensors:
            self._hf_to_gguf["lm_head.weight"] = "output.weight"
        for i in range(self.cfg.num_layers):
            for ours, g in _GGUF_LAYER.items():
                self._hf_to_gguf[hf_name(ours, i)] = f"blk.{i}.{g}.weight"

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def _config(self) -> LlamaConfig:
        def need(key):
            v = self.field(f"llama.{key}")
            if v is None:
                raise CheckpointError(f"{self.path}: GGUF metadata field 'llama.{key}' is missing")
            return v

        n = int(need("attention.head_count"))
        d = int(need("embedding_length"))
        vocab = self.field("llama.vocab_size") or len(self.field("tokenizer.ggml.tokens") or [])
        if self.field("llama.rope.scaling.type") not in (None, "none", "linear") or self.field(
            "llama.expert_count"
        ):
            raise UnsupportedModelError(f"{self.path}: rope scaling / experts are not supported")
        if "rope_freqs.weight" in self._tensors:  # LLaMA-3.1+: llama3 RoPE scaling as per-frequency factors
            raise UnsupportedModelError(
                f"{self.path}: tensor 'rope_freqs.weight' (LLaMA-3.x RoPE scaling) is not supported in GGUF "
                "files; load the Hugging Face directory (config.json with rope_scaling) instead"
            )
        return LlamaConfig(
            vocab_size=int(vocab),
            hidden_size=d,
            intermediate_size=int(need("feed_forward_length")),
            num_layers=int(need("block_count")),
            num_heads=n,
            num_kv_heads=int(self.field("llama.attention.head_count_kv", n)),
            head_dim=int(self.field("llama.rope.dimension_count", d // n)),
            rope_theta=float(self.field("llama.rope.freq_base", 10000.0)),
            rms_norm_eps=float(self.field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings="output.weight" not in self._tensors,
            max_position_embeddings=int(self.field("llama.context_length", 4096)),
            bos_token_id=self.field("tokenizer.ggml.bos_token_id"),
            eos_token_id=self.field("tokenizer.ggml.eos_token_id"),
            pad_token_id=self.field("tokenizer.ggml.padding_token_id"),
        )

    def names(self) -> set[str]:
        return {hf for hf, g in self._hf_to_gguf.items() if g in self._tensors}

    def where(self, name: str) -> str:
        return f"{self.path} (GGUF tensor {self._hf_to_gguf.get(name, name)!r})"

    def get(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        t = self._tensors[self._hf_to_gguf[name]]
        qtype = t.tensor_type.name
        if qtype not in GGUF_SUPPORTED_QUANTS:
            raise CheckpointError(
                f"{self.path}: tensor {t.name!r} uses quantization {qtype}, which is not supported "
                f"(supported: {', '.join(GGUF_SUPPORTED_QUANTS)})"
            )
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(s) for s in reversed(t.shape)))
        if ".attn_q." in t.name:
            w = _unpermute(w, self.cfg.num_heads)
        elif ".attn_k." in t.name:
            w = _unpermute(w, self.cfg.num_kv_heads)
        return w


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert-time permutation of Q/K rows (interleaved → half-split RoPE layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_source(path: str | os.PathLike) -> tuple[TensorSource, LlamaConfig]:
    """A tensor source and its model config, for an HF directory or a .gguf file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: checkpoint path does not exist")
    if p.is_file() and p.suffix == ".gguf":
        src = GGUFSource(p)
        return src, src.cfg
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if not (p / "config.json").exists() and len(ggufs) == 1:
            src = GGUFSource(ggufs[0])
            return src, src.cfg
        cfg = from_hf_config(p)
        return SafetensorsSource(p), cfg
    raise CheckpointError(f"{p}: expected an HF directory (config.json + *.safetensors) or a .gguf file")


# ------------------------------------------------------------------------------------------------ import


def _read(src: TensorSource, name: str, cfg: LlamaConfig, layer: int | None = None) -> np.ndarray:
    key = hf_name(name, layer)
    if key not in src.names():
        raise CheckpointError(f"{src.where(key)}: missing tensor {key!r}")
    w = src.get(key)
    want = _expected_hf_shape(name, cfg)
    if tuple(w.shape) != want:
        raise CheckpointError(f"{src.where(key)}: tensor {key!r} has shape {tuple(w.shape)}, expected {want}")
    return hf_to_ours(name, w, cfg)


def iter_params(src: TensorSource, cfg: LlamaConfig) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yields (path in the nnx state, float32 array in our layout), one stacked weight at a time."""
    yield ("embed",), _read(src, "embed", cfg)
    for name in LAYER_WEIGHT_NAMES:
        stacked = np.empty(layer_weight_shape(cfg, name), np.float32)
        for i in range(cfg.num_layers):
            stacked[i] = _read(src, name, cfg, i)
        yield ("layers", name), stacked
    yield ("final_norm",), _read(src, "final_norm", cfg)
    if not cfg.tie_embeddings:
        yield ("lm_head",), _read(src, "lm_head", cfg)


def load_model(
    path: str | os.PathLike,
    *,
    lora: LoRAConfig | None = None,
    dtype: str | None = None,
    param_dtype: str | None = None,
    remat: bool | None = None,
    remat_policy: str | None = None,
    attention: str | None = None,
    place: Callable[[tuple[str, ...], nnx.Variable, np.ndarray], jax.Array] | None = None,
    seed: int = 0,
) -> Llama:
    """Builds our Llama from an HF directory or a GGUF file, streaming tensor by tensor.

    Args:
      path: HF directory (config.json + safetensors) or .gguf file.
      lora: adds freshly initialised adapters (B = 0) when given.
      dtype, param_dtype, remat, remat_policy, attention: override the config's compute/storage dtype, remat
        switch and policy, and no-cache attention implementation (LlamaConfig.attention).
      place: (path, abstract variable, host array) -> device array; default: jnp.asarray on the default
        device. The trainer passes a function that device_puts with the variable's NamedSharding.
      seed: seed for the LoRA A matrices.
    """
    src, cfg = open_source(path)
    overrides = {
        k: v
        for k, v in dict(
            dtype=dtype, param_dtype=param_dtype, remat=remat, remat_policy=remat_policy, attention=attention
        ).items()
        if v is not None
    }
    cfg = cfg.replace(**overrides)
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(seed), lora=lora))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    place = place or (lambda _path, var, arr: jnp.asarray(arr, dtype=var.get_value().dtype))
    for p, arr in iter_params(src, cfg):
        var = flat[p]
        var.set_value(place(p, var, arr))
    if lora is not None:
        keys = jax.random.split(nnx.Rngs(seed).params(), len(LAYER_WEIGHT_NAMES) + 4)  # as Llama.__init__
        for name, (value, _) in init_lora(cfg, lora, keys[-1]).items():
            flat[("lora", name)].set_value(place(("lora", name), flat[("lora", name)], np.asarray(value)))
    missing = [p for p, v in flat.items() if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if missing:
        raise CheckpointError(f"{path}: parameters not filled: {missing}")
    return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------------------------ export


def iter_hf_tensors(model: Llama) -> Iterator[tuple[str, np.ndarray]]:
    """Our parameters as HF-named float32 tensors (LoRA merged on the fly), one layer tensor at a time."""
    cfg = model.cfg
    yield hf_name("embed"), np.asarray(model.embed[...], np.float32)
    for name in LAYER_WEIGHT_NAMES:
        w = model.layers[name][...]
        if model.lora_cfg is not None and name in model.lora_cfg.targets:
            w = merged_weight(
                name, w, model.lora[f"{name}_a"][...], model.lora[f"{name}_b"][...], model.lora_cfg.scale
            )
        w = np.asarray(w, np.float32)
        for i in range(cfg.num_layers):
            yield hf_name(name, i), np.ascontiguousarray(ours_to_hf(name, w[i]))
    yield hf_name("final_norm"), np.asarray(model.final_norm[...], np.float32)
    if not cfg.tie_embeddings:
        yield hf_name("lm_head"), np.ascontiguousarray(np.asarray(model.lm_head[...], np.float32).T)


def export_hf(
    model: Llama,
    dst: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    torch_dtype: str = "float32",
    max_shard_bytes: int = 2 * 1024**3,
    overwrite: bool = True,
) -> Path:
    """Writes an HF LLaMA directory (safetensors shards + index, config.json, tokenizer files) atomically.

    LoRA adapters are merged into the exported weights; the model itself is not modified.
    """
    import torch
    from safetensors.torch import save_file

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: exists (pass overwrite=True to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    tmp.chmod(0o755)
    tdt = getattr(torch, torch_dtype)
    try:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        files: list[str] = []
        weight_map: dict[str, str] = {}

        def flush():
            fname = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shards[-1], str(tmp / fname), metadata={"format": "pt"})
            files.append(fname)
            for k in shards[-1]:
                weight_map[k] = fname
            shards[-1] = {}

        for name, arr in iter_hf_tensors(model):
            t = torch.from_numpy(np.array(arr, copy=True)).to(tdt)
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                flush()
                size = 0
            shards[-1][name] = t
            size += nbytes
        if shards[-1]:
            flush()
        if len(files) == 1:
            (tmp / files[0]).rename(tmp / "model.safetensors")
        else:
            total = sum((tmp / f).stat().st_size for f in files)
            final = {f: f.replace(".safetensors", f"-of-{len(files):05d}.safetensors") for f in files}
            for f, g in final.items():
                (tmp / f).rename(tmp / g)
            index = {
                "metadata": {"total_size": total},
                "weight_map": {k: final[v] for k, v in weight_map.items()},
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(to_hf_config(model.cfg, torch_dtype), indent=2))
        if tokenizer_dir is not None:
            for f in TOKENIZER_FILES:
                if (Path(tokenizer_dir) / f).exists():
                    shutil.copy2(Path(tokenizer_dir) / f, tmp / f)
        _replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _replace_dir(tmp: Path, dst: Path) -> None:
    """Moves tmp to dst; an existing dst is moved aside first and removed only after the swap."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        dst.rename(old)
    tmp.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
