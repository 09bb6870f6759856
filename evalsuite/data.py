"""Typed loader for the evaluation set, the modifier set and the 25 task labels (data/eval/).

Ids are `paper-{lang}-{item:03d}` and `modifiers-{lang}-{item:03d}`; `item` is the 0-based line index in the
released file, so the same id suffix names the same instruction in every language.

A modifier instruction is an evaluation instruction with one modifier sentence appended (checked for all
251 x 4 lines of the release). `base_instruction` is the longest evaluation line (same language) that is a
prefix of the modifier line; `base_item` is its line index, which gives the record its task label.

Languages are not listed in code: a language is available in an evaluation folder (the shipped data/eval, or
any folder passed as `root`, e.g. one written by `beam_pipelines.translate --eval_set`) when its
`alpacaeval_test_subset.<lang>.jsonl` is there (`eval_langs`); its modifier set when `modifiers.<lang>.jsonl`
and `.types` are (`modifier_langs`). `LANGS` is `eval_langs()` of the shipped folder (docs/languages.md).

A folder may hold part of a set (a translation of a few instructions, `translate --eval_items`): then
`alpacaeval_test_subset.<lang>.items` / `modifiers.<lang>.items` give, one per line, the source line index of
each line (increasing), which stays the record's `item` and id, so ids still name the same instruction in
every language. Without an .items file the evaluation file must have all 113 lines. A translated modifier
set also has `modifiers.<lang>.base` (the evaluation item each line is built on): translations of two
instructions may coincide, so the longest-prefix search could pick the wrong one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from records.errors import InputError
from records.files import RecordError, iter_jsonl
from records.schemas import INSTRUCTION_SCHEMA

EVAL_FILE = "alpacaeval_test_subset.{lang}.jsonl"
MODIFIERS_FILE = "modifiers.{lang}.jsonl"
MODIFIER_TYPES_FILE = "modifiers.{lang}.types"
EVAL_ITEMS_FILE = (
    "alpacaeval_test_subset.{lang}.items"  # partial sets only: the source line index of each line
)
MODIFIER_ITEMS_FILE = "modifiers.{lang}.items"
MODIFIER_BASE_FILE = "modifiers.{lang}.base"  # optional: the evaluation item each modifier line is built on
LANG_CODE = re.compile(r"[a-z]{2,3}")  # ISO 639-1 (or -3 where there is none), as fastText lid.176 labels
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


def _langs_with(root: str | Path | None, pattern: str) -> tuple[str, ...]:
    folder = Path(root or default_data_dir())
    if not folder.is_dir():
        raise FileNotFoundError(2, "evaluation folder not found", str(folder))
    head, tail = pattern.split("{lang}")
    found = (p.name[len(head) : len(p.name) - len(tail)] for p in folder.glob(pattern.format(lang="*")))
    return tuple(sorted(x for x in found if LANG_CODE.fullmatch(x)))


def eval_langs(root: str | Path | None = None) -> tuple[str, ...]:
    """The languages of an evaluation folder (default: the shipped data/eval): those with an
    alpacaeval_test_subset.<lang>.jsonl, sorted."""
    return _langs_with(root, EVAL_FILE)


def modifier_langs(root: str | Path | None = None) -> tuple[str, ...]:
    """The languages of an evaluation folder that also have a modifier set (modifiers.<lang>.jsonl + .types)."""
    folder = Path(root or default_data_dir())
    with_types = set(_langs_with(folder, MODIFIER_TYPES_FILE))
    return tuple(
        x for x in _langs_with(folder, MODIFIERS_FILE) if x in with_types and x in eval_langs(folder)
    )


def __getattr__(name: str) -> Any:
    if name == "LANGS":  # read when asked (no folder listing at import): the shipped folder's languages
        return eval_langs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def check_langs(
    langs: list[str] | tuple[str, ...], root: str | Path | None = None, modifiers: bool = False
) -> None:
    """InputError naming the missing file (and the folder's languages) for a language `root` lacks."""
    folder = Path(root or default_data_dir())
    have = modifier_langs(folder) if modifiers else eval_langs(folder)
    for lang in langs:
        if lang in have:
            continue
        if not isinstance(lang, str) or not LANG_CODE.fullmatch(lang):
            raise InputError(f"evaluation language {lang!r}: expected an ISO 639 code such as 'de'")
        names = (EVAL_FILE, MODIFIERS_FILE, MODIFIER_TYPES_FILE) if modifiers else (EVAL_FILE,)
        missing = [n.format(lang=lang) for n in names if not (folder / n.format(lang=lang)).exists()]
        raise InputError(
            f"unknown evaluation language {lang!r}: {folder} has no {' / '.join(missing)} "
            f"(its languages: {', '.join(have) or 'none'}); translate the evaluation set into it with "
            f"`python -m beam_pipelines.translate --eval_set=...` and pass that folder (docs/languages.md)"
        )


def read_items(path: Path, n_lines: int, limit: int, increasing: bool = True) -> list[int] | None:
    """The line indices of an .items (or .base) file (None when there is none), checked against its data
    file's `n_lines` lines: one integer per line, each in 0..limit-1, increasing (.items)."""
    if not path.exists():
        return None
    items: list[int] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            item = int(line)
        except ValueError:
            raise RecordError(f"{path}:{lineno}: {line!r} is not a line index") from None
        if not 0 <= item < limit or (increasing and items and item <= items[-1]):
            order = " and above the line before" if increasing else ""
            raise RecordError(f"{path}:{lineno}: {item} must be in 0..{limit - 1}{order}")
        items.append(item)
    if len(items) != n_lines:
        raise RecordError(f"{path}: {len(items)} line indices for {n_lines} records")
    return items


def load_eval(lang: str, root: str | Path | None = None) -> list[EvalRecord]:
    """The 113 instructions of the paper's evaluation set in `lang` (or those of a partial set, see the
    module docstring), with their task labels."""
    check_langs([lang], root)
    root = Path(root or default_data_dir())
    path = root / EVAL_FILE.format(lang=lang)
    chats = _read_chats(path)
    items = read_items(root / EVAL_ITEMS_FILE.format(lang=lang), len(chats), N_EVAL)
    if items is None and len(chats) != N_EVAL:
        raise RecordError(
            f"{path}: {len(chats)} records, expected {N_EVAL} (a partial set needs its "
            f"{EVAL_ITEMS_FILE.format(lang=lang)})"
        )
    return [
        EvalRecord(
            id=f"paper-{lang}-{i:03d}",
            eval_set="paper",
            item=i,
            lang=lang,
            task=task_of_item(i, root),
            messages=chat,
        )
        for i, chat in zip(items or range(N_EVAL), chats, strict=True)
    ]


def load_modifiers(lang: str, root: str | Path | None = None) -> list[EvalRecord]:
    """The 251 modifier instructions in `lang` with type, argument, base instruction and task."""
    check_langs([lang], root, modifiers=True)
    root = Path(root or default_data_dir())
    path = root / MODIFIERS_FILE.format(lang=lang)
    types_path = root / MODIFIER_TYPES_FILE.format(lang=lang)
    chats = _read_chats(path)
    labels = types_path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    if len(labels) != len(chats):
        raise RecordError(f"{types_path}: {len(labels)} labels for {len(chats)} records in {path}")
    items = read_items(root / MODIFIER_ITEMS_FILE.format(lang=lang), len(chats), N_MODIFIERS)
    bases = read_items(root / MODIFIER_BASE_FILE.format(lang=lang), len(chats), N_EVAL, increasing=False)
    base = load_eval(lang, root)
    base_of = {b.item: b for b in base}
    records = []
    for line, (i, chat, label) in enumerate(zip(items or range(len(chats)), chats, labels)):
        try:
            mtype, marg = parse_modifier_type(label.strip())
        except ValueError as e:
            raise RecordError(f"{types_path}:{line + 1}: {e}") from None
        text = chat[-1]["content"]
        if bases is None:
            matches = [b for b in base if text.startswith(b.instruction) and len(text) > len(b.instruction)]
        else:  # the base is named (a translated set): it must be a prefix
            named = base_of.get(bases[line])
            matches = [named] if named and text.startswith(named.instruction) else []
        if not matches:
            raise RecordError(
                f"{path}:{line + 1}: no evaluation instruction is a prefix of this modifier line"
                + (
                    ""
                    if bases is None
                    else f" (item {bases[line]} of {MODIFIER_BASE_FILE.format(lang=lang)})"
                )
            )
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
