"""Typed loader for the evaluation set, the modifier set and the 25 task labels (data/eval/).

Ids are `paper-{lang}-{item:03d}` and `modifiers-{lang}-{item:03d}`; `item` is the 0-based line index in the
released file, so the same id suffix names the same instruction in every language.

A modifier instruction is an evaluation instruction with one modifier sentence appended (checked for all
251 x 4 lines of the release). `base_instruction` is the longest evaluation line (same language) that is a
prefix of the modifier line; `base_item` is its line index, which gives the record its task label.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from records.files import RecordError, iter_jsonl
from records.schemas import INSTRUCTION_SCHEMA

LANGS = ("en", "fr", "pt", "ru")
N_EVAL = 113
N_MODIFIERS = 251
MODIFIER_TYPES = (
    "short",
    "long",
    "num_items",
    "lang",
    "markdown_template",
    "html_template",
    "arrow_template",
    "cap_template",
    "scientific_style",
    "simple_style",
    "complex_inst",
)


def default_data_dir() -> Path:
    """The repository's data/eval folder."""
    return Path(__file__).resolve().parents[1] / "data" / "eval"


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    first: int
    last: int
    rationale: str


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """One instruction of the paper's evaluation set or modifier set (INSTRUCTION_SCHEMA + base_item)."""

    id: str
    eval_set: str
    item: int
    lang: str
    task: str | None
    messages: list[dict[str, str]]
    modifier_type: str | None = None
    modifier_arg: str | None = None
    base_instruction: str | None = None
    base_item: int | None = None

    @property
    def instruction(self) -> str:
        return self.messages[-1]["content"]

    @property
    def modifier_text(self) -> str | None:
        """The appended modifier sentence (instruction minus base instruction), or None."""
        if self.base_instruction is None:
            return None
        return self.instruction[len(self.base_instruction) :].strip()

    def to_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in INSTRUCTION_SCHEMA.names}


def parse_modifier_type(label: str) -> tuple[str, str | None]:
    """'num_items_5' -> ('num_items', '5'); 'lang_de' -> ('lang', 'de'); 'short' -> ('short', None)."""
    m = re.fullmatch(r"num_items_(\d+)", label)
    if m:
        return "num_items", m.group(1)
    m = re.fullmatch(r"lang_([a-z]{2})", label)
    if m:
        return "lang", m.group(1)
    if label in MODIFIER_TYPES and label not in ("num_items", "lang"):
        return label, None
    raise ValueError(f"unknown modifier type {label!r}")


@lru_cache(maxsize=8)
def _load_tasks_cached(path: str) -> tuple[Task, ...]:
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    tasks = []
    expected_first = 0
    for i, t in enumerate(spec.get("tasks", [])):
        for field, kind in (("task", str), ("first", int), ("last", int), ("rationale", str)):
            if not isinstance(t.get(field), kind):
                raise RecordError(f"{path}: tasks[{i}]: field {field!r} missing or not {kind.__name__}")
        if t["first"] != expected_first or t["last"] < t["first"]:
            raise RecordError(f"{path}: tasks[{i}] ({t['task']}): range must start at {expected_first}")
        expected_first = t["last"] + 1
        tasks.append(Task(t["task"], t["first"], t["last"], t["rationale"]))
    if expected_first != N_EVAL:
        raise RecordError(
            f"{path}: task ranges cover lines 0..{expected_first - 1}, expected 0..{N_EVAL - 1}"
        )
    return tuple(tasks)


def load_tasks(root: str | Path | None = None) -> tuple[Task, ...]:
    """The 25 tasks of data/eval/tasks.json, validated to cover lines 0..112 contiguously."""
    return _load_tasks_cached(str(Path(root or default_data_dir()) / "tasks.json"))


def task_of_item(item: int, root: str | Path | None = None) -> str:
    """Task label of evaluation line `item`."""
    for t in load_tasks(root):
        if t.first <= item <= t.last:
            return t.name
    raise KeyError(f"no task covers evaluation line {item}")


def _read_chats(path: Path) -> list[list[dict[str, str]]]:
    chats = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(obj, list) or not obj:
            raise RecordError(f"{where}: expected a non-empty list of messages")
        for j, msg in enumerate(obj):
            for field in ("role", "content"):
                if not isinstance(msg, dict) or not isinstance(msg.get(field), str):
                    raise RecordError(f"{where}: messages[{j}].{field} missing or not a string")
        if obj[-1]["role"] != "user":
            raise RecordError(f"{where}: last message must have role 'user'")
        chats.append([{"role": m["role"], "content": m["content"]} for m in obj])
    return chats


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"unknown evaluation language {lang!r}; expected one of {LANGS}")


def load_eval(lang: str, root: str | Path | None = None) -> list[EvalRecord]:
    """The 113 instructions of the paper's evaluation set in `lang`, with their task labels."""
    _check_lang(lang)
    root = Path(root or default_data_dir())
    path = root / f"alpacaeval_test_subset.{lang}.jsonl"
    chats = _read_chats(path)
    if len(chats) != N_EVAL:
        raise RecordError(f"{path}: {len(chats)} records, expected {N_EVAL}")
    return [
        EvalRecord(
            id=f"paper-{lang}-{i:03d}",
            eval_set="paper",
            item=i,
            lang=lang,
            task=task_of_item(i, root),
            messages=chat,
        )
        for i, chat in enumerate(chats)
    ]


def load_modifiers(lang: str, root: str | Path | None = None) -> list[EvalRecord]:
    """The 251 modifier instructions in `lang` with type, argument, base instruction and task."""
    _check_lang(lang)
    root = Path(root or default_data_dir())
    path = root / f"modifiers.{lang}.jsonl"
    types_path = root / f"modifiers.{lang}.types"
    chats = _read_chats(path)
    labels = types_path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    if len(labels) != len(chats):
        raise RecordError(f"{types_path}: {len(labels)} labels for {len(chats)} records in {path}")
    base = load_eval(lang, root)
    records = []
    for i, (chat, label) in enumerate(zip(chats, labels)):
        try:
            mtype, marg = parse_modifier_type(label.strip())
        except ValueError as e:
            raise RecordError(f"{types_path}:{i + 1}: {e}") from None
        text = chat[-1]["content"]
        matches = [b for b in base if text.startswith(b.instruction) and len(text) > len(b.instruction)]
        if not matches:
            raise RecordError(f"{path}:{i + 1}: no evaluation instruction is a prefix of this modifier line")
        b = max(matches, key=lambda r: len(r.instruction))
        records.append(
            EvalRecord(
                id=f"modifiers-{lang}-{i:03d}",
                eval_set="modifiers",
                item=i,
                lang=lang,
                task=b.task,
                messages=chat,
                modifier_type=mtype,
                modifier_arg=marg,
                base_instruction=b.instruction,
                base_item=b.item,
            )
        )
    return records


def instructions_table(records: list[EvalRecord]) -> pa.Table:
    """Records as an INSTRUCTION_SCHEMA table (the input of generation)."""
    return pa.Table.from_pylist([r.to_row() for r in records], schema=INSTRUCTION_SCHEMA)


def load_all(root: str | Path | None = None) -> list[EvalRecord]:
    """All 452 evaluation and 1004 modifier instructions."""
    out: list[EvalRecord] = []
    for lang in LANGS:
        out += load_eval(lang, root)
    for lang in LANGS:
        out += load_modifiers(lang, root)
    return out
