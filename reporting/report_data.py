"""Reading a runs directory for reporting.report: judge.json, run.json, scores, human ratings, LR choice.

run.json is read and validated by records.rundir (RunMeta). Identity fields read defensively (older runs
directories lack them, the report says so instead of guessing): run.json "data_files" (sha256 of the run's
data files), "protocol" ("released" | "paper") and "decode" ({"repetition_penalty", "max_new_tokens"}); the
relevance model from, first found, the scores file's Parquet metadata key RELEVANCE_META_KEY, the run's
stages/score.json "models"."relevance", runs/judge.json "models"."relevance".

Every error names the file and the field (ReportError). See docs/results.md (the runs-directory contract and
the Report section).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from evalsuite import aggregate as agg
from records import rundir
from records.errors import InputError
from records.files import read_table
from records.rows import HumanRating, ScoreRow, check
from records.schemas import HUMAN_REQUIRED, JUDGE_CRITERIA

Row = dict[str, Any]

NO_PROTOCOL = "unknown (run.json predates protocols)"
RELEVANCE_META_KEY = b"xlit.relevance_model"
UNKNOWN_RELEVANCE = "unknown (not recorded: runs/judge.json predates model identities)"


class ReportError(InputError):
    """Bad input for the report; the message names the file and field."""


@dataclass
class Run:
    name: str
    label: str
    group: str
    lr: float | None
    anchor: bool
    method: str | None
    data: str | None
    path: Path
    scored: bool
    protocol: str | None = None  # run.json "protocol"; None: run.json predates protocols
    decode: dict[str, Any] | None = None  # run.json "decode"
    decode_note: str | None = None  # run.json "decode_note" (e.g. a grid flag overriding the protocol)
    relevance_model: str | None = None  # set by build_report (relevance_model())
    data_files: rundir.DataFiles | None = None  # run.json "data_files"; None: run.json predates them

    @classmethod
    def of(cls, rd: rundir.RunDir, meta: rundir.RunMeta) -> Run:
        """The report's view of a run directory and its run.json."""
        return cls(
            name=meta.run,
            label=meta.label,
            group=meta.group,
            lr=meta.lr,
            anchor=meta.anchor,
            method=meta.method,
            data=meta.data,
            path=rd.path,
            scored=rd.scores.exists(),
            protocol=meta.protocol,
            decode=meta.decode,
            decode_note=meta.decode_note,
            data_files=meta.data_files,
        )

    @property
    def protocol_text(self) -> str:
        """ "released (repetition_penalty 1.2, max_new_tokens 512)", or the fallback for older runs."""
        text = protocol_text(self.protocol, self.decode)
        return f"{text} — {self.decode_note}" if self.decode_note else text


def protocol_text(protocol: str | None, decode: dict[str, Any] | None) -> str:
    if protocol is None and decode is None:
        return NO_PROTOCOL
    parts = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in (decode or {}).items()]
    what = protocol or "unknown protocol"
    return f"{what} ({', '.join(parts)})" if parts else f"{what} (decode not recorded)"


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object; ReportError naming the file otherwise."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return obj


def load_judge(runs_dir: Path) -> dict[str, str]:
    """runs/judge.json ({"spec", "kind": real|demo|none, "note"}); a missing file gives kind "unknown"."""
    path = runs_dir / "judge.json"
    if not path.exists():
        return {
            "spec": "unknown",
            "kind": "unknown",
            "note": f"{path} is missing",
            "relevance": UNKNOWN_RELEVANCE,
            "relevance_note": "",
        }
    judge = _read_object(path)
    if judge.get("kind") not in ("real", "demo", "none"):
        raise ReportError(f"{path}: field 'kind' is {judge.get('kind')!r}, expected 'real', 'demo' or 'none'")
    if not isinstance(judge.get("spec"), str):
        raise ReportError(f"{path}: field 'spec' must be a string")
    models = judge.get("models")
    if models is not None and not isinstance(models, dict):
        raise ReportError(f"{path}: field 'models' is {models!r}, expected an object")
    if models is not None:
        relevance = model_name(models.get("relevance"), judge["spec"])
    elif "relevance_model" in judge:
        relevance = model_name(judge["relevance_model"], judge["spec"])
    else:
        relevance = UNKNOWN_RELEVANCE
    return {
        "spec": judge["spec"],
        "kind": judge["kind"],
        "note": str(judge.get("note") or ""),
        "relevance": relevance,
        "relevance_note": str(judge.get("relevance_note") or ""),
    }


