"""Reading generation files for scoring (Parquet or JSONL) with errors that name file, line/row and field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from records.files import RecordError, iter_jsonl, read_table
from records.rows import ScoringInput, check
from records.schemas import SCORE_SCHEMA

REQUIRED = ("id", "lang", "messages", "response")


def _check_row(row: Any, where: str) -> None:
    """One generation to score, checked as records.rows.ScoringInput (RecordError naming `where` and the field)."""
    check(ScoringInput, row, where)


def read_generations(path: str | os.PathLike) -> pa.Table:
    """The generations to score: any Parquet or JSONL file with at least id, lang, messages, response.

    Other columns are kept. Raises RecordError naming the file and the line (JSONL) or row (Parquet).
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such file")
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for lineno, obj in iter_jsonl(path):
            _check_row(obj, f"{path}:{lineno}")
            rows.append(obj)
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise RecordError(f"{path}: columns with inconsistent types across lines ({e})") from None
        where = [f"{path}:{i}" for i, _ in iter_jsonl(path)]
    else:
        table = read_table(path)
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise RecordError(f"{path}: missing column(s) {missing}")
        rows = table.to_pylist()
        for i, row in enumerate(rows):
            _check_row(row, f"{path}: row {i}")
        where = [f"{path}: row {i}" for i in range(len(rows))]
    seen: dict[str, str] = {}
    for w, rid in zip(where, table.column("id").to_pylist()):
        if rid in seen:
            raise RecordError(f"{w}: duplicate id {rid!r} (first at {seen[rid]})")
        seen[rid] = w
    return table


def score_columns() -> list[str]:
    """Columns evalsuite.score adds (SCORE_SCHEMA minus the passed-through id and lang)."""
    return [n for n in SCORE_SCHEMA.names if n not in ("id", "lang")]
