"""Training data: Dolly / LIMA records → chat token ids with a loss mask → packed, token-budget batches.

Input formats (`config.data.format`):
  * "dolly": one record per JSONL line `{"instruction": str, "context": str (optional), "response": str, ...}`
    or a Parquet file with the translation pipeline's columns (`TRANSLATION_SCHEMA`: id, lang, instruction,
    context, response, ...). A non-empty `context` is joined to the instruction as `instruction + "\\n\\n" +
    context`; the chat is then [user: that text, assistant: response]. A record with a non-empty `flags` list
    (flagged by the translation pipeline's quality checks) is skipped and counted as
    `translation_flagged_skipped`, unless `data.keep_flagged`.
  * "lima": one record per JSONL line `{"conversations": [user, assistant, user, assistant, ...]}` (strings,
    alternating, user first) or `{"messages": [{"role", "content"}, ...]}`. The loss covers every assistant turn.

Languages: a path may be written `lang=path`; otherwise a JSONL file named `*.{lang}.jsonl` (2-letter code)
is that language, a record's own `lang` field wins, and anything else is "en". With several languages,
examples are drawn language by language (`lang_sampling`: "uniform" = each language equally often, the
paper's Dolly-DT setting; "proportional" = by size), per example or per micro-batch (`lang_unit`; with sorted
batching the buffer is filled per example and each language of the buffer is grouped apart, so every
micro-batch holds one language, as pasero's `batch_by: lang`).

Pre-check: when the Loader is built, before the first step, every record is tokenized once (the result is
kept: nothing is tokenized twice) and checked: the chat template renders, the example fits `seq_len` (else
skipped as pasero does, or truncated: `over_budget`), at least one response token is left. An unusable record
is skipped and counted per reason (`Loader.stats` → data_stats.json) or, with `bad_records="error"`, fails
the run before any work with `file:line: reason`. Only usable records are drawn.

Batching (`batching`): each micro-batch is `rows × seq_len` tokens (`batch_tokens = rows * seq_len`). An
example of n tokens occupies n-1 slots (inputs ids[:-1], targets ids[1:], weight = loss mask of the target);
several examples share a row with `segment_ids` (1, 2, ... per example, 0 = padding) that keep them from
attending to each other and `positions` that restart at 0.
  * "sorted" (default, pasero's released batching): a buffer of `buffer_size` examples, drawn in the same
    order as below, is randomly permuted then stably sorted by length and cut greedily into groups whose
    padded size (longest × count) is ≤ batch_tokens (padding counts, as in pasero); the groups are shuffled
    (seeded) and each is one micro-batch, laid out first-fit-decreasing into the rows. A group that cannot
    be laid out (rows > 1 only) is cut: its rest starts the next micro-batch, followed by the next group as
    far as it fits (counted as `layout_cut`; docs/train.md measures the effect).
  * "packed" (opt-in): examples are packed first-fit into rows in draw order, so far fewer slots are padding.
Order: each language is shuffled per epoch from the seed; the whole position (draw counter, per-language epoch
and cursor, the current buffer's start and the groups already emitted, counters) is `Loader.state`, a JSON-able
dict saved with every checkpoint, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from records.errors import InputError
from records.files import RecordError, iter_jsonl, read_table
from records.rows import LimaRecord, TrainingRecord, check
from records.schemas import TRANSLATION_SCHEMA, validate

FORMATS = ("dolly", "lima")
LANG_SAMPLING = ("uniform", "proportional")
LANG_UNITS = ("example", "microbatch")
OVER_BUDGET = ("truncate", "skip")
EMPTY_RESPONSE = ("skip", "error")
BATCHING = ("sorted", "packed")
BAD_RECORDS = ("skip", "error")
BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
HUB_DOLLY = "databricks/databricks-dolly-15k"


class DataError(InputError):
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
    files: list[str] = field(default_factory=list)  # the files read, as named (a `lang=` prefix dropped)


def _dolly_chat(rec: TrainingRecord) -> list[dict[str, str]]:
    prompt = rec.instruction.strip()
    ctx = (rec.context or "").strip()
    if ctx:
        prompt = f"{prompt}\n\n{ctx}"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": rec.response}]


def _dolly_messages(rec: Any, where: str) -> list[dict[str, str]]:
    """A Dolly record (checked as records.rows.TrainingRecord) → [user: instruction + context, assistant]."""
    return _dolly_chat(check(TrainingRecord, rec, where, DataError))


def _messages(rec: Any, fmt: str, where: str) -> tuple[list[dict[str, str]], str | None]:
    """A record checked (records.rows: TrainingRecord for dolly, LimaRecord for lima) → (chat, its `lang`)."""
    if fmt == "dolly":
        dolly = check(TrainingRecord, rec, where, DataError)
        return _dolly_chat(dolly), dolly.lang
    lima = check(LimaRecord, rec, where, DataError)
    return lima.chat(), lima.lang


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
    keep_flagged: bool = False,
) -> Corpus:
    """Reads and validates every record (bad input raises DataError naming file:line). Records with a
    non-empty `flags` list (translation quality flags) are skipped and counted, unless `keep_flagged`."""
    if fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r}: use one of {FORMATS}")
    paths = list(paths) + ([_hub_file(hub_dataset)] if hub_dataset else [])
    if not paths:
        raise DataError("no training data: set data.paths (or data.hub_dataset when online)")
    by_lang: dict[str, list[Record]] = {}
    stats = {"records": 0, "empty_response_skipped": 0}
    files: list[str] = []
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
            if "flags" in table.column_names:  # translation pipeline output: report the count, even 0
                stats.setdefault(
                    "translation_flagged_kept" if keep_flagged else "translation_flagged_skipped", 0
                )
        else:
            try:
                rows = [(f"{path}:{n}", r) for n, r in iter_jsonl(path)]
            except RecordError as e:
                raise DataError(str(e)) from None
        files.append(path)
        for where, rec in rows:
            if isinstance(rec, dict) and rec.get("flags"):
                if not keep_flagged:
                    stats["translation_flagged_skipped"] = stats.get("translation_flagged_skipped", 0) + 1
                    continue
                stats["translation_flagged_kept"] = stats.get("translation_flagged_kept", 0) + 1
            msgs, rec_lang = _messages(rec, fmt, where)
            if any(m["role"] == "assistant" and not m["content"].strip() for m in msgs):
                if empty_response == "error":
                    raise DataError(f"{where}: empty response (data.empty_response='error')")
                stats["empty_response_skipped"] += 1
                continue
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
    return Corpus(dict(sorted(by_lang.items())), stats, list(dict.fromkeys(files)))


@dataclass
class Tokenized:
    inputs: np.ndarray  # [n-1] int32
    targets: np.ndarray  # [n-1] int32
    weights: np.ndarray  # [n-1] float32 (1 on response targets)

    def __len__(self) -> int:
        return len(self.inputs)


CHECK_KEYS = (
    "used",
    "over_budget_truncated",
    "over_budget_skipped",
    "no_response_skipped",
    "template_error_skipped",
)


def budget_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Pasero's `build_batches` on lengths already in batching order: consecutive runs whose padded size
    (longest × count) stays ≤ budget. Returns lists of positions into `lengths`."""
    groups: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if cur and max(longest, n) * (len(cur) + 1) > budget:
            groups.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, int(n))
    if cur:
        groups.append(cur)
    return groups