def model_name(name: Any, judge_spec: str = "") -> str:
    """A judge.json "models" entry as printed: None → "none", "demo" → the demo judge's spec."""
    if name is None or name == "none":
        return "none"
    if name == "demo":
        return judge_spec if judge_spec.startswith("demo") else "demo (local model, not a real judge)"
    return str(name)


def relevance_model_of(scores: Path, judge_spec: str = "", fallback: str = UNKNOWN_RELEVANCE) -> str:
    """Who scored relevance in `scores` (a <run>/scores.parquet): its Parquet metadata RELEVANCE_META_KEY,
    else <run>/stages/score.json "models"."relevance", else `fallback` (runs/judge.json's, for the report)."""
    try:
        meta = pq.read_schema(scores).metadata or {}
    except (OSError, ValueError):
        meta = {}
    if RELEVANCE_META_KEY in meta:
        return model_name(meta[RELEVANCE_META_KEY].decode("utf-8", "replace"), judge_spec)
    marker = scores.parent / "stages" / "score.json"
    if marker.exists():
        try:
            models = json.loads(marker.read_text(encoding="utf-8")).get("models")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            models = None
        if isinstance(models, dict) and "relevance" in models:
            return model_name(models["relevance"], judge_spec)
    return fallback


def relevance_model(run: Run, judge: dict[str, str], measured: bool) -> str:
    """The model that scored this run's relevance ("none (relevance not scored)" when no row has one)."""
    if not measured:
        return "none (relevance not scored)"
    name = relevance_model_of(
        run.path / "scores.parquet", judge["spec"], judge.get("relevance", UNKNOWN_RELEVANCE)
    )
    return "unknown (relevance scored, but the record names no model)" if name == "none" else name


def load_runs(runs_dir: Path, skip: Path | None = None) -> tuple[list[Run], list[str]]:
    """Every runs_dir/<run>/run.json (records.rundir.load_runs: validated, sorted by folder); notes list folders
    without run.json, but `skip` (the report's own folder) and the judge's calibration folder."""
    skipped = [] if skip is None else [skip]
    if (runs_dir / "calibration" / "card.json").exists():
        skipped.append(runs_dir / "calibration")  # the calibration card (study.calibrate), read by the report
    try:
        loaded, notes = rundir.load_runs(runs_dir, skipped)
    except rundir.RunDirError as e:
        raise ReportError(str(e)) from None
    return [Run.of(r.dir, r.meta) for r in loaded], notes


def load_rows(run: Run) -> list[Row]:
    """scores.parquet of a run, each row tagged with the run's name, group and LR.

    (Not reporting.summary.load_scores: importing summary would define its absl flags here too.)
    """
    path = run.path / "scores.parquet"
    table = read_table(path)
    for col in ("id", "lang", "judge_status", "lang_correct"):
        if col not in table.column_names:
            raise ReportError(f"{path}: missing column {col!r}; is this an evalsuite.score output?")
    rows = table.to_pylist()
    for i, r in enumerate(rows):
        check(ScoreRow, r, f"{path}: row {i}", ReportError)
        r.update(run=run.name, group=run.group, lr=run.lr)
    return rows


def is_paper(r: Row) -> bool:
    """A row of the paper's evaluation set (eval_set "paper"; files without eval_set: rows without a modifier)."""
    return r.get("eval_set") == "paper" if "eval_set" in r else not r.get("modifier_type")


def load_human(
    path: Path, runs: dict[str, Run], score_rows: list[Row]
) -> tuple[list[Row], list[Row], list[str]]:
    """Ratings rows, the same as score-like rows (judge_<c> = human <c>) joined to scores on (run, id), notes."""
    table = read_table(path)
    for c in (*HUMAN_REQUIRED, *JUDGE_CRITERIA):
        if c not in table.column_names:
            raise ReportError(f"{path}: missing column {c!r} (human ratings, docs/results.md)")
    raw = table.to_pylist()
    for i, h in enumerate(raw):
        check(HumanRating, h, f"{path}: row {i}", ReportError)
    index = {(r["run"], r.get("id")): r for r in score_rows}
    like, unknown, unmatched = [], 0, 0
    for h in raw:
        if h["run"] not in runs:
            unknown += 1
            continue
        s = index.get((h["run"], h["id"]))
        unmatched += s is None
        base = s if s is not None else {"lang": h["lang"], "task": h.get("task")}
        like.append(
            {
                **{
                    k: base[k]
                    for k in ("eval_set", "task", "modifier_type", "lang_correct", "lang")
                    if k in base
                },
                "run": h["run"],
                "id": h["id"],
                "group": runs[h["run"]].group,
                "judge_status": "ok",
                **{f"judge_{c}": h[c] for c in JUDGE_CRITERIA},
            }
        )
    notes = [f"{len(raw)} human ratings from {path}"]
    if unknown:
        notes.append(f"{unknown} ratings name a run that is not in the runs directory: ignored")
    if unmatched:
        notes.append(f"{unmatched} ratings have no scores row with the same (run, id): kept without fastText")
    return raw, like, notes


