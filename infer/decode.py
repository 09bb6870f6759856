"""Jitted prefill and decode loop over a left-padded batch: greedy or sampled, HF repetition penalty, EOS.

The decode state (KV cache, next-token logits, generated tokens, per-row counters) stays on the device
between calls. `prefill` runs the prompt and leaves the logits of the first new token; `decode` runs a
`lax.while_loop` that, per step, picks a token from the current logits (repetition penalty, optional
allowed-token mask, then argmax or temperature/top-p sampling), records it, marks rows that hit EOS or
their token budget, and runs the model on the picked token. The loop ends after `steps` steps or when every
row is done, so the host can stop early for stop strings, stream text, or apply a per-step constraint.

Shapes are static per (batch, prompt length, cache length) bucket; per-row parameters (penalty,
temperature, top-p, token budget, seed) are arrays, so one compiled program serves any mix of requests.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import json
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from models.config import LlamaConfig
from models.cpu_kernels import NOT_BUILT as NATIVE_NOT_BUILT
from models.cpu_kernels import Packed, pack, pack_weight, packed_dense
from models.cpu_kernels import built as native_built
from models.dense import dense_out_first, to_out_first
from models.lora import PROJ_EQ
from models.modules import _layer, init_cache, rms_norm
from models.sharding import constrain

_MASKED = -1e30
FINISH_RUNNING, FINISH_STOP, FINISH_LENGTH = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class DecodeParams:
    """Decoding parameters of one request (HF `generate` semantics).

    temperature 0 means greedy; `repetition_penalty` follows `RepetitionPenaltyLogitsProcessor` (over prompt
    and generated tokens: positive logits divided, negative multiplied); `stop` strings end a row and are
    cut from its text; `seed` makes sampling reproducible per row, whatever the batch.
    """

    max_new_tokens: int = 512
    repetition_penalty: float = 1.0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str | list):
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"DecodeParams: {msg} (got {self})")

    @classmethod
    def from_options(cls, opts: Any) -> DecodeParams:
        """From an object with the decoding options as attributes (absl FLAGS of infer.main, argparse
        namespace of beam_pipelines.generate: same names)."""
        return cls(
            max_new_tokens=opts.max_new_tokens,
            repetition_penalty=opts.repetition_penalty,
            temperature=opts.temperature,
            top_p=opts.top_p,
            seed=opts.seed,
            stop=tuple(opts.stop),
        )

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        d["do_sample"] = self.temperature > 0
        return json.dumps(d, sort_keys=True)


class RowParams(NamedTuple):
    """Per-row decoding parameters as device arrays [B]."""

    penalty: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    max_new: jax.Array
    seed: jax.Array

    @classmethod
    def build(cls, params: list[DecodeParams], batch: int) -> RowParams:
        pad = params + [params[-1]] * (batch - len(params))
        return cls(
            penalty=jnp.asarray([p.repetition_penalty for p in pad], jnp.float32),
            temperature=jnp.asarray([p.temperature for p in pad], jnp.float32),
            top_p=jnp.asarray([p.top_p for p in pad], jnp.float32),
            max_new=jnp.asarray([p.max_new_tokens for p in pad], jnp.int32),
            seed=jnp.asarray([p.seed % (2**32) for p in pad], jnp.uint32),
        )


class DecodeState(NamedTuple):
    cache: dict[str, jax.Array]
    logits: jax.Array  # [B,V] float32: logits of the next token (before processing)
    seen: jax.Array  # [B,V] bool: tokens in prompt or output (repetition penalty)
    out: jax.Array  # [B,N] int32 generated tokens (pad after the end)
    n_gen: jax.Array  # [B] int32
    finish: jax.Array  # [B] int32: FINISH_*
    prompt_len: jax.Array  # [B] int32
    step: jax.Array  # int32 scalar: steps taken (= n_gen of rows still running)

    @property
    def done(self) -> jax.Array:
        return self.finish != FINISH_RUNNING


def process_logits(logits: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
    """HF RepetitionPenaltyLogitsProcessor with a per-row penalty [B]."""
    p = penalty[:, None]
    return jnp.where(seen, jnp.where(logits < 0, logits * p, logits / p), logits)


def first_argmax(logits: jax.Array) -> jax.Array:
    """`jnp.argmax` over the last axis (the first index of the maximum) as two plain reductions: a max, then
    the smallest index holding it. XLA:CPU runs argmax as one variadic (value, index) reduction that does
    not vectorise: ~1.9 ms for [16, 49152] per decode step, 4% of a batch-16 step (bench/README.md).
    A row whose maximum is NaN gets the last index (argmax would return the NaN's)."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    idx = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    first = jnp.min(jnp.where(logits == top, idx, logits.shape[-1] - 1), axis=-1)
    return first.astype(jnp.int32)


def pick_tokens(logits: jax.Array, row: RowParams, n_gen: jax.Array) -> jax.Array:
    """Argmax for rows with temperature 0; temperature + top-p (nucleus) sampling for the others."""
    greedy = first_argmax(logits)

    def sample() -> jax.Array:
        t = jnp.maximum(row.temperature, 1e-6)[:, None]
        order = jnp.argsort(-logits, axis=-1)
        srt = jnp.take_along_axis(logits, order, axis=-1) / t
        probs = jax.nn.softmax(srt, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < row.top_p[:, None]  # always keeps the first
        srt = jnp.where(keep, srt, _MASKED)
        keys = jax.vmap(lambda s, n: jax.random.fold_in(jax.random.key(s), n))(row.seed, n_gen)
        choice = jax.vmap(jax.random.categorical)(keys, srt)
        sampled = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
        return jnp.where(row.temperature > 0, sampled, greedy)

    return jax.lax.cond(jnp.any(row.temperature > 0), sample, lambda: greedy)


_HEAD_EQ = "btd,dv->btv"  # the untied LM head as `Llama` holds it ([D, V]); the tied embedding is [V, D]


def _out_first(name: str, w: jax.Array, packed: bool) -> jax.Array | Packed:
    if name not in PROJ_EQ:
        return w
    return pack_weight(PROJ_EQ[name], w) if packed else to_out_first(PROJ_EQ[name], w)


def unstack_params(model: nnx.Module, dtype: Any = None, packed: bool = False) -> dict[str, Any]:
    """The model's weights with the layer axis split into a list (one dict per layer), laid out for decoding:
    each projection weight output axes first (`models.dense.to_out_first`, taken by `_layer(out_first=True)`)
    and the LM head as [V, D] (an untied `lm_head` [D, V] transposed once, like the tied embedding).

    dtype: cast the floating weights to it, slice by slice (e.g. a trainer's fp32 master weights decoded in
    bf16 without a second full copy in fp32); None keeps the model's dtypes.

    packed: the projection weights and the LM head as `models.cpu_kernels.Packed` panels instead (float32 on one
    CPU device; see `Decoder`); the tied embedding then also keeps its unpacked [V, D] for the token lookup."""

    def cast(a: jax.Array) -> jax.Array:
        if dtype is None or not jnp.issubdtype(a.dtype, jnp.floating) or a.dtype == dtype:
            return a
        return a.astype(dtype)

    n = model.cfg.num_layers
    layers = {k: v[...] for k, v in model.layers.items()}
    lora = {k: v[...] for k, v in model.lora.items()}
    embed = cast(model.embed[...])
    if model.lm_head is None:
        head = pack(embed, 1) if packed else None
    else:
        head = cast(model.lm_head[...])
        head = pack_weight(_HEAD_EQ, head) if packed else to_out_first(_HEAD_EQ, head)
    return {
        "embed": embed,
        "final_norm": cast(model.final_norm[...]),
        "lm_head": head,
        "layers": [{k: _out_first(k, cast(v[i]), packed) for k, v in layers.items()} for i in range(n)],
        "lora": [{k: cast(v[i]) for k, v in lora.items()} for i in range(n)],
    }


def forward_unrolled(
    cfg: LlamaConfig,
    lora_scale: float,
    p: dict[str, Any],
    tokens,
    positions,
    segment_ids,
    cache,
    last_only: bool = False,
    window: int | None = None,
    native: bool = False,
):
    """`models.modules.forward` with a cache, layers unrolled over per-layer weights.

    The same blocks (`models.modules._layer`) in the same order, so the numbers are the same; unrolling
    avoids slicing each layer's weights out of the stacked arrays at every step (a copy of all weights per
    decode step on CPU, which halves batch-1 speed).

    window: attend over only the `window` cache entries that end with the ones written now (the caller
    makes sure no live entry lies before them; infer/slots.py); None = the whole cache.
    native: one-token steps attend with the native kernel (`DecodeKernels.NATIVE`; see `models.modules._layer`).
    """
    dt = cfg.compute_dtype
    x = jnp.take(p["embed"], tokens, axis=0).astype(dt)
    segment_ids = segment_ids.astype(jnp.int32)
    index = cache["index"]
    k_seg = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, index))
    kc, vc = cache["k"], cache["v"]
    win = None
    if window is not None and window < k_seg.shape[1]:
        win = (jnp.clip(index + tokens.shape[1] - window, 0, k_seg.shape[1] - window), window)
    for i in range(cfg.num_layers):
        x, (kc, vc) = _layer(
            cfg,
            lora_scale,
            x,
            p["layers"][i],
            p["lora"][i],
            positions,
            segment_ids,
            k_seg,
            (kc, vc, i),
            index,
            win,
            out_first=True,
            native=native,
        )
    if last_only:
        x = x[:, -1:]
    x = rms_norm(x, p["final_norm"].astype(dt), cfg.rms_norm_eps)
    head = p["embed"] if p["lm_head"] is None else p["lm_head"]  # [V, D] = out-first of _HEAD_EQ's [D, V]
    if isinstance(head, Packed):
        logits = packed_dense(_HEAD_EQ, x, head)
    else:
        logits = dense_out_first(_HEAD_EQ, x, head.astype(dt), preferred_element_type=jnp.float32)
    new_cache = {"k": kc, "v": vc, "segment_ids": k_seg, "index": index + tokens.shape[1]}
    return logits, new_cache


