"""Training data: Dolly / LIMA records → chat token ids with a loss mask → packed, token-budget batches.

Input formats (`config.data.format`):
  * "dolly": one record per JSONL line `{"instruction": str, "context": str (optional), "response": str, ...}`
    or a Parquet file with the translation pipeline's columns (`TRANSLATION_SCHEMA`: id, lang, instruction,
    context, response, ...). A non-empty `context` is joined to the instruction as `instruction + "\\n\\n" +
    context`; the chat is then [user: that text, assistant: response].
  * "lima": one record per JSONL line `{"conversations": [user, assistant, user, assistant, ...]}` (strings,
    alternating, user first) or `{"messages": [{"role", "content"}, ...]}`. The loss covers every assistant turn.

Languages: a path may be written `lang=path`; otherwise a JSONL file named `*.{lang}.jsonl` (2-letter code)
is that language, a record's own `lang` field wins, and anything else is "en". With several languages,
examples are drawn language by language (`lang_sampling`: "uniform" = each language equally often, the
paper's Dolly-DT setting; "proportional" = by size), per example or per micro-batch (`lang_unit`).

Batching: each micro-batch is `rows × seq_len` tokens (`batch_tokens = rows * seq_len`). Examples are
packed first-fit into rows; `segment_ids` (1, 2, ... per example, 0 = padding) keep them from attending to
each other and `positions` restart at 0. An example of n tokens occupies n-1 slots (inputs ids[:-1],
targets ids[1:], weight = loss mask of the target). Order: each language is shuffled per epoch from the
seed; the whole position (draw counter, per-language epoch and cursor, counters) is `Loader.state`, a
JSON-able dict saved with every checkpoint, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from beam_pipelines.files import RecordError, iter_jsonl, read_table
from beam_pipelines.schemas import TRANSLATION_SCHEMA, validate

FORMATS = ("dolly", "lima")
LANG_SAMPLING = ("uniform", "proportional")
LANG_UNITS = ("example", "microbatch")
OVER_BUDGET = ("truncate", "skip")
EMPTY_RESPONSE = ("skip", "error")
BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
HUB_DOLLY = "databricks/databricks-dolly-15k"


class DataError(ValueError):
    """Training data cannot be used; the message names the file (and line)."""


@dataclass
class Record:
    messages: list[dict[str, str]]
    where: str  # "file:line" (JSONL) or "file:row N" (Parquet)


@dataclass
class Corpus:
    """Records grouped by language, plus counts of what reading dropped."""

    by_lang: dict[str, list[Record]]
    stats: dict[str, int] = field(default_factory=dict)


def _dolly_messages(rec: dict, where: str) -> list[dict[str, str]]:
    for key in ("instruction", "response"):
        if not isinstance(rec.get(key), str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(rec.get(key)).__name__}")
    ctx = rec.get("context") or ""
    if not isinstance(ctx, str):
        raise DataError(f"{where}: field 'context' must be a string")
    prompt = rec["instruction"].strip()
    if ctx.strip():
        prompt = f"{prompt}\n\n{ctx.strip()}"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": rec["response"]}]


def _lima_messages(rec: dict, where: str) -> list[dict[str, str]]:
    if isinstance(rec.get("messages"), list):
        msgs = rec["messages"]
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise DataError(
                    f"{where}: messages[{i}] must be {{'role': system|user|assistant, 'content'}}"
                )
            if not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{i}].content must be a string")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: no assistant message")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    conv = rec.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(t, str) for t in conv):
        raise DataError(f"{where}: 'conversations' must be a list of >= 2 strings (user, assistant, ...)")
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(conv)]


def _file_lang(path: str) -> tuple[str | None, str]:
    m = re.match(r"^([a-z]{2,3})=(.+)$", path)
    if m:
        return m.group(1), m.group(2)
    m = re.search(r"\.([a-z]{2})\.jsonl$", path)
    return (m.group(1) if m else None), path


def _hub_file(name: str) -> str:
    """Downloads the Dolly JSONL from the hub (only when a config names `data.hub_dataset`)."""
    if name != HUB_DOLLY:
        raise DataError(f"data.hub_dataset={name!r}: only {HUB_DOLLY!r} is supported; use data.paths")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(name, "databricks-dolly-15k.jsonl", repo_type="dataset")
    except Exception as e:  # offline, proxy, ...
        raise DataError(
            f"cannot download {name} from the hub ({e}); download it and set data.paths"
        ) from None


def read_corpus(
    paths: Sequence[str],
    fmt: str,
    languages: Sequence[str] = (),
    empty_response: str = "skip",
    hub_dataset: str = "",
) -> Corpus:
    """Reads and validates every record (bad input raises DataError naming file:line)."""
    if fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r}: use one of {FORMATS}")
    to_messages = _dolly_messages if fmt == "dolly" else _lima_messages
    paths = list(paths) + ([_hub_file(hub_dataset)] if hub_dataset else [])
    if not paths:
        raise DataError("no training data: set data.paths (or data.hub_dataset when online)")
    by_lang: dict[str, list[Record]] = {}
    stats = {"records": 0, "empty_response_skipped": 0}
    for spec in paths:
        lang, path = _file_lang(spec)
        if not os.path.isfile(path):
            raise DataError(f"{path}: training file does not exist")
        if path.endswith(".parquet"):
            if fmt != "dolly":
                raise DataError(f"{path}: Parquet input is supported for the dolly format only")
            table = read_table(path)
            validate(table, TRANSLATION_SCHEMA, path, required=("lang", "instruction", "context", "response"))
            rows = ((f"{path}:row {i}", r) for i, r in enumerate(table.to_pylist()))
        else:
            try:
                rows = [(f"{path}:{n}", r) for n, r in iter_jsonl(path)]
            except RecordError as e:
                raise DataError(str(e)) from None
        for where, rec in rows:
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            msgs = to_messages(rec, where)
            if any(m["role"] == "assistant" and not m["content"].strip() for m in msgs):
                if empty_response == "error":
                    raise DataError(f"{where}: empty response (data.empty_response='error')")
                stats["empty_response_skipped"] += 1
                continue
            rec_lang = rec.get("lang") if isinstance(rec.get("lang"), str) else None
            code = rec_lang or lang or "en"
            if languages and code not in languages:
                continue
            by_lang.setdefault(code, []).append(Record(msgs, where))
            stats["records"] += 1
    if languages:
        missing = [lang for lang in languages if lang not in by_lang]
        if missing:
            raise DataError(f"data.languages lists {missing}, but no record in {paths} has that language")
    if not by_lang:
        raise DataError(f"{paths}: no usable training record")
    return Corpus(dict(sorted(by_lang.items())), stats)


@dataclass
class Tokenized:
    inputs: np.ndarray  # [n-1] int32
    targets: np.ndarray  # [n-1] int32
    weights: np.ndarray  # [n-1] float32 (1 on response targets)


class Loader:
    """Deterministic packed batches `[grad_accum, rows, seq_len]`; `state` is the resumable position."""

    def __init__(
        self,
        corpus: Corpus,
        encode,  # messages -> EncodedChat (ids, loss_mask)
        *,
        seq_len: int,
        rows: int,
        grad_accum: int,
        seed: int,
        over_budget: str = "truncate",
        lang_sampling: str = "uniform",
        lang_unit: str = "example",
    ):
        if over_budget not in OVER_BUDGET:
            raise DataError(f"data.over_budget={over_budget!r}: use one of {OVER_BUDGET}")
        if lang_sampling not in LANG_SAMPLING or lang_unit not in LANG_UNITS:
            raise DataError(f"data.lang_sampling / lang_unit: use {LANG_SAMPLING} / {LANG_UNITS}")
        self.corpus, self.encode = corpus, encode
        self.seq_len, self.rows, self.grad_accum, self.seed = seq_len, rows, grad_accum, seed
        self.over_budget, self.lang_unit = over_budget, lang_unit
        self.langs = list(corpus.by_lang)
        sizes = np.array([len(corpus.by_lang[lang]) for lang in self.langs], np.float64)
        self.probs = (
            np.full(len(sizes), 1 / len(sizes)) if lang_sampling == "uniform" else sizes / sizes.sum()
        )
        self._cache: dict[tuple[str, int], Tokenized | None] = {}
        self._perm: dict[tuple[str, int], np.ndarray] = {}
        self._lang_block: tuple[int, np.ndarray] | None = None
        self.state: dict[str, Any] = {
            "draws": 0,
            "microbatches": 0,
            "cursor": {lang: [0, 0] for lang in self.langs},
            "stats": {"over_budget_truncated": 0, "over_budget_skipped": 0, "no_response_skipped": 0},
        }

    # -- position
    def set_state(self, state: dict[str, Any]) -> None:
        if sorted(state["cursor"]) != sorted(self.langs):
            raise DataError(
                f"checkpoint data position has languages {sorted(state['cursor'])}, data has {self.langs}"
            )
        self.state = {
            "draws": int(state["draws"]),
            "microbatches": int(state["microbatches"]),
            "cursor": {k: [int(e), int(p)] for k, (e, p) in state["cursor"].items()},
            "stats": {k: int(v) for k, v in state["stats"].items()},
        }

    def _lang_of(self, k: int) -> str:
        if len(self.langs) == 1:
            return self.langs[0]
        block, off = divmod(k, 4096)
        if self._lang_block is None or self._lang_block[0] != block:
            rng = np.random.default_rng([self.seed, 7919, block])
            self._lang_block = (block, rng.choice(len(self.langs), size=4096, p=self.probs))
        return self.langs[int(self._lang_block[1][off])]

    def _perm_of(self, lang: str, epoch: int) -> np.ndarray:
        key = (lang, epoch)
        if key not in self._perm:
            n = len(self.corpus.by_lang[lang])
            self._perm = {k: v for k, v in self._perm.items() if k[0] != lang}  # keep one epoch per language
            self._perm[key] = np.random.default_rng([self.seed, self.langs.index(lang), epoch]).permutation(n)
        return self._perm[key]

    def _peek(self) -> tuple[str, int]:
        s = self.state
        lang = self._lang_of(s["draws"] if self.lang_unit == "example" else s["microbatches"])
        epoch, pos = s["cursor"][lang]
        return lang, int(self._perm_of(lang, epoch)[pos])

    def _advance(self, lang: str) -> None:
        s = self.state
        s["draws"] += 1
        epoch, pos = s["cursor"][lang]
        pos += 1
        if pos == len(self.corpus.by_lang[lang]):
            epoch, pos = epoch + 1, 0
        s["cursor"][lang] = [epoch, pos]

    def _tokenize(self, lang: str, idx: int) -> Tokenized | None:
        key = (lang, idx)
        if key not in self._cache:
            rec = self.corpus.by_lang[lang][idx]
            try:
                enc = self.encode(rec.messages)
            except Exception as e:
                raise DataError(f"{rec.where}: cannot apply the chat template ({e})") from None
            ids = np.asarray(enc.ids, np.int32)
            mask = np.asarray(enc.loss_mask, np.float32)
            self._cache[key] = Tokenized(ids[:-1], ids[1:], mask[1:])
        return self._cache[key]

    def _next_example(self) -> tuple[str, Tokenized, bool]:
        stats = self.state["stats"]
        for _ in range(100_000):
            lang, idx = self._peek()
            ex = self._tokenize(lang, idx)
            n = len(ex.inputs)
            if n > self.seq_len:
                if self.over_budget == "skip":
                    stats["over_budget_skipped"] += 1
                    self._advance(lang)
                    continue
                ex = Tokenized(
                    ex.inputs[: self.seq_len], ex.targets[: self.seq_len], ex.weights[: self.seq_len]
                )
                if ex.weights.sum() == 0:
                    stats["over_budget_skipped"] += 1
                    self._advance(lang)
                    continue
                return lang, ex, True
            elif ex.weights.sum() == 0:
                stats["no_response_skipped"] += 1
                self._advance(lang)
                continue
            return lang, ex, False
        raise DataError("no example fits data.seq_len with a response token left; raise data.seq_len")

    def _microbatch(self) -> dict[str, np.ndarray]:
        r, t = self.rows, self.seq_len
        out = {k: np.zeros((r, t), np.float32 if k == "weights" else np.int32) for k in BATCH_KEYS}
        fill = [0] * r
        segs = [0] * r
        placed = 0
        while True:
            lang, ex, truncated = self._next_example()
            n = len(ex.inputs)
            row = next((i for i in range(r) if fill[i] + n <= t), None)
            if row is None:
                break  # carried over: the example stays at the cursor for the next micro-batch
            a, b = fill[row], fill[row] + n
            segs[row] += 1
            out["inputs"][row, a:b] = ex.inputs
            out["targets"][row, a:b] = ex.targets
            out["weights"][row, a:b] = ex.weights
            out["segment_ids"][row, a:b] = segs[row]
            out["positions"][row, a:b] = np.arange(n)
            fill[row] = b
            placed += 1
            if truncated:
                self.state["stats"]["over_budget_truncated"] += 1
            self._advance(lang)
            if min(fill) == t:
                break
        assert placed > 0
        self.state["microbatches"] += 1
        return out

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next optimizer step's data: each array `[grad_accum, rows, seq_len]`."""
        mbs = [self._microbatch() for _ in range(self.grad_accum)]
        return {k: np.stack([m[k] for m in mbs]) for k in BATCH_KEYS}


def check_paths(paths: Sequence[str]) -> None:
    """Fails early (before any work) when a training file is missing."""
    for spec in paths:
        _, path = _file_lang(spec)
        if not Path(path).is_file():
            raise DataError(f"{path}: training file does not exist")
