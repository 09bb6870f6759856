"""Reading generation files for scoring (Parquet or JSONL) with errors that name file, line/row and field."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from records.files import RecordError, iter_jsonl, read_table
from records.schemas import SCORE_SCHEMA

REQUIRED = ("id", "lang", "messages", "response")
OPTIONAL_STR = ("task", "modifier_type", "modifier_arg")


def _check_row(row: dict, where: str) -> None:
    for field in ("id", "lang", "response"):
        if not isinstance(row.get(field), str):
            got = (
                "missing"
                if field not in row
                else ("null" if row[field] is None else type(row[field]).__name__)
            )
            raise RecordError(f"{where}: field {field!r} must be a string ({got})")
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    for j, m in enumerate(msgs):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise RecordError(f"{where}: field 'messages[{j}]' must have string 'role' and 'content'")
    if not any(m["role"] == "user" for m in msgs):
        raise RecordError(f"{where}: field 'messages' has no user message")
    for field in OPTIONAL_STR:
        if row.get(field) is not None and not isinstance(row[field], str):
            raise RecordError(f"{where}: field {field!r} must be a string or null")
    if row.get("modifier_type") in ("lang", "num_items") and not row.get("modifier_arg"):
        raise RecordError(f"{where}: modifier_type {row['modifier_type']!r} needs field 'modifier_arg'")


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
            if not isinstance(obj, dict):
                raise RecordError(f"{path}:{lineno}: expected a JSON object")
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