def _prefill(model_info, params, tokens, mask, *, cache_len: int, out_len: int) -> DecodeState:
    cfg, lora_scale, native = model_info
    b, _ = tokens.shape
    vocab = cfg.vocab_size
    mask = mask.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    cache = init_cache(cfg, b, cache_len)
    logits, cache = forward_unrolled(
        cfg, lora_scale, params, tokens, positions, mask, cache, last_only=True, native=native
    )
    rows = jnp.arange(b)[:, None]
    seen = jnp.zeros((b, vocab), bool).at[rows, jnp.where(mask > 0, tokens, vocab)].set(True, mode="drop")
    return DecodeState(
        cache=cache,
        logits=logits[:, 0],
        seen=seen,
        out=jnp.zeros((b, out_len), jnp.int32),
        n_gen=jnp.zeros((b,), jnp.int32),
        finish=jnp.zeros((b,), jnp.int32),
        prompt_len=mask.sum(-1),
        step=jnp.zeros((), jnp.int32),
    )


def constrain_state(state: DecodeState) -> DecodeState:
    """The decode state sharded by the rules table under a mesh (batch over data x fsdp, KV heads over
    tensor, as `init_cache`); identity without one. Keeps a donated state's layout stable between calls."""
    c = state.cache
    kv = ("layers", "batch", "act_kv_heads", "length", None)
    cache = {
        "k": constrain(c["k"], kv),
        "v": constrain(c["v"], kv),
        "segment_ids": constrain(c["segment_ids"], ("batch", "length")),
        "index": c["index"],
    }
    rows = ("batch", None)
    return DecodeState(
        cache,
        constrain(state.logits, rows),
        constrain(state.seen, rows),
        constrain(state.out, rows),
        constrain(state.n_gen, ("batch",)),
        constrain(state.finish, ("batch",)),
        constrain(state.prompt_len, ("batch",)),
        state.step,
    )


