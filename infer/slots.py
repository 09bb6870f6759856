"""Continuous batching: a fixed number of decode slots; a row that ends frees its slot for the next prompt.

Device side (fixed shapes: `size` slots x `cache_len` cache entries x `out_len` output columns, so a run
compiles one decode program, and one prefill program per (prompt rows, prompt bucket)):

* The state is `infer.decode.DecodeState` over all slots. The slots share the cache's write index (the
  cursor): every decode step writes each slot's new key/value at the cursor and advances it. A slot's row
  owns the cache entries whose segment id is non-zero in its row of `segment_ids`; attention reads only
  those. RoPE positions are per slot (`prompt_len + n_gen`), so where a row sits in the cache changes
  nothing in its numbers (greedy tokens equal those of the prompt decoded alone).
* `admit` prefills prompts (left-padded to a bucket P) in a cache of their own and writes their keys and
  values into their slots at [cursor - P, cursor) (if the cursor is lower than P, every slot's entries
  first move right by the difference, so a live row never loses cache room to an admission); the
  slot's other entries get segment id 0, and its logits, "seen" set, outputs and counters are reset. The
  writes are `where` selects over the slot axis and dynamic slices over the length axis, so a cache sharded
  by slot (batch over data x fsdp) stays sharded.
* `decode` is the static path's loop (`infer.decode._decode`) for up to `segment` steps; it returns early
  once enough slots are done to refill them (`exit_done`). Its attention reads only a window of the cache
  that ends at the cursor and reaches back to the oldest live row's first entry (its width rounded up to
  one of a few sizes, `window_size`; one decode program per size): on CPU a step's cost grows with the
  entries attention reads, and the cache itself must be long enough for the longest prompt.
* `compact`: before the cursor would run past the end, every slot's entries move left by the start of the
  oldest live row (a roll over the length axis), which frees at least `segment` entries (see `Slots.submit`).

Host side, `Slots`: `submit(row)` queues a prompt, `step()` fills free slots from the queue, runs one
segment and returns the rows that ended (EOS, their own max_new_tokens, or a stop string found on the host).
Rows with a constraint or a log-prob request make the segments one step long while they are in a slot (the
allowed-token mask and the log-probs are host work per step); the other rows keep decoding in those steps.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from infer.decode import (
    FINISH_LENGTH,
    FINISH_RUNNING,
    FINISH_STOP,
    DecodeParams,
    Decoder,
    DecodeState,
    RowParams,
    bucket,
    constrain_state,
    forward_unrolled,
    left_pad,
    size_bucket,
)
from infer.rows import DeltaCallback, Result, Row, RowTrack, record_logprobs, step_logprobs, to_host
from models.modules import init_cache

SEGMENT = 16  # decode steps per device call (fewer when slots must be refilled)
MIN_WINDOW = 64
_IDLE = DecodeParams(max_new_tokens=1)  # parameters of a free slot (it decodes nothing)
MIN_PROMPT_BUCKET = 16


def window_size(n: int, cache_len: int) -> int:
    """The attention window for n live entries: 64, 96, 128, 192, 256, ... >= n, capped at cache_len."""
    return min(size_bucket(n, MIN_WINDOW), cache_len)


def prefill_groups(lengths: list[int], minimum: int = MIN_PROMPT_BUCKET) -> list[int]:
    """Where to cut prompts sorted by length into prefill calls: the sizes of consecutive groups that minimise
    the padded work, sum over calls of bucket(rows) x size_bucket(longest prompt) + one call's overhead
    (counted as `minimum` rows of `minimum` tokens)."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j prompts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + bucket(j - i) * size_bucket(lengths[j - 1], minimum) + minimum * minimum
            if cost < best[j]:
                best[j], cut[j] = cost, i
    sizes, j = [], n
    while j:
        sizes.append(j - cut[j])
        j = cut[j]
    return sizes[::-1]


def _init(model_info, *, size: int, cache_len: int, out_len: int) -> DecodeState:
    cfg = model_info[0]
    zeros = jnp.zeros((size,), jnp.int32)
    state = DecodeState(
        cache=init_cache(cfg, size, cache_len),
        logits=jnp.zeros((size, cfg.vocab_size), jnp.float32),
        seen=jnp.zeros((size, cfg.vocab_size), bool),
        out=jnp.zeros((size, out_len), jnp.int32),
        n_gen=zeros,
        finish=jnp.full((size,), FINISH_LENGTH, jnp.int32),  # every slot free
        prompt_len=zeros,
        step=jnp.zeros((), jnp.int32),
    )
    return constrain_state(state)


