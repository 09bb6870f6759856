"""Batching for the server: requests become `Job`s, one worker thread decodes them.

Two schedulers, chosen by `EngineBackend(batching=...)` (`infer.serve --batching`):

* `SlotScheduler` (continuous, the default): `max_batch` decode slots (`infer.slots.Slots`). A request
  that arrives is admitted into a free slot at the end of the current decode segment (at most
  `infer.slots.SEGMENT` steps), while the other slots keep decoding; a row that ends (EOS, max_tokens, a
  stop string) frees its slot and its request is answered at once. A request too long for a slot's cache
  (`slot_cache_len`) is decoded on its own, as a static batch of one.
* `Batcher` (static): takes the first waiting job, gathers whatever else arrives within `wait_s` (up to
  `max_batch`), and runs them through `Engine.generate_ids` as one batch per prompt-length bucket, until the
  longest row of each ends.

Each row has its own decoding parameters, output format and log-prob request. Results (and streamed text)
go back to the request's event loop through `Job.put`, so a waiting request holds no thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
from typing import Any, Literal

from infer.decode import DecodeParams, bucket
from infer.engine import MIN_PROMPT_BUCKET, Constraint, DeltaCallback, Engine, Prompt, Result
from infer.json_constraint import JsonFormat, JsonVocab, token_bytes
from infer.rows import Row
from infer.slots import SEGMENT

Batching = Literal["continuous", "static"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Job:
    """One request for a backend; create it on the server's event loop (it answers there)."""

    prompt: Prompt  # the request's messages (roles normalised, text content) or completion text
    ids: list[int]
    params: DecodeParams
    fmt: JsonFormat | None  # None: free text; else the reply's JSON format (json_object / json_schema)
    stream: bool
    logprobs: int | None = None  # None: no log-probs; k: the chosen token's and the top k per step
    _loop: asyncio.AbstractEventLoop = dataclasses.field(default_factory=asyncio.get_running_loop, repr=False)
    _events: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue, repr=False)

    def put(self, kind: str, value: Any) -> None:
        """From any thread: ("delta", text) while streaming, then once ("done", Result | Exception)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the server's loop is closed: nobody waits for this job any more
            pass

    async def next(self) -> tuple[str, Any]:
        return await self._events.get()

    async def result(self) -> Result | Exception:
        """The final Result (or the exception that ended the job), skipping streamed text."""
        while True:
            kind, value = await self.next()
            if kind == "done":
                return value


class Batcher:
    """Collects concurrent jobs into batches for the engine (one worker thread)."""

    def __init__(self, engine: Engine, max_batch: int, wait_s: float, vocab: JsonVocab):
        self.engine, self.max_batch, self.wait_s, self.vocab = engine, max_batch, wait_s, vocab
        self.queue: queue.Queue[Job] = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches run (observability, tests)
        threading.Thread(target=self._loop, daemon=True, name="batcher").start()

    def submit(self, job: Job) -> Job:
        self.queue.put(job)
        return job

    def _loop(self) -> None:
        while True:
            jobs = [self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batches.append(len(jobs))
            self._run(jobs)

    def constraint(self, fmt: JsonFormat | None) -> Constraint | None:
        """A fresh constraint for one row of format `fmt` (None: free text); grammars are compiled once."""
        return _constraint(self.vocab, fmt)

    def _run(self, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        # one engine batch per prompt-length bucket: a long prompt does not pad every other row to its length
        groups: dict[int, list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault(bucket(len(j.ids), MIN_PROMPT_BUCKET), []).append(i)
        results: list[Result | Exception] = [RuntimeError("not run")] * len(jobs)
        for idx in groups.values():

            def delta(k: int, text: str, finished: bool, idx: list[int] = idx) -> None:
                if jobs[idx[k]].stream and text:
                    jobs[idx[k]].put("delta", text)

            try:
                out = self.engine.generate_ids(
                    [jobs[i].ids for i in idx],
                    [jobs[i].params for i in idx],
                    constraints=[self.constraint(jobs[i].fmt) for i in idx],
                    on_delta=delta if any(jobs[i].stream for i in idx) else None,
                    logprobs=[jobs[i].logprobs for i in idx],
                    batching="static",
                )
            except Exception as e:  # report to every waiting client, keep serving
                log.exception("batch failed")
                out = [e] * len(idx)
            for i, r in zip(idx, out, strict=True):
                results[i] = r
        # logged before answering: once a client has its reply, its batch is in the log
        log.info("batch of %d requests in %.1fs", len(jobs), time.perf_counter() - t0)
        for j, r in zip(jobs, results, strict=True):
            j.put("done", r)


class SlotScheduler:
    """Continuous batching for the server: requests enter free decode slots as they arrive (module doc)."""

    def __init__(self, engine: Engine, max_batch: int, slot_cache_len: int, vocab: JsonVocab):
        self.engine, self.vocab = engine, vocab
        # a slot never needs more entries than the model has positions (plus the cursor's segment of room)
        self.cache_len = min(slot_cache_len, engine.cfg.max_position_embeddings + SEGMENT)
        self.size = max_batch
        self.slots = engine.slots(max_batch, cache_len=self.cache_len)
        self.queue: queue.Queue[Job] = queue.Queue()
        self.jobs: dict[int, Job] = {}  # Row.index -> its request, while in a slot or waiting for one
        self._ids = itertools.count()
        threading.Thread(target=self._loop, daemon=True, name="slots").start()

    def submit(self, job: Job) -> Job:
        self.queue.put(job)
        return job

    def _loop(self) -> None:
        while True:
            if not self.slots.busy:  # idle: sleep until a request comes
                self._take(self.queue.get())
            while True:  # everything that arrived during the last segment
                try:
                    self._take(self.queue.get_nowait())
                except queue.Empty:
                    break
            if self.slots.busy:
                self._segment()

    def _take(self, job: Job) -> None:
        try:
            row = Row(next(self._ids), job.ids, job.params, _constraint(self.vocab, job.fmt), job.logprobs)
            if self.slots.check(row) is not None:  # longer than a slot holds: decoded alone (static)
                self._alone(job, row)
                return
            self.slots.submit(row, _stream_to(job))
            self.jobs[row.index] = job
        except Exception as e:  # this request fails (its client gets a 500); the worker keeps serving
            log.exception("request not admitted")
            job.put("done", e)

    def _alone(self, job: Job, row: Row) -> None:
        try:
            (out,) = self.engine.generate_ids(
                [row.ids],
                [row.params],
                constraints=[row.constraint],
                on_delta=_stream_to(job),
                logprobs=[row.logprobs],
                batching="static",
            )
        except Exception as e:
            log.exception("request failed")
            out = e
        log.info("batch of 1 requests decoded alone (longer than a slot's %d cache entries)", self.cache_len)
        job.put("done", out)

    def _segment(self) -> None:
        waiting = len(self.slots.waiting)
        try:
            finished = self.slots.step()
        except Exception as e:  # report to every request in the slots, start again with fresh slots
            log.exception("decode failed")
            for job in self.jobs.values():
                job.put("done", e)
            self.jobs.clear()
            self.slots = self.engine.slots(self.size, cache_len=self.cache_len)
            return
        admitted = waiting - len(self.slots.waiting)
        if admitted:
            # logged before any of them is answered
            log.info(
                "batch of %d requests admitted into free slots (%d of %d slots busy)",
                admitted,
                self.slots.active + len(finished),
                self.size,
            )
        for row, res in finished:
            self.jobs.pop(row.index).put("done", res)


def _constraint(vocab: JsonVocab, fmt: JsonFormat | None) -> Constraint | None:
    return None if fmt is None else vocab.constraint(fmt.grammar)


def _stream_to(job: Job) -> DeltaCallback | None:
    """The on_delta that sends a streaming job its text as it becomes final (None: not streaming)."""
    if not job.stream:
        return None

    def delta(_i: int, text: str, finished: bool) -> None:
        if text:
            job.put("delta", text)

    return delta


class EngineBackend:
    """The server's backend over one Engine: tokenization, context size, token texts, the scheduler."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 16,
        batch_wait_ms: int = 10,
        batching: Batching = "continuous",
        slot_cache_len: int = 2048,
    ):
        """batching: "continuous" (SlotScheduler: `max_batch` slots of `slot_cache_len` cache entries) or
        "static" (Batcher: batches gathered over `batch_wait_ms`)."""
        if batching not in ("continuous", "static"):
            raise ValueError(f"EngineBackend: batching must be 'continuous' or 'static', got {batching!r}")
        self.engine = engine
        self.name = engine.name
        self.context_length = engine.cfg.max_position_embeddings
        self.eos_ids = engine.eos_ids
        # one table for every response format (json_object and json_schema rows alike)
        self.vocab = JsonVocab(engine.tokenizer, engine.cfg.vocab_size, engine.eos_ids)
        self.scheduler: Batcher | SlotScheduler = (
            SlotScheduler(engine, max_batch, slot_cache_len, self.vocab)
            if batching == "continuous"
            else Batcher(engine, max_batch, batch_wait_ms / 1000, self.vocab)
        )
        self._token_bytes: list[bytes | None] | None = None

    def encode(self, prompt: Prompt) -> list[int]:
        return self.engine.encode(prompt)

    def submit(self, job: Job) -> None:
        self.scheduler.submit(job)

    def min_tokens(self, fmt: JsonFormat) -> int | None:
        """Tokens of the shortest reply found in format `fmt` (None: none within the search limit);
        ValueError if the grammar does not compile for this tokenizer."""
        return self.vocab.min_tokens(fmt.grammar)

    def token(self, token_id: int) -> tuple[str, list[int]]:
        """A token's text and UTF-8 bytes as OpenAI reports them (special tokens: their name, no bytes)."""
        if self._token_bytes is None:
            self._token_bytes = token_bytes(self.engine.tokenizer)
        table = self._token_bytes
        b = table[token_id] if 0 <= token_id < len(table) else None
        if b is None:
            return str(self.engine.tokenizer.tok.convert_ids_to_tokens(token_id)), []
        return b.decode("utf-8", errors="replace"), list(b)