def _decode(
    model_info,
    params,
    state: DecodeState,
    row: RowParams,
    eos_ids,
    steps,
    allowed,
    exit_done,
    *,
    pad_id: int,
    window: int | None = None,
):
    """Up to `steps` steps; stops early once `exit_done` rows are done (the batch size: when all are).

    Each running row's token goes to `out[row, n_gen]`, so rows that started at different times (continuous
    batching, infer/slots.py) share the loop; its RoPE position is `prompt_len + n_gen`, its key/value goes
    to the cache's shared write index. `window`: see `forward_unrolled` (static; one program per value)."""
    cfg, lora_scale, native = model_info
    b, n_out = state.out.shape
    rows = jnp.arange(b)
    cols = jnp.arange(n_out)[None, :]

    def cond(carry):
        i, s = carry
        return (i < steps) & (jnp.sum(s.done) < exit_done)

    def body(carry):
        i, s = carry
        logits = process_logits(s.logits, s.seen, row.penalty)
        if allowed is not None:
            logits = jnp.where(allowed, logits, _MASKED)
        running = ~s.done
        tok = jnp.where(running, pick_tokens(logits, row, s.n_gen), pad_id)
        out = jnp.where(running[:, None] & (cols == s.n_gen[:, None]), tok[:, None], s.out)
        n_gen = s.n_gen + running.astype(jnp.int32)
        is_eos = jnp.any(tok[:, None] == eos_ids[None, :], axis=-1)
        finish = jnp.where(
            running & is_eos,
            FINISH_STOP,
            jnp.where(running & (n_gen >= row.max_new), FINISH_LENGTH, s.finish),
        )
        seen = s.seen.at[rows, tok].set(True)
        positions = (s.prompt_len + s.n_gen)[:, None]
        ones = jnp.ones((b, 1), jnp.int32)
        logits, cache = forward_unrolled(
            cfg, lora_scale, params, tok[:, None], positions, ones, s.cache, window=window, native=native
        )
        return i + 1, DecodeState(cache, logits[:, 0], seen, out, n_gen, finish, s.prompt_len, s.step + 1)

    _, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))
    return constrain_state(state)


