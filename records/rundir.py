"""The run directory of docs/results.md: its paths and stage markers (`RunDir`), its run.json (`RunMeta`), and
`load_runs`, the one reader of a runs directory (used by the grid, the report and the human evaluation).

    <runs>/<run>/run.json              RunMeta, written first by the grid
    <runs>/<run>/train/                trainer workdir (done.json, export/)
    <runs>/<run>/prompts.parquet       the instructions generated on
    <runs>/<run>/generations.parquet
    <runs>/<run>/scores.parquet
    <runs>/<run>/stages/<stage>.json   marker written after a stage's output is committed
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from records.files import RecordError, atomic_write_text
from records.rows import Sha256, check

RUN_JSON = "run.json"


class RunDirError(RecordError):
    """A run directory or its run.json is unusable; the message names the file and field."""


class DataFiles(BaseModel):
    """run.json "data_files": sha256 of every data file the run used, by path.

    train: the training files of its config (data.paths, a `lang=` prefix dropped; a hub dataset as
    `hub:<name>` with null, its hash in train/done.json); eval: the evaluation files it generated on
    (paths relative to the repository). Null: the file did not exist when the grid started."""

    model_config = ConfigDict(strict=True, extra="forbid")

    train: dict[str, Sha256 | None] = {}
    eval: dict[str, Sha256 | None] = {}


class RunMeta(BaseModel):
    """run.json. `run` and `group` are required (a missing `label` is the group); other keys are kept."""

    model_config = ConfigDict(strict=True, extra="allow")

    run: str
    group: str
    label: str
    lr: float | None = None  # null: the untuned base model
    anchor: bool = False
    method: Literal["ft", "lora", "none"] | None = None
    data: str | None = None  # dolly_en | dolly_dt | lima_en | ...
    base_model: str | None = None
    config: str | None = None  # path[:args] as given to the grid
    config_hash: str | None = None
    protocol: str | None = None  # released | paper; null: run.json predates protocols
    decode: dict[str, Any] | None = None  # {"repetition_penalty", "max_new_tokens"}
    decode_note: str | None = None
    overrides: list[str] = []
    data_files: DataFiles | None = None  # null: run.json predates data hashes

    @model_validator(mode="before")
    @classmethod
    def _label_defaults_to_group(cls, data: Any) -> Any:
        if isinstance(data, dict) and "label" not in data and "group" in data:
            return {**data, "label": data["group"]}
        return data

    @field_validator("lr")
    @classmethod
    def _positive(cls, lr: float | None) -> float | None:
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"must be a positive number or null (got {lr!r})")
        return lr

    @classmethod
    def read(cls, path: str | os.PathLike, default_run: str | None = None) -> RunMeta:
        """run.json at `path`; a missing "run" is `default_run` (the folder's name) when given."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise RunDirError(f"{path}: not UTF-8 text ({e.reason})") from None
        if isinstance(obj, dict) and default_run is not None:
            obj.setdefault("run", default_run)
        return check(cls, obj, str(path), RunDirError)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class RunDir:
    """Paths and stage markers of one run directory, `<workdir>/<name>`."""

    def __init__(self, workdir: str | os.PathLike, name: str):
        self.path = Path(workdir) / name
        self.name = name
        self.run_json = self.path / RUN_JSON
        self.stages = self.path / "stages"
        self.train = self.path / "train"
        self.prompts = self.path / "prompts.parquet"
        self.generations = self.path / "generations.parquet"
        self.scores = self.path / "scores.parquet"

    @classmethod
    def at(cls, path: str | os.PathLike) -> RunDir:
        path = Path(path)
        return cls(path.parent, path.name)

    # ------------------------------------------------------------------------------------- run.json

    def read_run_json(self) -> RunMeta:
        """run.json, validated (RunDirError naming the file and field); "run" defaults to the folder name."""
        return RunMeta.read(self.run_json, default_run=self.name)

    def write_run_json(self, meta: dict[str, Any]) -> None:
        """Validates `meta` as RunMeta and writes it (atomically, only when its text changes)."""
        check(RunMeta, meta, f"{self.run_json} (to write)", RunDirError)
        self.path.mkdir(parents=True, exist_ok=True)
        text = json.dumps(meta, indent=1)
        if not self.run_json.exists() or self.run_json.read_text(encoding="utf-8") != text:
            atomic_write_text(text, self.run_json)

    # ------------------------------------------------------------------------------------- markers

    def marker(self, stage: str) -> dict[str, Any] | None:
        p = self.stages / f"{stage}.json"
        try:
            return json.loads(p.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def running(self, stage: str) -> str | None:
        """Key of a stage started and not finished (a crash), or None."""
        p = self.stages / f"{stage}.running.json"
        try:
            return json.loads(p.read_text())["key"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def output_exists(self, stage: str) -> bool:
        if stage == "train":
            return (self.train / "done.json").exists() and (self.train / "export" / "config.json").exists()
        return (self.generations if stage == "generate" else self.scores).exists()

    def status(self, stage: str, key: str) -> str:
        """done | to run | stale (a marker for other inputs, or its output is gone)."""
        m = self.marker(stage)
        if m is None:
            return "to run"
        if m.get("key") == key and self.output_exists(stage):
            return "done"
        return "stale"

    def start(self, stage: str, key: str) -> None:
        self.stages.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            json.dumps({"stage": stage, "key": key, "started_at": now()}),
            self.stages / f"{stage}.running.json",
        )

    def finish(self, stage: str, key: str, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
        marker = {"stage": stage, "key": key, "seconds": round(seconds, 2), "finished_at": now(), **extra}
        atomic_write_text(json.dumps(marker, indent=1, default=str), self.stages / f"{stage}.json")
        (self.stages / f"{stage}.running.json").unlink(missing_ok=True)
        return marker


class LoadedRun(NamedTuple):
    dir: RunDir
    meta: RunMeta


def load_runs(
    runs_dir: str | os.PathLike, skip: Iterable[str | os.PathLike] = ()
) -> tuple[list[LoadedRun], list[str]]:
    """Every `<runs_dir>/<run>/run.json`, validated, sorted by folder, and notes: folders without run.json
    (but those in `skip`) and a "run" field that differs from its folder's name (the field wins).

    RunDirError when `runs_dir` is not a folder, holds no run.json, or two run.json share a "run".
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunDirError(f"{root}: not a directory (expected a runs directory, docs/results.md)")
    skipped = {Path(p).resolve() for p in skip}
    runs: list[LoadedRun] = []
    notes: list[str] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.resolve() in skipped:
            continue
        rd = RunDir.at(d)
        if not rd.run_json.exists():
            notes.append(f"{d.name}/ has no {RUN_JSON}: ignored")
            continue
        meta = rd.read_run_json()
        if meta.run != d.name:
            notes.append(
                f"{rd.run_json}: field 'run' is {meta.run!r}, the folder is {d.name!r}; using {meta.run!r}"
            )
        runs.append(LoadedRun(rd, meta))
    if not runs:
        raise RunDirError(f"{root}: no <run>/{RUN_JSON} found")
    seen: dict[str, Path] = {}
    for r in runs:
        if r.meta.run in seen:
            raise RunDirError(
                f"{r.dir.run_json}: field 'run' {r.meta.run!r} is also used by {seen[r.meta.run]}"
            )
        seen[r.meta.run] = r.dir.run_json
    return runs, notes
