"""Generation input and output records: reading prompts (JSONL / Parquet), writing resumable output.

Input rows hold chat messages and an id: the shipped evaluation files (one `[{"role", "content"}]` list per
line, id = 0-based line number) or objects with `messages` (or a `prompt` string) and optional `id`; any
other field is passed through (records.rows.InstructionRecord checks each). Output follows
`records.schemas.GENERATION_OUTPUT_SCHEMA` (GENERATION_SCHEMA + `error`).

Resume: finished rows are appended as Parquet parts (`<output>.parts/part-*.parquet`, each written through
a temporary file and a rename); at the end the parts and any earlier output are merged into `<output>`
atomically and the parts removed. A SIGKILL at any moment leaves only whole files; a rerun skips the ids
already in `<output>` or in a part.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from records.files import RecordError, atomic_write_parquet, iter_jsonl, read_table
from records.rows import InstructionRecord, check
from records.schemas import GENERATION_OUTPUT_SCHEMA, MESSAGES

OUTPUT_FIELDS = GENERATION_OUTPUT_SCHEMA.names


def _to_row(value: Any, default_id: str, where: str) -> dict[str, Any]:
    """One input record → a row with a string `id` and `messages` (role and content only), checked as
    records.rows.InstructionRecord; other fields pass through."""
    if isinstance(value, list):
        value = {"messages": value}
    if not isinstance(value, dict):
        raise RecordError(f"{where}: expected a list of messages or an object, got {type(value).__name__}")
    row = dict(value)
    if "messages" not in row and isinstance(row.get("prompt"), str):
        row["messages"] = [{"role": "user", "content": row.pop("prompt")}]
    if "messages" not in row:
        raise RecordError(f"{where}: missing field 'messages' (or 'prompt')")
    rid = row.get("id", default_id)
    row["id"] = str(rid) if isinstance(rid, int) and not isinstance(rid, bool) else rid  # ids may be integers
    rec = check(InstructionRecord, row, where)
    row["messages"] = [m.model_dump() for m in rec.messages]
    return row


def read_prompts(path: str | os.PathLike, skip_bad: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows with `id` (string) and `messages`, plus the list of bad-line messages (when skip_bad)."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: input file does not exist")
    bad: list[str] = []
    rows: list[dict[str, Any]] = []

    def add(value: Any, default_id: str, where: str) -> None:
        try:
            rows.append(_to_row(value, default_id, where))
        except RecordError as e:
            if not skip_bad:
                raise
            bad.append(str(e))

    if path.suffix == ".parquet":
        for i, value in enumerate(read_table(path).to_pylist()):
            add(value, str(i), f"{path}:row {i}")
    else:
        for lineno, value in iter_jsonl(path, skip_bad=skip_bad, bad=bad):
            add(value, str(lineno - 1), f"{path}:{lineno}")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["id"] in seen:
            raise RecordError(f"{path}: duplicate id {r['id']!r} (rows {seen[r['id']]} and {i})")
        seen[r["id"]] = i
    return rows, bad


def to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Output records → Arrow, the GENERATION_OUTPUT_SCHEMA columns typed, pass-through columns inferred."""
    fields = list(GENERATION_OUTPUT_SCHEMA)
    extra = [k for k in dict.fromkeys(k for r in records for k in r) if k not in OUTPUT_FIELDS]
    cols = {f.name: pa.array([r.get(f.name) for r in records], f.type) for f in fields}
    for k in extra:
        cols[k] = pa.array([r.get(k) for r in records])
    return pa.table(cols)


class ResumableOutput:
    """`<output>` plus `<output>.parts/`: completed ids, part appends, final atomic merge."""

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.parts_dir = self.output.with_name(self.output.name + ".parts")

    def _tables(self) -> list[pa.Table]:
        tables = []
        if self.output.exists():
            tables.append(read_table(self.output))
        if self.parts_dir.exists():
            for p in sorted(self.parts_dir.glob("part-*.parquet")):
                tables.append(read_table(p))
        return tables

    def done_ids(self) -> set[str]:
        return {i for t in self._tables() for i in t.column("id").to_pylist()}

    def append(self, records: list[dict[str, Any]]) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.parts_dir.glob("part-*.parquet")))
        atomic_write_parquet(to_table(records), self.parts_dir / f"part-{n:06d}.parquet")

    def finalize(self, order: list[str]) -> pa.Table:
        """Merges earlier output and parts (input order, then any other ids) into `<output>` atomically."""
        tables = self._tables()
        if not tables:
            table = to_table([])
        else:
            table = pa.concat_tables(tables, promote_options="permissive")
            ids = table.column("id").to_pylist()
            first: dict[str, int] = {}
            for i, rid in enumerate(ids):
                first.setdefault(rid, i)
            rank = {rid: k for k, rid in enumerate(order)}
            keep = sorted(first.values(), key=lambda i: (rank.get(ids[i], len(rank)), i))
            table = table.take(pa.array(keep, pa.int64()))
            table = table.set_column(
                table.schema.get_field_index("messages"), "messages", table.column("messages").cast(MESSAGES)
            )
        atomic_write_parquet(table, self.output)
        if self.parts_dir.exists():
            shutil.rmtree(self.parts_dir)
        return table