def _admit(model_info, params, st: DecodeState, tokens, mask, slot_of) -> DecodeState:
    """Prefills tokens/mask [k,P] (left-padded) into the slots where slot_of [size] >= 0 (row of tokens)."""
    cfg, lora_scale, native = model_info
    k, p = tokens.shape
    size, cache_len = st.cache["segment_ids"].shape
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    logits, new = forward_unrolled(
        cfg, lora_scale, params, tokens, positions, mask, init_cache(cfg, k, p), last_only=True, native=native
    )
    admit = slot_of >= 0
    take = jnp.maximum(slot_of, 0)
    cursor = jnp.maximum(st.cache["index"], p)
    start = cursor - p

    def put(big, small):  # big [L,size,K,S,H] <- small [L,k,K,P,H] at [start, cursor) of admitted slots
        window = jax.lax.dynamic_slice_in_dim(big, start, p, axis=3)
        window = jnp.where(admit[None, :, None, None, None], small[:, take].astype(big.dtype), window)
        return jax.lax.dynamic_update_slice_in_dim(big, window, start, axis=3)

    seg_rows = jax.lax.dynamic_update_slice_in_dim(
        jnp.zeros((size, cache_len), jnp.int32), mask[take], start, 1
    )
    vocab = cfg.vocab_size
    seen = jnp.zeros((k, vocab), bool).at[jnp.arange(k)[:, None], jnp.where(mask > 0, tokens, vocab)]
    seen = seen.set(True, mode="drop")
    col = admit[:, None]
    cache = {
        "k": put(st.cache["k"], new["k"]),
        "v": put(st.cache["v"], new["v"]),
        "segment_ids": jnp.where(col, seg_rows, st.cache["segment_ids"]),
        "index": cursor,
    }
    state = DecodeState(
        cache=cache,
        logits=jnp.where(col, logits[:, 0][take], st.logits),
        seen=jnp.where(col, seen[take], st.seen),
        out=jnp.where(col, 0, st.out),
        n_gen=jnp.where(admit, 0, st.n_gen),
        finish=jnp.where(admit, FINISH_RUNNING, st.finish),
        prompt_len=jnp.where(admit, mask.sum(-1)[take], st.prompt_len),
        step=st.step,
    )
    return constrain_state(state)


def _compact(st: DecodeState, shift) -> DecodeState:
    """Moves every slot's cache entries `shift` places left (right if negative); entries that wrap around
    get segment 0."""
    c = st.cache
    cache_len = c["segment_ids"].shape[1]
    seg = jnp.roll(c["segment_ids"], -shift, axis=1)
    pos = jnp.arange(cache_len)[None, :]
    seg = jnp.where((pos < cache_len - shift) & (pos >= -shift), seg, 0)
    cache = {
        "k": jnp.roll(c["k"], -shift, axis=3),
        "v": jnp.roll(c["v"], -shift, axis=3),
        "segment_ids": seg,
        "index": c["index"] - shift,
    }
    return constrain_state(st._replace(cache=cache))


def _mark_stopped(st: DecodeState, stopped) -> DecodeState:
    return st._replace(finish=jnp.where(stopped, FINISH_STOP, st.finish))


init_jit = jax.jit(_init, static_argnums=(0,), static_argnames=("size", "cache_len", "out_len"))
admit_jit = jax.jit(_admit, static_argnums=(0,), donate_argnums=(2,))
compact_jit = jax.jit(_compact, donate_argnums=(0,))
mark_stopped_jit = jax.jit(_mark_stopped, donate_argnums=(0,))


