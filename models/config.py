"""Model configuration for LLaMA-architecture decoders, with presets and Hugging Face conversion."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from records.errors import InputError


class UnsupportedModelError(InputError):
    """A checkpoint describes a model this implementation does not cover."""


ATTENTION_IMPLS = ("einsum", "native", "xla", "cudnn", "auto")
# what a remat'ed layer keeps for the backward pass (names of jax.checkpoint_policies)
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
ROPE_TYPES = ("llama3",)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """LLaMA-3.x RoPE frequency scaling (HF `rope_scaling` / `rope_parameters` with `rope_type: llama3`).

    Each rotary frequency of wavelength w (in positions) is kept when w < original_max_position_embeddings /
    high_freq_factor, divided by `factor` when w > original_max_position_embeddings / low_freq_factor, and
    interpolated smoothly between the two in between (see models.modules.rope_inv_freq).
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope type {self.rope_type!r} is not supported (supported: default, {', '.join(ROPE_TYPES)})"
            )
        if not self.factor > 0 or not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(
                f"RopeScaling: need factor > 0 and high_freq_factor > low_freq_factor > 0, got {self}"
            )
        if self.original_max_position_embeddings <= 0:
            raise ValueError(f"RopeScaling: original_max_position_embeddings must be positive, got {self}")

    def to_hf(self) -> dict[str, Any]:
        """The HF `rope_scaling` dict (without rope_theta)."""
        return {
            "rope_type": self.rope_type,
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a LLaMA-architecture decoder.

    Axis letters used across models/: B batch, T query length, S key/value length, D model width,
    N query heads, K key/value heads, H head dim, F MLP width, V vocabulary, L layers, R LoRA rank.
    """

    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # LLaMA-3.x frequency scaling; None = plain RoPE
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    dtype: str = "float32"  # compute dtype of activations
    param_dtype: str = "float32"  # storage dtype of parameters (master weights)
    remat: bool = False  # activation checkpointing per layer
    # with remat, what each layer keeps for the backward pass: "nothing_saveable" = recompute the whole layer;
    # "dots_with_no_batch_dims_saveable" = keep the projection outputs (q/k/v/o/gate/up/down), recompute
    # attention and element-wise ops; "dots_saveable" = keep every matmul output (the einsum attention too)
    remat_policy: str = "nothing_saveable"
    # attention without a KV cache (training, scoring, prefill-free forward): "einsum" = our einsums (any
    # platform); "native" = the same sums by models/native/train_attention.cc (CPU, float32 compute, head_dim
    # a multiple of 16, one device; `make native`); "xla" / "cudnn" = jax.nn.dot_product_attention with that
    # implementation ("cudnn": the fused flash kernel, NVIDIA GPUs with bf16/fp16 only); "auto" = "cudnn"
    # where that holds (GPU backend, bf16/fp16 compute, head_dim a multiple of 8 up to 128), "native" where
    # it can run, else "einsum". Decoding with a KV cache always uses the einsums.
    attention: str = "einsum"

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(
                f"LlamaConfig.attention={self.attention!r}: use one of {', '.join(ATTENTION_IMPLS)}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"LlamaConfig.remat_policy={self.remat_policy!r}: use one of {', '.join(REMAT_POLICIES)}"
            )
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in ("float32", "bfloat16", "float16"):
                raise ValueError(
                    f"LlamaConfig.{field}={getattr(self, field)!r}: use float32, bfloat16 or float16"
                )

    def attention_impl(self, backend: str | None = None) -> str:
        """The no-cache attention implementation actually used ("auto" resolved for `backend`)."""
        if self.attention != "auto":
            return self.attention
        backend = backend or jax.default_backend()
        fused_ok = self.dtype in ("bfloat16", "float16") and self.head_dim % 8 == 0 and self.head_dim <= 128
        if backend == "gpu" and fused_ok:
            return "cudnn"
        return "native" if self.native_attention_unusable(backend) is None else "einsum"

    def native_attention_unusable(self, backend: str | None = None) -> str | None:
        """Why attention="native" cannot run here (None if it can): CPU backend, float32 compute, head_dim a
        multiple of 16, at most one device in the current mesh (`jax.set_mesh`), the library built."""
        from models import cpu_kernels  # the kernels' module loads jax.ffi; only needed here

        backend = backend or jax.default_backend()
        if backend != "cpu":
            return f"the backend is {backend}, the native kernels are CPU-only"
        if self.dtype != "float32":
            return f"the compute dtype is {self.dtype}, the native kernels are float32"
        if self.head_dim % 16:
            return f"head_dim={self.head_dim} is not a multiple of 16"
        if (devices := jax.sharding.get_abstract_mesh().size) > 1:
            return f"the mesh has {devices} devices, the native kernels run on one"
        if not cpu_kernels.built():
            return cpu_kernels.NOT_BUILT
        return None

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **kw: Any) -> LlamaConfig:
        return dataclasses.replace(self, **kw)

    def num_params(self, include_embeddings: bool = True) -> int:
        d, f, n, k, h = (
            self.hidden_size,
            self.intermediate_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
        )
        per_layer = d * n * h * 2 + d * k * h * 2 + 3 * d * f + 2 * d
        total = self.num_layers * per_layer + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return total

    def matmul_weights(self) -> int:
        """Weights used in matmuls: every layer's projections and the output projection (even when tied)."""
        d = self.hidden_size
        return self.num_params(include_embeddings=False) - self.num_layers * 2 * d - d + self.vocab_size * d

    def attention_units(self, seq_len: int) -> float:
        """QKᵀ and AV per token, in the units of `matmul_weights` (causal half counted in full)."""
        return 2.0 * self.num_layers * self.num_heads * self.head_dim * seq_len

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), as in the PaLM/MaxText accounting."""
        return 6.0 * self.matmul_weights() + 6.0 * self.attention_units(seq_len)


PRESETS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, rope_theta=10000.0, max_position_embeddings=512,
    ),
    "smollm2_135m": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
        head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5, tie_embeddings=True, max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    ),
    # meta-llama/Llama-3.1-8B(-Instruct) and -70B: GQA 8 KV heads, 128k vocabulary, untied, llama3 RoPE scaling.
    "llama3_1_8b": LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5,
        max_position_embeddings=131072, bos_token_id=128000, eos_token_id=(128001, 128008, 128009),
    ),
    "llama3_1_70b": LlamaConfig(
        vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64, num_kv_heads=8,
        head_dim=128, rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5,
        max_position_embeddings=131072, bos_token_id=128000, eos_token_id=(128001, 128008, 128009),
    ),
    # meta-llama/Llama-3.2-1B(-Instruct): tied embeddings, RoPE scaling factor 32.
    "llama3_2_1b": LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
        head_dim=64, rope_theta=500000.0, rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5,
        tie_embeddings=True, max_position_embeddings=131072, bos_token_id=128000,
        eos_token_id=(128001, 128008, 128009),
    ),
    "llama2_7b": LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
        head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=4096,
    ),
    "llama2_13b": LlamaConfig(
        vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40,
        head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=4096,
    ),
    "llama2_70b": LlamaConfig(
        vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64, num_kv_heads=8,
        head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=4096,
    ),
    # Unbabel/TowerBase-7B-v0.1: LLaMA-2-7B continued-pretrained on 10 languages, same shapes.
    "tower_7b": LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
        head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=4096,
    ),
}  # fmt: skip


def preset(name: str, **overrides: Any) -> LlamaConfig:
    """Returns a preset by name (see PRESETS), with optional field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


