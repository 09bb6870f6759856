"""The inference engine: a model and its tokenizer loaded once, prompts batched, bucketed and decoded.

`Engine.generate(prompts, params)` takes chat message lists (rendered with the chat template) or raw
strings (completions), sorts them by prompt length, cuts them into batches of at most `max_batch`, pads
each batch to power-of-two buckets (rows, prompt length, new tokens) and runs `infer.decode`. Each row has
its own `DecodeParams`; results come back in input order and do not depend on the batch a prompt ran in.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from infer.decode import FINISH_LENGTH, FINISH_STOP, DecodeParams, Decoder, RowParams, bucket, left_pad
from models.checkpoint import load_model
from models.embedded import resolve_model
from models.sharding import mesh_placer
from models.tokenizer import ChatTemplateError, ChatTokenizer

Messages = list[dict[str, str]]
Prompt = Messages | str
MIN_PROMPT_BUCKET = 16
MIN_NEW_BUCKET = 16
HOST_SEGMENT = 16  # decode steps between host checks when stop strings or streaming need them
_FINISH_NAMES = {FINISH_STOP: "stop", FINISH_LENGTH: "length"}


@dataclasses.dataclass
class Result:
    """One generation: new token ids (EOS included when hit), their text, why it ended."""

    ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or stop string) | "length" | "error"
    prompt_tokens: int
    response_tokens: int
    error: str | None = None
    # per generated token (when requested): (log-prob of the chosen token, [(token id, log-prob)] of the top
    # `logprobs` tokens), log-softmax of the model's raw logits at that step (before repetition penalty,
    # temperature and constraints)
    logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None


class Constraint(Protocol):
    """A per-row token constraint (e.g. infer.json_constraint.JsonObjectConstraint)."""

    def allowed(self, remaining: int) -> np.ndarray: ...  # bool [V]: tokens allowed at the next step

    def advance(self, token: int) -> None: ...


# on_delta(row index, text delta, finished) — called as text becomes final (streaming).
DeltaCallback = Callable[[int, str, bool], None]


def enable_compile_cache() -> None:
    """Persistent XLA compilation cache in $XLIT_HOME/jax_cache (set XLIT_JAX_CACHE=0 to disable)."""
    if os.environ.get("XLIT_JAX_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    from models.embedded import xlit_home

    jax.config.update("jax_compilation_cache_dir", str(xlit_home() / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """An HF directory, a training workdir (its `export/`), a .gguf file, or "embedded"."""
    p = resolve_model(str(spec))
    if p.is_dir() and not (p / "config.json").exists() and (p / "export" / "config.json").exists():
        return p / "export"
    if not p.exists():
        raise FileNotFoundError(f"{p}: model path does not exist")
    return p


def eos_ids_of(model_dir: Path, tokenizer: ChatTokenizer) -> list[int]:
    """EOS ids: the tokenizer's plus generation_config.json's (what HF generate stops on)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gc = model_dir / "generation_config.json"
    if gc.exists():
        eos = json.loads(gc.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids)


@dataclasses.dataclass
class _Row:
    index: int
    ids: list[int]
    params: DecodeParams
    constraint: Constraint | None
    logprobs: int | None = None  # top-k log-probs to record per step (0: the chosen token only)