class Slots:
    """`size` decode slots over one engine's decoder, each holding one row at a time (see module doc).

    slots = engine.slots(size=16, cache_len=2048); slots.submit(row); while slots.busy: slots.step()
    """

    def __init__(
        self,
        decoder: Decoder,
        decode_text: Any,
        *,
        size: int,
        cache_len: int,
        out_len: int,
        max_positions: int,
        segment: int = SEGMENT,
    ):
        if cache_len < 2 * segment + MIN_PROMPT_BUCKET:
            raise ValueError(f"Slots: cache_len {cache_len} too small for segments of {segment} steps")
        self.decoder = decoder
        self.decode_text = decode_text  # token ids -> text
        self.size, self.cache_len, self.out_len, self.segment = size, cache_len, out_len, segment
        self.max_positions = max_positions
        self.refill = max(1, size // 16)  # free slots that end a segment early when prompts wait
        with decoder._mesh_scope():
            self.state = init_jit(decoder.graphdef, size=size, cache_len=cache_len, out_len=out_len)
        self.tracks: list[RowTrack | None] = [None] * size
        self.start = [0] * size  # cache entry of each live row's first prompt token
        self.cursor = 0  # mirrors state.cache["index"]
        self.waiting: collections.deque[tuple[Row, DeltaCallback | None]] = collections.deque()
        self._params: list[DecodeParams] = [_IDLE] * size
        self.row_params = RowParams.build([_IDLE], size)
        self.prefills: list[tuple[int, int]] = []  # (rows, prompt bucket) of each prefill call (tests, logs)
        self.compactions = 0
        self.windows: collections.Counter[int] = collections.Counter()  # decode calls per attention window

    # ------------------------------------------------------------------------------------------ host API

    @property
    def capacity(self) -> int:
        """The most prompt + new tokens one row may take."""
        return min(self.cache_len - self.segment, self.max_positions)

    @property
    def active(self) -> int:
        return sum(t is not None for t in self.tracks)

    @property
    def busy(self) -> bool:
        """Rows in slots or waiting for one."""
        return bool(self.waiting) or self.active > 0

    def check(self, row: Row) -> str | None:
        """Why this row cannot be decoded here (None: it can)."""
        n, new = len(row.ids), row.params.max_new_tokens
        if not n:
            return "empty prompt"
        if n + new > self.capacity:
            return (
                f"prompt of {n} tokens + max_new_tokens {new} exceeds the {self.capacity} positions a slot "
                f"holds (model: {self.max_positions}, slot cache: {self.cache_len} - {self.segment})"
            )
        if new > self.out_len:
            return f"max_new_tokens {new} exceeds the slots' {self.out_len} output columns"
        return None

    def submit(self, row: Row, on_delta: DeltaCallback | None = None) -> None:
        """Queues a row; it enters the next free slot at a `step`. ValueError (see `check`) if it cannot."""
        problem = self.check(row)
        if problem is not None:
            raise ValueError(f"row {row.index}: {problem}")
        self.waiting.append((row, on_delta))

    def step(self) -> list[tuple[Row, Result]]:
        """Fills free slots from the queue, decodes one segment, returns the rows that ended in it."""
        self._admit_waiting()
        live = [s for s in range(self.size) if self.tracks[s] is not None]
        if not live:
            return []
        tracks = {s: self.tracks[s] for s in live}
        per_step = any(t.row.constraint is not None or t.row.logprobs is not None for t in tracks.values())
        steps = 1 if per_step else self.segment
        if self.cursor + steps > self.cache_len:
            self._compact()
        steps = min(steps, self.cache_len - self.cursor)
        allowed = (
            self._allowed(tracks) if any(t.row.constraint is not None for t in tracks.values()) else None
        )
        want_lp = {s: t for s, t in tracks.items() if t.row.logprobs is not None}
        if want_lp:  # before decode: decode donates the state (and its logits)
            k = max(1, max(t.row.logprobs or 0 for t in want_lp.values()))
            lp, top, idx = step_logprobs(self.state.logits, k=k)
            before = to_host(self.state.n_gen)
        free = self.size - len(live)
        exit_done = free + min(self.refill, len(self.waiting)) if self.waiting else self.size
        window = window_size(self.cursor + steps - min(self.start[s] for s in live), self.cache_len)
        self.windows[window] += 1
        self.state = self.decoder.decode(
            self.state, self.row_params, steps, allowed, exit_done=exit_done, window=window
        )
        finish, n_gen = to_host(self.state.finish), to_host(self.state.n_gen)
        self.cursor = int(to_host(self.state.cache["index"]))
        ended = [s for s in live if finish[s] != FINISH_RUNNING]
        need_out = ended or want_lp or any(t.needs_host for t in tracks.values())
        out = to_host(self.state.out) if need_out else None
        if want_lp:
            picked = {s: int(out[s, before[s]]) for s in want_lp if n_gen[s] > before[s]}
            record_logprobs(want_lp, lp, top, idx, picked)
        stopped = []
        for s, t in tracks.items():
            if t.needs_host and t.update([int(x) for x in out[s, len(t.ids) : n_gen[s]]], s in ended):
                stopped.append(s)
        if stopped:
            mask = np.zeros(self.size, bool)
            mask[stopped] = True
            with self.decoder._mesh_scope():
                self.state = mark_stopped_jit(self.state, jnp.asarray(mask))
        done = []
        for s in sorted(set(ended) | set(stopped)):
            t = tracks[s]
            ids = [int(x) for x in out[s, : n_gen[s]]]
            done.append((t.row, t.result(ids, int(finish[s]) if s in ended else FINISH_STOP)))
            self.tracks[s] = None
        return done

    def run(
        self, rows: list[Row], on_delta: DeltaCallback | None = None, progress: Any = None
    ) -> list[Result]:
        """Decodes every row (in slots as they free up); results in the order of `rows`."""
        for r in rows:
            self.submit(r, on_delta)
        pos = {id(r): i for i, r in enumerate(rows)}
        results: list[Result | None] = [None] * len(rows)
        while self.busy:
            finished = self.step()
            for row, res in finished:
                results[pos[id(row)]] = res
            if progress is not None and finished:
                progress(len(finished))
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ internals

    def _allowed(self, tracks: dict[int, RowTrack]) -> np.ndarray:
        allowed = np.ones((self.size, self.decoder.cfg.vocab_size), bool)
        for s, t in tracks.items():
            if t.row.constraint is not None:
                allowed[s] = t.row.constraint.allowed(t.row.params.max_new_tokens - len(t.ids))
        return allowed

    def _admit_waiting(self) -> None:
        free = [s for s in range(self.size) if self.tracks[s] is None]
        n = min(len(free), len(self.waiting))
        if not n:
            return
        rows = [self.waiting.popleft() for _ in range(n)]
        order = sorted(range(n), key=lambda i: len(rows[i][0].ids))
        c = 0
        for size in prefill_groups([len(rows[i][0].ids) for i in order]):  # calls of similar lengths
            group = [rows[i] for i in order[c : c + size]]
            self._prefill(group, free[c : c + size], bucket(size))
            c += size

    def _prefill(self, group: list[tuple[Row, DeltaCallback | None]], slots: list[int], k: int) -> None:
        ids = [r.ids for r, _ in group]
        p = min(size_bucket(max(len(x) for x in ids), MIN_PROMPT_BUCKET), self.cache_len - self.segment)
        if self.cursor < p and self.active:
            # make room on the left instead of moving the cursor up: a jump of the shared cursor would use up
            # live rows' cache entries without them decoding (and could leave a row no room to finish)
            self._shift(self.cursor - p)
        tokens, mask = left_pad(ids, p, k, self.decoder.pad_id)
        slot_of = np.full(self.size, -1, np.int32)
        slot_of[slots] = np.arange(len(slots))
        with self.decoder._mesh_scope():
            self.state = admit_jit(
                self.decoder.graphdef,
                self.decoder.params,
                self.state,
                jnp.asarray(tokens),
                jnp.asarray(mask),
                jnp.asarray(slot_of),
            )
        self.prefills.append((k, p))
        self.cursor = max(self.cursor, p)
        for (row, on_delta), s in zip(group, slots, strict=True):
            self.tracks[s] = RowTrack(row, self.decode_text, on_delta)
            self.start[s] = self.cursor - len(row.ids)
            self._params[s] = row.params
        self.row_params = RowParams.build(self._params, self.size)

    def _compact(self) -> None:
        live = [s for s in range(self.size) if self.tracks[s] is not None]
        shift = min(self.start[s] for s in live) if live else self.cursor
        if shift > 0:
            self._shift(shift)
            self.compactions += 1

    def _shift(self, shift: int) -> None:
        """Every slot's entries `shift` places left (right if negative), the cursor with them."""
        with self.decoder._mesh_scope():
            self.state = compact_jit(self.state, jnp.asarray(shift, jnp.int32))
        self.cursor -= shift
        for s in range(self.size):
            if self.tracks[s] is not None:
                self.start[s] -= shift