prefill_jit = jax.jit(_prefill, static_argnums=(0,), static_argnames=("cache_len", "out_len"))
decode_jit = jax.jit(_decode, static_argnums=(0,), static_argnames=("pad_id", "window"), donate_argnums=(2,))


class DecodeKernels(enum.Enum):
    """Which kernels a decode step runs (`Decoder(kernels=...)`)."""

    AUTO = "auto"  # NATIVE where it applies, else XLA; `Decoder.kernels` says which was taken
    XLA = "xla"  # XLA's dots and attention einsums: any backend, dtype and mesh
    NATIVE = "native"  # models.cpu_kernels: packed weight products, attention read in place; float32, one CPU


def native_unusable(model: nnx.Module, mesh: Mesh | None, dtype: Any) -> str | None:
    """Why `DecodeKernels.NATIVE` cannot decode this model here, or None if it can."""
    floats = {v[...].dtype for v in model.layers.values()} | {model.embed[...].dtype}
    weights = {jnp.dtype(dtype)} if dtype is not None else floats
    if jax.default_backend() != "cpu":
        return f"the backend is {jax.default_backend()}, the native kernels are CPU-only"
    if mesh is not None and mesh.size > 1:
        return f"the weights are sharded over {mesh.size} devices"
    if weights != {jnp.dtype(jnp.float32)} or jnp.dtype(model.cfg.compute_dtype) != jnp.float32:
        return (
            f"weights {sorted(map(str, weights))} / compute {jnp.dtype(model.cfg.compute_dtype)}, not float32"
        )
    cfg = model.cfg
    if cfg.head_dim % 16:
        return f"head_dim {cfg.head_dim} is not a multiple of 16 (the attention kernel's vector width)"
    if not native_built():
        return NATIVE_NOT_BUILT
    return None


def resolve_kernels(
    kernels: DecodeKernels, model: nnx.Module, mesh: Mesh | None, dtype: Any
) -> DecodeKernels:
    """AUTO -> NATIVE or XLA; NATIVE where it does not apply -> ValueError saying why."""
    if kernels is DecodeKernels.XLA:
        return kernels
    why = native_unusable(model, mesh, dtype)
    if why is None:
        return DecodeKernels.NATIVE
    if kernels is DecodeKernels.NATIVE:
        raise ValueError(f"kernels=native: {why}")
    if why == NATIVE_NOT_BUILT:  # everything else was right for the kernel: say why the slower path runs
        logging.getLogger(__name__).warning("decoding with XLA's kernels: %s", why)
    return DecodeKernels.XLA