@functools.partial(jax.jit, static_argnames=("k",))
def _step_logprobs(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """log-softmax of raw logits [B,V] and its top-k values / ids (for `logprobs` requests)."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top, idx = jax.lax.top_k(lp, k)
    return lp, top, idx


class Engine:
    """Loads a model once; `generate` answers prompts in batches.

    The engine keeps only the decoder's per-layer weights (not the model's stacked copy), so a loaded model
    costs its size once. With a `mesh`, weights, batch and KV cache are sharded over it (see `Decoder`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: ChatTokenizer,
        eos_ids: list[int],
        name: str,
        max_batch: int = 16,
        mesh: Mesh | None = None,
        dtype: Any = None,
    ):
        """dtype: cast the model's floating weights to it while unstacking them (None: keep them as they are;
        train/validate.py decodes a trainer's fp32 master weights in the compute dtype this way)."""
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch = max_batch
        self.eos_ids = eos_ids
        self.cfg = model.cfg
        self.mesh = mesh
        self.decoder = Decoder(model, eos_ids, tokenizer.pad_token_id, mesh=mesh, dtype=dtype)
        self._json_vocab = None

    def derive(
        self, *, name: str | None = None, max_batch: int | None = None, eos_ids: list[int] | None = None
    ) -> Engine:
        """Another engine on the same weights and compiled programs (other name / batch size / EOS ids)."""
        other = copy.copy(self)
        other.name = name if name is not None else self.name
        other.max_batch = max_batch if max_batch is not None else self.max_batch
        if eos_ids is not None:
            other.eos_ids = eos_ids
            other.decoder = self.decoder.with_eos(eos_ids)
            other._json_vocab = None  # built with the EOS ids
        return other

    @classmethod
    def from_path(
        cls,
        model_dir: str | os.PathLike,
        *,
        dtype: str = "float32",
        template: str = "model",
        max_batch: int = 16,
        name: str | None = None,
        mesh: Mesh | None = None,
    ) -> Engine:
        """Loads an HF directory / training workdir / .gguf / "embedded" with its tokenizer; with a `mesh`,
        each weight is streamed straight onto it with its logical-axis sharding."""
        enable_compile_cache()
        path = resolve_model_dir(model_dir)
        tok_dir = path.parent if path.is_file() else path
        tokenizer = ChatTokenizer(tok_dir, template=template)
        place = mesh_placer(mesh) if mesh is not None else None
        model = load_model(path, dtype=dtype, param_dtype=dtype, place=place)
        return cls(model, tokenizer, eos_ids_of(tok_dir, tokenizer), name or path.name, max_batch, mesh)

    # ------------------------------------------------------------------------------------------ prompts

    def json_constraint(self) -> Constraint:
        """A fresh JSON-object constraint for one row (vocabulary tables built once)."""
        from infer.json_constraint import JsonObjectConstraint, JsonVocab

        if self._json_vocab is None:
            self._json_vocab = JsonVocab(self.tokenizer, self.cfg.vocab_size, self.eos_ids)
        return JsonObjectConstraint(self._json_vocab)

    def encode(self, prompt: Prompt) -> list[int]:
        """Chat messages → template + generation prompt tokens; a string → its tokens (completion)."""
        if isinstance(prompt, str):
            return self.tokenizer.tok(prompt)["input_ids"]
        return self.tokenizer.encode_prompt(prompt)

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: DecodeParams | Sequence[DecodeParams] = DecodeParams(),
        *,
        constraints: Sequence[Constraint | None] | None = None,
        on_delta: DeltaCallback | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Result]:
        """Answers each prompt; a prompt that cannot be encoded gets a Result with finish_reason "error"."""
        ids: list[list[int] | None] = []
        errors: dict[int, str] = {}
        for i, p in enumerate(prompts):
            try:
                ids.append(self.encode(p))
            except (ChatTemplateError, TypeError, KeyError, ValueError) as e:
                ids.append(None)
                errors[i] = f"cannot encode prompt: {e}"
        return self.generate_ids(
            ids, params, constraints=constraints, on_delta=on_delta, progress=progress, errors=errors
        )

    def generate_ids(
        self,
        prompt_ids: Sequence[list[int] | None],
        params: DecodeParams | Sequence[DecodeParams] = DecodeParams(),
        *,
        constraints: Sequence[Constraint | None] | None = None,
        on_delta: DeltaCallback | None = None,
        progress: Callable[[int], None] | None = None,
        errors: dict[int, str] | None = None,
        logprobs: Sequence[int | None] | None = None,
    ) -> list[Result]:
        """Like `generate`, from token ids (None = a prompt that failed upstream, see `errors`).

        logprobs: per prompt, None or how many top log-probs to record per generated token (Result.logprobs).
        """
        n = len(prompt_ids)
        plist = [params] * n if isinstance(params, DecodeParams) else list(params)
        cons = list(constraints) if constraints is not None else [None] * n
        lps = list(logprobs) if logprobs is not None else [None] * n
        if len(plist) != n or len(cons) != n or len(lps) != n:
            raise ValueError(f"generate: {n} prompts but {len(plist)} params and {len(cons)} constraints")
        errors = dict(errors or {})
        results: list[Result | None] = [None] * n
        rows = []
        limit = self.cfg.max_position_embeddings
        for i, ids in enumerate(prompt_ids):
            if ids is None:
                continue
            if not ids:
                errors[i] = "empty prompt"
            elif len(ids) + plist[i].max_new_tokens > limit:
                errors[i] = (
                    f"prompt of {len(ids)} tokens + max_new_tokens {plist[i].max_new_tokens} exceeds the "
                    f"model's {limit} positions"
                )
            else:
                rows.append(_Row(i, list(ids), plist[i], cons[i], lps[i]))
        for i, msg in errors.items():
            size = len(prompt_ids[i] or [])
            results[i] = Result([], "", "error", size, 0, error=msg)
        rows.sort(key=lambda r: len(r.ids))
        for start in range(0, len(rows), self.max_batch):
            batch = rows[start : start + self.max_batch]
            for row, res in zip(batch, self._run_batch(batch, on_delta), strict=True):
                results[row.index] = res
            if progress is not None:
                progress(len(batch))
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ decode

    def _run_batch(self, rows: list[_Row], on_delta: DeltaCallback | None) -> list[Result]:
        n = len(rows)
        b = bucket(n, maximum=max(self.max_batch, n))
        p_len = bucket(max(len(r.ids) for r in rows), MIN_PROMPT_BUCKET)
        out_len = bucket(max(r.params.max_new_tokens for r in rows), MIN_NEW_BUCKET)
        tokens, mask = left_pad([r.ids for r in rows], p_len, b, self.tokenizer.pad_token_id)
        state = self.decoder.prefill(tokens, mask, p_len + out_len, out_len)
        if n < b:
            state = state._replace(finish=state.finish.at[n:].set(FINISH_LENGTH))
        row_params = RowParams.build([r.params for r in rows], b)
        constrained = any(r.constraint is not None for r in rows)
        host = _HostRows(self, rows, on_delta)
        want_lp = [r.logprobs is not None for r in rows]
        top_k = max([r.logprobs or 0 for r in rows], default=0) if any(want_lp) else None
        needs_host = constrained or on_delta is not None or any(r.params.stop for r in rows)
        steps = 1 if constrained or top_k is not None else HOST_SEGMENT if needs_host else out_len
        vocab = self.cfg.vocab_size
        while True:
            allowed = None
            if constrained:
                allowed = np.ones((b, vocab), bool)
                n_gen = np.asarray(state.n_gen)
                for i, r in enumerate(rows):
                    if r.constraint is not None and not host.done[i]:
                        allowed[i] = r.constraint.allowed(r.params.max_new_tokens - int(n_gen[i]))
            before = int(state.step)
            if top_k is not None:  # before decode: decode donates the state (and its logits)
                running = np.asarray(state.finish[:n]) == 0
                lp, top, idx = _step_logprobs(state.logits, k=max(1, top_k))
            state = self.decoder.decode(state, row_params, steps, allowed)
            finish = np.asarray(state.finish)
            after = int(state.step)
            if top_k is not None and after > before:
                tok = np.asarray(state.out[:n, before])
                chosen = np.asarray(lp[jnp.arange(n), jnp.asarray(tok)])
                top_np, idx_np = np.asarray(top[:n]), np.asarray(idx[:n])
                for i, r in enumerate(rows):
                    if want_lp[i] and running[i]:
                        k = r.logprobs or 0
                        pairs = [
                            (int(t), float(v)) for t, v in zip(idx_np[i, :k], top_np[i, :k], strict=True)
                        ]
                        host.logprobs[i].append((float(chosen[i]), pairs))
            if needs_host:
                new = np.asarray(state.out[:n, before:after])
                stopped = host.update(new, np.asarray(state.n_gen[:n]), finish[:n])
                if stopped:
                    idx = np.asarray(stopped)
                    state = state._replace(finish=state.finish.at[idx].set(FINISH_STOP))
                    finish = np.asarray(state.finish)
            if bool(np.all(finish != 0)) or after >= out_len:
                break
        out = np.asarray(state.out[:n])
        n_gen = np.asarray(state.n_gen[:n])
        return host.results(out, n_gen, finish[:n])


