"""The inference engine: a model and its tokenizer loaded once, prompts batched, bucketed and decoded.

`Engine.generate(prompts, params)` takes chat message lists (rendered with the chat template) or raw
strings (completions). By default (`batching="continuous"`) the prompts go through `infer.slots.Slots`:
`max_batch` decode slots, a row that ends frees its slot and the next prompt (shortest first) is prefilled
into it. `batching="static"` sorts them by prompt length, cuts them into batches of at most `max_batch`,
pads each batch to power-of-two buckets (rows, prompt length, new tokens) and runs `infer.decode` until
its longest row ends. Each row has its own `DecodeParams`; results come back in input order and do not
depend on the batch a prompt ran in (greedy tokens are those of the prompt decoded alone).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh

from infer.decode import (
    FINISH_LENGTH,
    FINISH_STOP,
    DecodeKernels,
    DecodeParams,
    Decoder,
    RowParams,
    bucket,
    left_pad,
)
from infer.rows import Constraint, DeltaCallback, Result, Row, RowTrack, record_logprobs, step_logprobs
from infer.rows import to_host as _host
from infer.slots import MIN_PROMPT_BUCKET as SLOT_MIN_PROMPT_BUCKET
from infer.slots import SEGMENT, Slots
from models.checkpoint import load_model
from models.embedded import resolve_model
from models.sharding import mesh_placer
from models.tokenizer import ChatTemplateError, ChatTokenizer

Messages = list[dict[str, str]]
Prompt = Messages | str
MIN_PROMPT_BUCKET = SLOT_MIN_PROMPT_BUCKET
MIN_NEW_BUCKET = 16
HOST_SEGMENT = 16  # decode steps between host checks when stop strings or streaming need them
Batching = Literal["continuous", "static"]
__all__ = ["Constraint", "DeltaCallback", "Engine", "Prompt", "Result"]  # re-exported from infer.rows


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
        kernels: DecodeKernels = DecodeKernels.AUTO,
    ):
        """dtype: cast the model's floating weights to it while unstacking them (None: keep them as they are;
        train/validate.py decodes a trainer's fp32 master weights in the compute dtype this way).
        kernels: which kernels decoding runs (`infer.decode.DecodeKernels`; AUTO takes the native CPU ones
        where they apply, `self.decoder.kernels` says which)."""
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch = max_batch
        self.eos_ids = eos_ids
        self.cfg = model.cfg
        self.mesh = mesh
        self.decoder = Decoder(
            model, eos_ids, tokenizer.pad_token_id, mesh=mesh, dtype=dtype, kernels=kernels
        )
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
        kernels: DecodeKernels = DecodeKernels.AUTO,
    ) -> Engine:
        """Loads an HF directory / training workdir / .gguf / "embedded" with its tokenizer; with a `mesh`,
        each weight is streamed straight onto it with its logical-axis sharding."""
        enable_compile_cache()
        path = resolve_model_dir(model_dir)
        tok_dir = path.parent if path.is_file() else path
        tokenizer = ChatTokenizer(tok_dir, template=template)
        place = mesh_placer(mesh) if mesh is not None else None
        model = load_model(path, dtype=dtype, param_dtype=dtype, place=place)
        eos = eos_ids_of(tok_dir, tokenizer)
        return cls(model, tokenizer, eos, name or path.name, max_batch, mesh, kernels=kernels)

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
        batching: Batching = "continuous",
    ) -> list[Result]:
        """Like `generate`, from token ids (None = a prompt that failed upstream, see `errors`).

        logprobs: per prompt, None or how many top log-probs to record per generated token (Result.logprobs).
        batching: "continuous" (`max_batch` slots refilled as rows end, see infer/slots.py) or "static"
        (batches of `max_batch` prompts of similar length, each until its longest row ends). Same tokens.
        on_delta(i, text, finished) streams the text of prompt i; progress(n) counts finished prompts.
        """
        if batching not in ("continuous", "static"):
            raise ValueError(f"generate: batching must be 'continuous' or 'static', got {batching!r}")
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
                rows.append(Row(i, list(ids), plist[i], cons[i], lps[i]))
        for i, msg in errors.items():
            size = len(prompt_ids[i] or [])
            results[i] = Result([], "", "error", size, 0, error=msg)
        rows.sort(key=lambda r: len(r.ids))
        if batching == "continuous" and rows:
            # the static path's buckets (prompt, new tokens) plus room for the slots' cursor to move
            p_len = bucket(max(len(r.ids) for r in rows), MIN_PROMPT_BUCKET)
            out_len = bucket(max(r.params.max_new_tokens for r in rows), MIN_NEW_BUCKET)
            slots = self.slots(
                min(self.max_batch, bucket(len(rows))),
                cache_len=p_len + out_len + 4 * SEGMENT,
                out_len=out_len,
            )
            for row, res in zip(rows, slots.run(rows, on_delta, progress), strict=True):
                results[row.index] = res
            return results  # type: ignore[return-value]
        for start in range(0, len(rows), self.max_batch):
            batch = rows[start : start + self.max_batch]
            for row, res in zip(batch, self._run_batch(batch, on_delta), strict=True):
                results[row.index] = res
            if progress is not None:
                progress(len(batch))
        return results  # type: ignore[return-value]

    def slots(
        self,
        size: int | None = None,
        *,
        cache_len: int = 2048,
        out_len: int | None = None,
        segment: int = SEGMENT,
    ) -> Slots:
        """Continuous-batching decode slots over this engine (infer/slots.py): `size` slots (default
        `max_batch`) of `cache_len` cache entries each; a row may take up to cache_len - segment prompt +
        new tokens and `out_len` new tokens (default: all of them). Submit `Row`s, call `step()`."""
        return Slots(
            self.decoder,
            self.tokenizer.decode,
            size=size or self.max_batch,
            cache_len=cache_len,
            out_len=out_len or cache_len,
            max_positions=self.cfg.max_position_embeddings,
            segment=segment,
        )

    # ------------------------------------------------------------------------------------------ decode

    def _run_batch(self, rows: list[Row], on_delta: DeltaCallback | None) -> list[Result]:
        """One static batch, decoded until its longest row ends."""
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
        tracks = [RowTrack(r, self.tokenizer.decode, on_delta) for r in rows]
        want_lp = {i: t for i, t in enumerate(tracks) if t.row.logprobs is not None}
        top_k = max(1, max(t.row.logprobs or 0 for t in want_lp.values())) if want_lp else None
        needs_host = any(t.needs_host for t in tracks)
        steps = 1 if constrained or top_k is not None else HOST_SEGMENT if needs_host else out_len
        vocab = self.cfg.vocab_size
        while True:
            allowed = None
            if constrained:
                allowed = np.ones((b, vocab), bool)
                n_gen = _host(state.n_gen)
                for i, t in enumerate(tracks):
                    if t.row.constraint is not None and not t.done:
                        allowed[i] = t.row.constraint.allowed(t.row.params.max_new_tokens - int(n_gen[i]))
            before = int(state.step)
            if top_k is not None:  # before decode: decode donates the state (and its logits)
                running = _host(state.finish)[:n] == 0
                lp, top, idx = step_logprobs(state.logits, k=top_k)
            state = self.decoder.decode(state, row_params, min(steps, out_len - before), allowed)
            finish = _host(state.finish)
            after = int(state.step)
            if top_k is not None and after > before:
                tok = _host(state.out)[:n, before]
                picked = {i: int(tok[i]) for i in want_lp if running[i]}
                record_logprobs(want_lp, lp, top, idx, picked)
            if needs_host:
                new, n_gen = _host(state.out)[:n, before:after], _host(state.n_gen)[:n]
                stopped = []
                for i, t in enumerate(tracks):
                    if not t.done:
                        fresh = [int(x) for x in new[i][: int(n_gen[i]) - len(t.ids)]]
                        if t.update(fresh, bool(finish[i])):
                            stopped.append(i)
                if stopped:
                    state = state._replace(finish=state.finish.at[np.asarray(stopped)].set(FINISH_STOP))
                    finish = _host(state.finish)
            if bool(np.all(finish != 0)) or after >= out_len:
                break
        out, n_gen = _host(state.out)[:n], _host(state.n_gen)[:n]
        return [
            t.result([int(x) for x in out[i][: int(n_gen[i])]], int(finish[i])) for i, t in enumerate(tracks)
        ]