def choose_runs(
    runs: list[Run], rows: list[Row], lr_metrics: Sequence[str] | None = None
) -> tuple[dict[str, Run], list[str], dict[str, agg.LRChoice]]:
    """Per group (scored runs only), the run at the LR aggregate.choose_run_lr picks from the evaluation-set
    `rows` (tagged with run and lr); the notes; the LR choice per group that had one to make.

    ReportError when a choice cannot be made as asked (e.g. relevance missing for an LR: aggregate's message
    names the metric and the runs; --lr_metrics chooses without it).
    """
    chosen: dict[str, Run] = {}
    choices: dict[str, agg.LRChoice] = {}
    notes: list[str] = []
    by_group: dict[str, list[Run]] = {}
    for r in runs:
        by_group.setdefault(r.group, []).append(r)
    for group, everyone in by_group.items():
        members = [r for r in everyone if r.scored]
        if not members:
            continue
        with_lr = [r for r in members if r.lr is not None]
        lrs = Counter(r.lr for r in with_lr)
        dup = [lr for lr, k in lrs.items() if k > 1]
        if dup:
            names = [str(r.path / "run.json") for r in with_lr if r.lr == dup[0]]
            raise ReportError(f"{' and '.join(names)}: same field 'group' {group!r} and field 'lr' {dup[0]}")
        pending = [r.name for r in everyone if not r.scored and r.lr is not None]
        if pending and with_lr:
            notes.append(
                f"group {group!r}: not scored yet, so left out of the LR choice: {', '.join(pending)}"
            )
        if len(members) == 1 or len(with_lr) < 2:
            chosen[group] = members[0]
            continue
        names = {r.name for r in with_lr}
        try:
            choice = agg.choose_run_lr(
                [(r.name, r.lr) for r in with_lr], [x for x in rows if x["run"] in names], lr_metrics
            )
        except agg.LRChoiceError as e:
            raise ReportError(f"group {group!r}: {e}") from None
        choices[group] = choice
        chosen[group] = next(r for r in with_lr if r.lr == choice.lr)
    return chosen, notes, choices


VALIDATION_FIELDS = ("lang_correct", "code_switch_rate", "spell_ok_rate", "answer_tokens", "loss")


def load_validation(run: Run) -> list[Row]:
    """The validation lines of a run's training log (<run>/train/metrics.jsonl, see train/validate.py): one row
    per (step, language) {run, group, lr, step, lang, lang_correct, code_switch_rate, spell_ok_rate,
    answer_tokens, loss, validation_s}, by step; [] when the run has no log or no validation line. A step logged
    twice (a resumed run) keeps its last line."""
    path = run.path / "train" / "metrics.jsonl"
    if not path.exists():
        return []
    by_step: dict[int, tuple[float | None, list[Any]]] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if '"validation"' not in line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{i}: not JSON ({e})") from None
        val = rec.get("validation")
        if not isinstance(val, list) or not isinstance(rec.get("step"), int):
            raise ReportError(f"{path}:{i}: field 'validation' must be a list and 'step' an integer")
        by_step[rec["step"]] = (rec.get("validation_s"), val)
    rows = []
    for step in sorted(by_step):
        seconds, val = by_step[step]
        for obj in val:
            if not isinstance(obj, dict) or not isinstance(obj.get("lang"), str):
                raise ReportError(f"{path}: step {step}: each validation object needs a 'lang'")
            rows.append(
                {"run": run.name, "group": run.group, "lr": run.lr, "step": step, "lang": obj["lang"]}
                | {k: obj.get(k) for k in VALIDATION_FIELDS}
                | {"validation_s": seconds}
            )
    return rows
