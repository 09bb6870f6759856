"""What a generation request and its answer are, and the host-side bookkeeping of one decoding row.

`Row` is a prompt (token ids) with its decoding parameters, optional constraint and log-prob request;
`RowTrack` follows it while it decodes (static batch or continuous slot alike): its tokens so far, the
constraint it advances, stop strings (cut on the host), streamed text and log-probs; `RowTrack.result`
gives its `Result`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from infer.decode import FINISH_LENGTH, FINISH_STOP, DecodeParams

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


# on_delta(row index, text delta, finished) — called as text becomes final (streaming); the row index is
# the prompt's index in the call (Row.index).
DeltaCallback = Callable[[int, str, bool], None]


@dataclasses.dataclass
class Row:
    """One prompt to decode; `index` is the caller's key for it (its position in a generate call)."""

    index: int
    ids: list[int]
    params: DecodeParams
    constraint: Constraint | None = None
    logprobs: int | None = None  # top-k log-probs to record per step (0: the chosen token only)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array on the host; over several processes (a multi-host mesh) every process gathers it."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.partial(jax.jit, static_argnames=("k",))
def step_logprobs(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """log-softmax of raw logits [B,V] and its top-k values / ids (for `logprobs` requests)."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top, idx = jax.lax.top_k(lp, k)
    return lp, top, idx


def record_logprobs(
    tracks: dict[int, RowTrack], lp: jax.Array, top: jax.Array, idx: jax.Array, tokens: dict[int, int]
) -> None:
    """Appends to each track (by batch row) the log-prob of the token it just picked and its top k."""
    if not tokens:
        return
    rows = sorted(tokens)
    chosen = to_host(lp[jnp.asarray(rows), jnp.asarray([tokens[r] for r in rows])])
    top_np, idx_np = to_host(top), to_host(idx)
    for c, r in zip(chosen, rows, strict=True):
        k = tracks[r].row.logprobs or 0
        pairs = [(int(t), float(v)) for t, v in zip(idx_np[r, :k], top_np[r, :k], strict=True)]
        tracks[r].logprobs.append((float(c), pairs))


class RowTrack:
    """Host-side state of one decoding row: stop strings, constraint, streamed text, log-probs."""

    def __init__(self, row: Row, decode: Callable[[list[int]], str], on_delta: DeltaCallback | None):
        self.row = row
        self.decode = decode
        self.on_delta = on_delta
        self.ids: list[int] = []  # tokens fed so far (rows that need the host every segment)
        self.cut: int | None = None  # token count and text cut for a stop string
        self.cut_text: str | None = None
        self.sent = 0  # characters already streamed
        self.done = False
        self.logprobs: list[tuple[float, list[tuple[int, float]]]] = []

    @property
    def needs_host(self) -> bool:
        """Whether the host must see this row's tokens after every segment (not only at its end)."""
        return self.row.constraint is not None or bool(self.row.params.stop) or self.on_delta is not None

    def update(self, fresh: list[int], finished: bool) -> bool:
        """Takes the row's new tokens (and whether the device ended it); True when a stop string ends it."""
        if self.done:
            return False
        start = len(self.ids)
        self.ids.extend(fresh)
        if self.row.constraint is not None:
            for t in fresh:
                self.row.constraint.advance(t)
        hit = bool(self.row.params.stop and fresh and self._find_stop(start))
        self.done = finished or hit
        if self.on_delta is not None:
            self._stream(self.done)
        return hit

    def _find_stop(self, start: int) -> bool:
        stops = self.row.params.stop
        ids = self.ids
        if not any(s in self.decode(ids) for s in stops):
            return False
        for k in range(max(1, start), len(ids) + 1):  # the first token count whose text holds a stop
            t = self.decode(ids[:k])
            pos = [t.find(s) for s in stops if s in t]
            if pos:
                self.cut, self.cut_text, self.ids = k, t[: min(pos)], ids[:k]
                return True
        return False

    def _final_text(self) -> str:
        return self.cut_text if self.cut_text is not None else self.decode(self.ids)

    def _stream(self, finished: bool) -> None:
        text = self._final_text()
        end = len(text)
        if not finished:
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
                end -= 1
            for s in self.row.params.stop:  # hold back what may start a stop string
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[:end].endswith(s[:k]):
                        end -= k
                        break
        if end > self.sent or finished:
            self.on_delta(self.row.index, text[self.sent : end], finished)
            self.sent = max(self.sent, end)

    def result(self, ids: list[int], finish: int) -> Result:
        """The row's Result from all its generated ids on the device and its device finish code."""
        if self.cut is not None:
            ids, text, reason = self.ids, self.cut_text or "", "stop"
        else:
            text, reason = self.decode(ids), _FINISH_NAMES.get(finish, "length")
            if self.on_delta is not None and not self.done:
                self.ids = ids
                self._stream(True)
        self.done = True
        lp = self.logprobs[: len(ids)] if self.row.logprobs is not None else None
        return Result(ids, text, reason, len(self.row.ids), len(ids), logprobs=lp)