class Loader:
    """Deterministic batches `[grad_accum, rows, seq_len]`; `state` is the resumable position.

    Every record is tokenized and checked once, when the loader is built (`check`); unusable records are
    skipped and counted (`stats`) or, with `bad_records="error"`, raise DataError naming `file:line`.
    """

    def __init__(
        self,
        corpus: Corpus,
        encode: Callable[[list[dict[str, str]]], Any],  # messages -> EncodedChat (ids, loss_mask)
        *,
        seq_len: int,
        rows: int,
        grad_accum: int,
        seed: int,
        over_budget: str = "truncate",
        lang_sampling: str = "uniform",
        lang_unit: str = "example",
        batching: str = "sorted",
        buffer_size: int = 1000,
        bad_records: str = "skip",
    ):
        if over_budget not in OVER_BUDGET:
            raise DataError(f"data.over_budget={over_budget!r}: use one of {OVER_BUDGET}")
        if lang_sampling not in LANG_SAMPLING or lang_unit not in LANG_UNITS:
            raise DataError(f"data.lang_sampling / lang_unit: use {LANG_SAMPLING} / {LANG_UNITS}")
        if batching not in BATCHING:
            raise DataError(f"data.batching={batching!r}: use one of {BATCHING}")
        if bad_records not in BAD_RECORDS:
            raise DataError(f"data.bad_records={bad_records!r}: use one of {BAD_RECORDS}")
        if buffer_size < 1:
            raise DataError(f"data.buffer_size={buffer_size} must be positive")
        self.corpus, self.encode = corpus, encode
        self.seq_len, self.rows, self.grad_accum, self.seed = seq_len, rows, grad_accum, seed
        self.over_budget, self.lang_unit, self.batching = over_budget, lang_unit, batching
        self.buffer_size, self.bad_records = buffer_size, bad_records
        self.langs = list(corpus.by_lang)
        self.check_stats: dict[str, int] = {k: 0 for k in CHECK_KEYS}
        self.examples: dict[str, list[Tokenized]] = {}  # usable records, tokenized once
        self._check()
        sizes = np.array([len(self.examples[lang]) for lang in self.langs], np.float64)
        self.probs = (
            np.full(len(sizes), 1 / len(sizes)) if lang_sampling == "uniform" else sizes / sizes.sum()
        )
        self._perm: dict[tuple[str, int], np.ndarray] = {}
        self._lang_block: tuple[int, np.ndarray] | None = None
        self._groups: list[list[Tokenized]] = []  # sorted mode: the current buffer's groups, longest first
        self.state: dict[str, Any] = {
            "batching": batching,
            "draws": 0,
            "microbatches": 0,
            "cursor": {lang: [0, 0] for lang in self.langs},
            "buffers": 0,
            "buffer": None,
            "stats": {"examples": 0, "layout_cut": 0, "layout_cut_examples": 0},
        }

    # -- the pre-check: every record tokenized and checked before the first step
    def _bad(self, rec: Record, reason: str, key: str) -> None:
        if self.bad_records == "error":
            raise DataError(f"{rec.where}: {reason} (data.bad_records='error')")
        self.check_stats[key] += 1

    def _check(self) -> None:
        c, t = self.check_stats, self.seq_len
        for lang in self.langs:
            usable = self.examples[lang] = []
            for rec in self.corpus.by_lang[lang]:
                try:
                    enc = self.encode(rec.messages)
                    ids = np.asarray(enc.ids, np.int32)
                    mask = np.asarray(enc.loss_mask, np.float32)
                    if ids.ndim != 1 or ids.shape != mask.shape:
                        raise ValueError(f"{len(enc.ids)} ids but {len(enc.loss_mask)} mask values")
                except Exception as e:
                    self._bad(rec, f"cannot apply the chat template ({e})", "template_error_skipped")
                    continue
                ex = Tokenized(ids[:-1], ids[1:], mask[1:])
                truncated = len(ex) > t
                if truncated and self.over_budget == "skip":
                    c["over_budget_skipped"] += 1  # pasero's rule, not an error
                    continue
                if truncated:
                    ex = Tokenized(ex.inputs[:t], ex.targets[:t], ex.weights[:t])
                if not ex.weights.any():
                    where = f" within data.seq_len={t}" if truncated else ""
                    self._bad(rec, f"no response token to train on{where}", "no_response_skipped")
                    continue
                c["over_budget_truncated"] += int(truncated)
                usable.append(ex)
            c["used"] += len(usable)
            if not usable:
                raise DataError(
                    f"language {lang!r}: no usable record ({self.check_stats}); check data.seq_len and the data"
                )

    @property
    def stats(self) -> dict[str, int]:
        """The pre-check's per-record counts plus the running counters (for data_stats.json)."""
        return {**self.check_stats, **self.state["stats"]}

    # -- position
    def set_state(self, state: dict[str, Any]) -> None:
        if sorted(state["cursor"]) != sorted(self.langs):
            raise DataError(
                f"checkpoint data position has languages {sorted(state['cursor'])}, data has {self.langs}"
            )
        if state.get("batching", "packed") != self.batching:
            raise DataError(
                f"checkpoint data position is for data.batching={state.get('batching', 'packed')!r}, "
                f"the config says {self.batching!r}"
            )
        cursor = {k: [int(e), int(p)] for k, (e, p) in state["cursor"].items()}
        buf = state.get("buffer")
        self.state = {
            "batching": self.batching,
            "draws": int(state["draws"]),
            "microbatches": int(state["microbatches"]),
            "cursor": cursor,
            "buffers": int(state.get("buffers", 0)),
            "buffer": None,
            "stats": {**self.state["stats"], **{k: int(v) for k, v in state["stats"].items()}},
        }
        self._groups = []
        if buf is not None:  # rebuild the current buffer from where it started, then skip what was emitted
            start = buf["start"]
            self.state["draws"] = int(start["draws"])
            self.state["cursor"] = {k: [int(e), int(p)] for k, (e, p) in start["cursor"].items()}
            self.state["buffers"] = int(buf["number"])
            self._fill_buffer()
            if self.state["draws"] != int(state["draws"]) or self.state["cursor"] != cursor:
                raise DataError("checkpoint data position does not match the data (changed files or sizes?)")
            self.state["buffer"]["group"] = int(buf["group"])
            self.state["buffer"]["offset"] = int(buf["offset"])

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
            n = len(self.examples[lang])
            self._perm = {k: v for k, v in self._perm.items() if k[0] != lang}  # keep one epoch per language
            self._perm[key] = np.random.default_rng([self.seed, self.langs.index(lang), epoch]).permutation(n)
        return self._perm[key]

    def _peek(self) -> tuple[str, Tokenized]:
        s = self.state
        per_mb = self.lang_unit == "microbatch" and self.batching == "packed"
        lang = self._lang_of(s["microbatches"] if per_mb else s["draws"])
        epoch, pos = s["cursor"][lang]
        return lang, self.examples[lang][int(self._perm_of(lang, epoch)[pos])]

    def _advance(self, lang: str) -> None:
        s = self.state
        s["draws"] += 1
        epoch, pos = s["cursor"][lang]
        pos += 1
        if pos == len(self.examples[lang]):
            epoch, pos = epoch + 1, 0
        s["cursor"][lang] = [epoch, pos]

    # -- micro-batches
    def _empty(self) -> dict[str, np.ndarray]:
        r, t = self.rows, self.seq_len
        return {k: np.zeros((r, t), np.float32 if k == "weights" else np.int32) for k in BATCH_KEYS}

    @staticmethod
    def _put(out: dict[str, np.ndarray], row: int, a: int, seg: int, ex: Tokenized) -> None:
        b = a + len(ex)
        out["inputs"][row, a:b] = ex.inputs
        out["targets"][row, a:b] = ex.targets
        out["weights"][row, a:b] = ex.weights
        out["segment_ids"][row, a:b] = seg
        out["positions"][row, a:b] = np.arange(len(ex))

    def _microbatch_packed(self) -> dict[str, np.ndarray]:
        """First-fit packing in draw order; an example that fits no row starts the next micro-batch."""
        r, t = self.rows, self.seq_len
        out = self._empty()
        fill, segs = [0] * r, [0] * r
        while True:
            lang, ex = self._peek()
            n = len(ex)
            row = next((i for i in range(r) if fill[i] + n <= t), None)
            if row is None:
                break  # carried over: the example stays at the cursor for the next micro-batch
            segs[row] += 1
            self._put(out, row, fill[row], segs[row], ex)
            fill[row] += n
            self.state["stats"]["examples"] += 1
            self._advance(lang)
            if min(fill) == t:
                break
        return out

    def _fill_buffer(self) -> None:
        """Draws `buffer_size` examples, sorts them by length (after a seeded permutation, stable) and cuts
        them into groups of padded size ≤ rows × seq_len, in seeded random order (pasero's buffered batching).
        With lang_unit="microbatch" each language of the buffer is grouped apart (pasero's batch_by=lang)."""
        s = self.state
        start = {"draws": s["draws"], "cursor": {k: list(v) for k, v in s["cursor"].items()}}
        items: list[tuple[str, Tokenized]] = []
        for _ in range(self.buffer_size):
            lang, ex = self._peek()
            self._advance(lang)
            items.append((lang, ex))
        rng = np.random.default_rng([self.seed, 104729, s["buffers"]])
        keys: list[str | None] = list(self.langs) if self.lang_unit == "microbatch" else [None]
        groups: list[list[Tokenized]] = []
        for key in keys:
            members = [ex for lang, ex in items if key is None or lang == key]
            if not members:
                continue
            lengths = np.array([len(ex) for ex in members])
            order = rng.permutation(len(members))
            order = order[np.argsort(lengths[order], kind="stable")]
            for g in budget_groups(lengths[order], self.rows * self.seq_len):
                group = [members[order[i]] for i in g]
                groups.append(group[::-1])  # longest first, for the first-fit-decreasing layout
        self._groups = [groups[i] for i in rng.permutation(len(groups))]
        s["buffer"] = {"number": s["buffers"], "start": start, "group": 0, "offset": 0}
        s["buffers"] += 1

    def _microbatch_sorted(self) -> dict[str, np.ndarray]:
        """One group per micro-batch, laid out first-fit-decreasing into the rows.

        A group that does not fit (possible only with rows > 1: 13 examples of ~600 tokens are a group of
        padded size 7800 ≤ 8192, but 4 rows of 2048 hold 12) is cut where the first example finds no row
        (counted: layout_cut, layout_cut_examples). Its rest starts the next micro-batch, and the next group
        follows it in that micro-batch as far as it fits (itself cut if need be), so a cut delays examples
        instead of emitting a near-empty micro-batch; a micro-batch that starts with a whole group holds
        that group only, as in pasero."""
        s = self.state
        r, t = self.rows, self.seq_len
        out = self._empty()
        fill, segs = [0] * r, [0] * r
        carried = s["buffer"] is not None and s["buffer"]["offset"] > 0
        while True:
            if s["buffer"] is None or s["buffer"]["group"] >= len(self._groups):
                self._fill_buffer()
            buf = s["buffer"]
            rest = self._groups[buf["group"]][buf["offset"] :]
            placed = 0
            for ex in rest:
                row = next((i for i in range(r) if fill[i] + len(ex) <= t), None)
                if row is None:
                    break
                segs[row] += 1
                self._put(out, row, fill[row], segs[row], ex)
                fill[row] += len(ex)
                placed += 1
            s["stats"]["examples"] += placed
            if placed == len(rest):
                buf["group"], buf["offset"] = buf["group"] + 1, 0
            elif placed:  # a cut: the rest of this group starts the next micro-batch
                buf["offset"] += placed
                s["stats"]["layout_cut"] += 1
                s["stats"]["layout_cut_examples"] += len(rest) - placed
            if not carried or placed < len(rest):
                return out
            carried = False  # the carried rest is placed: the next group joins this micro-batch

    def next_microbatch(self) -> dict[str, np.ndarray]:
        """One micro-batch: each array `[rows, seq_len]`."""
        out = self._microbatch_sorted() if self.batching == "sorted" else self._microbatch_packed()
        self.state["microbatches"] += 1
        return out

    def next_batch(self, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """The next optimizer step's data: each array `[grad_accum, rows, seq_len]`.

        rows: only these rows of the global batch (a host's share on a multi-host mesh,
        train.state.local_rows). Every process packs the same global batch, so the position stays the same.
        """
        mbs = [self.next_microbatch() for _ in range(self.grad_accum)]
        pick = slice(None) if rows is None else np.asarray(rows)
        return {k: np.stack([m[k][pick] for m in mbs]) for k in BATCH_KEYS}


def check_paths(paths: Sequence[str]) -> None:
    """Fails early (before any work) when a training file is missing."""
    for spec in paths:
        _, path = _file_lang(spec)
        if not Path(path).is_file():
            raise DataError(f"{path}: training file does not exist")
