"""LoRA adapters for the stacked LLaMA weights.

For a projection y = x·W with W of shape [*in, *out], the adapter adds (x·A)·B · alpha/R with
A [*in, R] (random) and B [R, *out] (zeros), so an untrained adapter leaves the output bit-identical.
This is pasero's `Linear` + `AdapterLayer.LoRA` (naver/pasero@5fa52cc, pasero/models/modules.py:85-95 and
290-320): output + up(down(x)) · lora_alpha / rank, with A = down.weightᵀ and B = up.weightᵀ. Defaults follow
the authors' released runs: alpha 8 (pasero/config.py:1277; scale 0.5 at rank 16), A drawn as torch's
`kaiming_uniform_(a=√5)` on the [rank, fan_in] down weight, i.e. U(−1/√fan_in, 1/√fan_in) (`init="pasero"`),
adapters on every projection of every layer (q, k, v, o, gate, up, down; not the embeddings nor the output
layer). `init="normal"` keeps this module's earlier N(0, 1/fan_in). configs/released/defaults.json holds the
references.
Adapter weights are `LoRAParam` variables: `nnx.split(model, LoRAParam, ...)` separates them, which is
how the trainer gives the optimizer the adapters alone.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import LlamaConfig
from models.dense import dense

DEFAULT_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# "pasero": A ~ U(±1/√fan_in) (torch kaiming_uniform_(a=√5) on Linear(fan_in → rank)); "normal": A ~ N(0, 1/fan_in)
INITS = ("pasero", "normal")

# weight name -> (input logical axes, output logical axes), without the leading "layers"
_IN_OUT = {
    "q": (("embed",), ("q_heads", "head_dim")),
    "k": (("embed",), ("kv_heads", "head_dim")),
    "v": (("embed",), ("kv_heads", "head_dim")),
    "o": (("q_heads", "head_dim"), ("embed",)),
    "gate": (("embed",), ("mlp",)),
    "up": (("embed",), ("mlp",)),
    "down": (("mlp",), ("embed",)),
}
# einsum of each projection in models/modules.py (x, W -> y; W as stacked in `Llama.layers`, layer axis
# sliced off). Decoding holds W in `models.dense.out_first_axes` order instead (infer/decode.py).
PROJ_EQ = {
    "q": "btd,dnh->btnh",
    "k": "btd,dkh->btkh",
    "v": "btd,dkh->btkh",
    "o": "btnh,nhd->btd",
    "gate": "btd,df->btf",
    "up": "btd,df->btf",
    "down": "btf,fd->btd",
}


class LoRAParam(nnx.Param):
    """A trainable adapter weight (kept apart from the frozen base parameters)."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank R, alpha (the adapter output is scaled by alpha / R), A's init (`INITS`), adapted projections."""

    rank: int = 16
    alpha: float = 8.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    init: str = "pasero"

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(_IN_OUT)
        if unknown:
            raise ValueError(f"LoRA targets {sorted(unknown)} unknown; choose from {sorted(_IN_OUT)}")
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        if self.init not in INITS:
            raise ValueError(f"LoRA init {self.init!r} unknown; choose from {INITS}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_shapes(cfg: LlamaConfig, lora: LoRAConfig) -> dict[str, tuple]:
    """name -> (A shape, A logical axes, B shape, B logical axes), all with a leading layer axis."""
    from models.modules import layer_weight_shape

    out = {}
    for name in lora.targets:
        in_axes, out_axes = _IN_OUT[name]
        full = layer_weight_shape(cfg, name)
        n_in = len(in_axes)
        a_shape = (cfg.num_layers, *full[1 : 1 + n_in], lora.rank)
        b_shape = (cfg.num_layers, lora.rank, *full[1 + n_in :])
        out[name] = (
            a_shape,
            ("layers", *in_axes, "lora_rank"),
            b_shape,
            ("layers", "lora_rank", *out_axes),
        )
    return out


def init_lora(cfg: LlamaConfig, lora: LoRAConfig, key: jax.Array) -> dict[str, tuple[jax.Array, tuple]]:
    """Initial adapter weights, B = 0 and A by `lora.init` with fan_in = the projection's input size:
    "pasero" U(−1/√fan_in, 1/√fan_in) (std 1/√(3·fan_in)), "normal" N(0, 1/fan_in).

    Returns name -> (array, logical axes) with names `<target>_a`, `<target>_b`.
    """
    dt = cfg.weight_dtype
    out = {}
    for i, (name, (a_shape, a_axes, b_shape, b_axes)) in enumerate(lora_shapes(cfg, lora).items()):
        fan_in = math.prod(a_shape[1:-1])
        k = jax.random.fold_in(key, i)
        if lora.init == "pasero":
            bound = 1.0 / math.sqrt(fan_in)
            a = jax.random.uniform(k, a_shape, jnp.float32, minval=-bound, maxval=bound)
        else:
            a = jax.random.normal(k, a_shape, jnp.float32) / jnp.sqrt(fan_in * 1.0)
        out[f"{name}_a"] = (a.astype(dt), a_axes)
        out[f"{name}_b"] = (jnp.zeros(b_shape, dt), b_axes)
    return out


def _split_eq(eq: str) -> tuple[str, str, str, str]:
    lhs, y = eq.split("->")
    x, w = lhs.split(",")
    w_in = "".join(c for c in w if c in x)
    w_out = "".join(c for c in w if c not in x)
    return x, w_in, w_out, y


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, eq: str, scale: float) -> jax.Array:
    """(x·A)·B·scale for the projection `eq` (per-layer A, B without the layer axis)."""
    xs, w_in, w_out, ys = _split_eq(eq)
    batch = "".join(c for c in xs if c not in w_in)
    xa = dense(f"{xs},{w_in}r->{batch}r", x, a)
    return dense(f"{batch}r,r{w_out}->{ys}", xa, b) * scale


def merged_weight(name: str, w: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """W + A·B·scale for a stacked weight (leading layer axis on all three)."""
    _, w_in, w_out, _ = _split_eq(PROJ_EQ[name])
    delta = jnp.einsum(f"l{w_in}r,lr{w_out}->l{w_in}{w_out}", a.astype(jnp.float32), b.astype(jnp.float32))
    return (w.astype(jnp.float32) + delta * scale).astype(w.dtype)


def merge_lora(model: nnx.Module) -> None:
    """Folds the adapters into the base weights in place and removes them (model.lora_cfg becomes None)."""
    if model.lora_cfg is None:
        return
    scale = model.lora_cfg.scale
    for name in model.lora_cfg.targets:
        w = model.layers[name]
        w[...] = merged_weight(
            name, w[...], model.lora[f"{name}_a"][...], model.lora[f"{name}_b"][...], scale
        )
    model.lora = nnx.Dict()
    model.lora_cfg = None