class Decoder:
    """A model's weights (layers unstacked) plus the jitted prefill/decode programs for it.

    With a `mesh` (weights already placed on it, e.g. `load_model(place=models.sharding.mesh_placer(mesh))`),
    the programs run under `jax.set_mesh(mesh)`: weights keep their logical-axis shardings (tensor / fsdp),
    the batch and the KV cache are sharded by the same rules table as training, so a model that does not fit
    one device decodes over several.
    """

    def __init__(
        self,
        model: nnx.Module,
        eos_ids: list[int],
        pad_id: int,
        mesh: Mesh | None = None,
        dtype: Any = None,
        kernels: DecodeKernels = DecodeKernels.AUTO,
    ):
        self.cfg = model.cfg
        lora_scale = model.lora_cfg.scale if model.lora_cfg is not None else 0.0
        self.kernels = resolve_kernels(kernels, model, mesh, dtype)
        native = self.kernels is DecodeKernels.NATIVE
        self.graphdef = (model.cfg, lora_scale, native)  # static part of the jitted programs
        # dtype: see unstack_params
        self.params = unstack_params(model, dtype, packed=native)
        self.eos_ids = jnp.asarray(sorted(set(eos_ids)) or [-1], jnp.int32)
        self.pad_id = int(pad_id)
        self.mesh = mesh

    def with_eos(self, eos_ids: list[int]) -> Decoder:
        """The same weights and programs with other EOS ids."""
        other = copy.copy(self)
        other.eos_ids = jnp.asarray(sorted(set(eos_ids)) or [-1], jnp.int32)
        return other

    def _mesh_scope(self) -> contextlib.AbstractContextManager:
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def prefill(self, tokens: np.ndarray, mask: np.ndarray, cache_len: int, out_len: int) -> DecodeState:
        with self._mesh_scope():
            return prefill_jit(
                self.graphdef,
                self.params,
                jnp.asarray(tokens, jnp.int32),
                jnp.asarray(mask, jnp.int32),
                cache_len=cache_len,
                out_len=out_len,
            )

    def decode(
        self,
        state: DecodeState,
        row: RowParams,
        steps: int,
        allowed: np.ndarray | None = None,
        exit_done: int | None = None,
        window: int | None = None,
    ) -> DecodeState:
        """Up to `steps` steps, fewer once `exit_done` rows are done (default: all of them).

        window: attention reads only the last `window` cache entries up to the write index (the caller
        guarantees that no entry a row may see lies before them); None = the whole cache."""
        allowed_arr = None if allowed is None else jnp.asarray(allowed, bool)
        exit_done = state.out.shape[0] if exit_done is None else exit_done
        with self._mesh_scope():
            return decode_jit(
                self.graphdef,
                self.params,
                state,
                row,
                self.eos_ids,
                jnp.asarray(steps, jnp.int32),
                allowed_arr,
                jnp.asarray(exit_done, jnp.int32),
                pad_id=self.pad_id,
                window=window,
            )


def bucket(n: int, minimum: int = 1, maximum: int | None = None) -> int:
    """The smallest power of two >= n (and >= minimum), capped at maximum."""
    b = max(minimum, 1 << max(0, (n - 1).bit_length()))
    return min(b, maximum) if maximum is not None else b


def size_bucket(n: int, minimum: int) -> int:
    """The smallest of minimum x (1, 1.5, 2, 3, 4, 6, 8, ...) (powers of two and 1.5x them) >= n: few sizes
    (few compiled programs), never more than 1.5x n (power-of-two buckets waste up to 2x)."""
    w = minimum
    while w < n:
        w = w * 3 // 2 if w & (w - 1) == 0 else w * 4 // 3
    return w


def left_pad(ids: list[list[int]], length: int, batch: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """[batch, length] tokens and mask, each row right-aligned; extra rows are a single pad token."""
    tokens = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for i in range(batch):
        row = ids[i] if i < len(ids) else [pad_id]
        tokens[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    return tokens, mask