class _HostRows:
    """Host-side bookkeeping per row: stop strings, constraints, streamed text."""

    def __init__(self, engine: Engine, rows: list[_Row], on_delta: DeltaCallback | None):
        self.engine = engine
        self.rows = rows
        self.on_delta = on_delta
        self.ids: list[list[int]] = [[] for _ in rows]
        self.cut: list[int | None] = [None] * len(rows)  # token count and text cut for stop strings
        self.cut_text: list[str | None] = [None] * len(rows)
        self.sent = [0] * len(rows)  # characters already streamed
        self.done = [False] * len(rows)
        self.logprobs: list[list[tuple[float, list[tuple[int, float]]]]] = [[] for _ in rows]

    def _text(self, ids: list[int]) -> str:
        return self.engine.tokenizer.decode(ids)

    def update(self, new: np.ndarray, n_gen: np.ndarray, finish: np.ndarray) -> list[int]:
        """Takes the tokens of the last segment; returns rows that just hit a stop string."""
        stopped = []
        for i, r in enumerate(self.rows):
            if self.done[i]:
                continue
            start = len(self.ids[i])
            fresh = [int(t) for t in new[i][: int(n_gen[i]) - start]]
            self.ids[i].extend(fresh)
            if r.constraint is not None:
                for t in fresh:
                    r.constraint.advance(t)
            finished = bool(finish[i])
            if r.params.stop and fresh:
                hit = self._find_stop(i, start)
                if hit is not None:
                    stopped.append(i)
                    finished = True
            self.done[i] = finished
            if self.on_delta is not None:
                self._stream(i, finished)
        return stopped

    def _find_stop(self, i: int, start: int) -> int | None:
        stops = self.rows[i].params.stop
        ids = self.ids[i]
        text = self._text(ids)
        if not any(s in text for s in stops):
            return None
        for k in range(max(1, start), len(ids) + 1):  # the first token count whose text holds a stop
            t = self._text(ids[:k])
            pos = [t.find(s) for s in stops if s in t]
            if pos:
                self.cut[i] = k
                self.cut_text[i] = t[: min(pos)]
                self.ids[i] = ids[:k]
                return k
        return None

    def final_text(self, i: int) -> str:
        return self.cut_text[i] if self.cut_text[i] is not None else self._text(self.ids[i])

    def _stream(self, i: int, finished: bool) -> None:
        text = self.final_text(i)
        end = len(text)
        if not finished:
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
                end -= 1
            for s in self.rows[i].params.stop:  # hold back what may start a stop string
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[:end].endswith(s[:k]):
                        end -= k
                        break
        if end > self.sent[i] or finished:
            self.on_delta(i, text[self.sent[i] : end], finished)
            self.sent[i] = max(self.sent[i], end)

    def results(self, out: np.ndarray, n_gen: np.ndarray, finish: np.ndarray) -> list[Result]:
        res = []
        for i, r in enumerate(self.rows):
            if self.cut[i] is not None:
                ids, text, reason = self.ids[i], self.cut_text[i], "stop"
            else:
                ids = [int(t) for t in out[i][: int(n_gen[i])]]
                text, reason = self._text(ids), _FINISH_NAMES.get(int(finish[i]), "length")
                if self.on_delta is not None and not self.done[i]:
                    self.ids[i] = ids
                    self._stream(i, True)
            lp = self.logprobs[i][: len(ids)] if r.logprobs is not None else None
            res.append(Result(ids, text, reason, len(r.ids), len(ids), logprobs=lp))
        return res


def device_summary() -> str:
    d = jax.devices()
    return f"{len(d)}x {d[0].platform}"