_SUPPORTED_TYPES = ("llama",)


def from_hf_config(src: str | os.PathLike | dict[str, Any], **overrides: Any) -> LlamaConfig:
    """Builds a LlamaConfig from a Hugging Face `config.json` (path to the file or its folder, or a dict).

    Raises UnsupportedModelError naming the file and field for anything this port does not implement
    (mixture of experts, sliding-window attention, attention/MLP biases, rope scaling other than LLaMA-3's
    `llama3`, other families). RoPE settings are read as transformers reads them: `rope_scaling` when set,
    else `rope_parameters` (transformers >= 5), with `rope_theta` from that dict or the top level.
    """
    if isinstance(src, dict):
        hf, where = src, "config"
    else:
        path = Path(src)
        if path.is_dir():
            path = path / "config.json"
        where = str(path)
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no such file") from None
        except json.JSONDecodeError as e:
            raise UnsupportedModelError(f"{where}: invalid JSON ({e.msg}, line {e.lineno})") from None

    def bad(field: str, why: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{where}: field {field!r}: {why}")

    model_type = hf.get("model_type")
    if model_type not in _SUPPORTED_TYPES:
        raise bad("model_type", f"{model_type!r} is not supported (supported: {', '.join(_SUPPORTED_TYPES)})")
    for moe_field in ("num_local_experts", "num_experts", "n_routed_experts"):
        if hf.get(moe_field):
            raise bad(moe_field, "mixture-of-experts models are not supported")
    if hf.get("sliding_window") or hf.get("use_sliding_window"):
        raise bad("sliding_window", "sliding-window attention is not supported")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise bad("attention_bias" if hf.get("attention_bias") else "mlp_bias", "biases are not supported")
    rope_field = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    rope_params = hf.get(rope_field) or {}
    if not isinstance(rope_params, dict):
        raise bad(rope_field, f"expected an object, got {rope_params!r}")
    rope_type = rope_params.get("rope_type", rope_params.get("type", "default"))
    if rope_type not in ("default", *ROPE_TYPES):
        raise bad(rope_field, f"rope type {rope_type!r} is not supported (supported: default, llama3)")
    if float(rope_params.get("partial_rotary_factor") or hf.get("partial_rotary_factor") or 1.0) != 1.0:
        raise bad("partial_rotary_factor", "partial rotary embeddings are not supported")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise bad("hidden_act", f"{act!r} is not supported (LLaMA uses silu)")
    rope_scaling = None
    if rope_type == "llama3":
        try:
            rope_scaling = RopeScaling(
                factor=float(rope_params["factor"]),
                low_freq_factor=float(rope_params["low_freq_factor"]),
                high_freq_factor=float(rope_params["high_freq_factor"]),
                original_max_position_embeddings=int(
                    rope_params.get("original_max_position_embeddings")
                    or hf.get("original_max_position_embeddings")
                    or hf.get("max_position_embeddings", 4096)
                ),
            )
        except KeyError as e:
            raise bad(f"{rope_field}.{e.args[0]}", "required for rope type 'llama3'") from None
        except ValueError as e:
            raise bad(rope_field, str(e)) from None
    try:
        d = int(hf["hidden_size"])
        n = int(hf["num_attention_heads"])
        cfg = LlamaConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=d,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=n,
            num_kv_heads=int(hf.get("num_key_value_heads") or n),
            head_dim=int(hf.get("head_dim") or d // n),
            rope_theta=float(rope_params.get("rope_theta") or hf.get("rope_theta") or 10000.0),
            rope_scaling=rope_scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(hf["eos_token_id"])
            if isinstance(hf.get("eos_token_id"), list)
            else hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
    except KeyError as e:
        raise bad(e.args[0], "required field is missing") from None
    return cfg.replace(**overrides) if overrides else cfg


def to_hf_config(cfg: LlamaConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """The `config.json` contents that transformers' LlamaForCausalLM loads for this config."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        # both spellings: `rope_scaling` (what released LLaMA-3.x configs, vLLM and transformers < 5 read) and
        # `rope_parameters` (transformers >= 5, which prefers `rope_scaling` when both are set)
        "rope_scaling": cfg.rope_scaling.to_hf() if cfg.rope_scaling is not None else None,
        "rope_parameters": {
            **(cfg.rope_scaling.to_hf() if cfg.rope_scaling is not None else {"rope_type": "default"}),
            "rope_theta": cfg.rope_theta,
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "dtype": torch_dtype,
        "use_cache": True,
    }
