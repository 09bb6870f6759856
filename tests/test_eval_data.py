"""The evaluation data loader: counts, ids, task labels, modifier types and base instructions."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from evalsuite import data
from records.files import RecordError
from records.schemas import INSTRUCTION_SCHEMA


def test_eval_set_counts_ids_and_alignment():
    sets = {lang: data.load_eval(lang) for lang in data.LANGS}
    for lang, recs in sets.items():
        assert len(recs) == 113
        assert recs[0].id == f"paper-{lang}-000" and recs[112].id == f"paper-{lang}-112"
        assert [r.item for r in recs] == list(range(113))
        assert all(r.messages[-1]["role"] == "user" and r.eval_set == "paper" for r in recs)
    # same task labels for the same line in every language
    assert [r.task for r in sets["en"]] == [r.task for r in sets["ru"]]
    assert sets["en"][0].instruction.startswith("Hi, my sister and her girlfriends want me to play kickball")


def test_tasks_are_25_contiguous_groups_of_4_to_5():
    tasks = data.load_tasks()
    assert len(tasks) == 25
    assert tasks[0].first == 0 and tasks[-1].last == 112
    assert all(b.first == a.last + 1 for a, b in zip(tasks, tasks[1:]))
    sizes = Counter(t.last - t.first + 1 for t in tasks)
    assert sizes == Counter({5: 13, 4: 12})  # 113 = 13 x 5 + 12 x 4
    assert data.task_of_item(0) == "sport_rules"
    assert data.task_of_item(38) == "recipes"
    assert data.task_of_item(108) == data.task_of_item(112) == "classification"
    assert data.task_of_item(107) == "summarization"  # boundary item, see tasks.json
    assert len({t.name for t in tasks}) == 25


@pytest.mark.parametrize(
    "label, expected",
    [
        ("num_items_5", ("num_items", "5")),
        ("num_items_10", ("num_items", "10")),
        ("lang_de", ("lang", "de")),
        ("short", ("short", None)),
        ("complex_inst", ("complex_inst", None)),
        ("cap_template", ("cap_template", None)),
    ],
)
def test_parse_modifier_type(label, expected):
    assert data.parse_modifier_type(label) == expected


@pytest.mark.parametrize("label", ["num_items", "lang", "lang_deu", "shortest", ""])
def test_parse_modifier_type_rejects(label):
    with pytest.raises(ValueError):
        data.parse_modifier_type(label)


def test_modifiers_types_args_and_base_instruction():
    for lang in data.LANGS:
        mods = data.load_modifiers(lang)
        base = data.load_eval(lang)
        assert len(mods) == 251
        assert Counter(m.modifier_type for m in mods) == Counter(
            short=20, long=20, num_items=12, lang=100, markdown_template=14, html_template=14,
            arrow_template=14, cap_template=14, scientific_style=14, simple_style=14, complex_inst=15,
        )  # fmt: skip
        for m in mods:
            assert m.instruction.startswith(m.base_instruction)
            assert m.base_instruction == base[m.base_item].instruction
            assert m.task == base[m.base_item].task
            assert m.modifier_text and m.modifier_text == m.instruction[len(m.base_instruction) :].strip()
        targets = {m.modifier_arg for m in mods if m.modifier_type == "lang"}
        assert lang not in targets and targets <= {"en", "fr", "pt", "ru", "de"}
    en = data.load_modifiers("en")
    assert (en[40].modifier_type, en[40].modifier_arg, en[40].modifier_text) == (
        "num_items",
        "2",
        "List 2 options.",
    )
    assert (en[52].modifier_arg, en[52].base_item, en[52].task) == ("pt", 0, "sport_rules")
    assert (
        en[250].modifier_text
        == "After the explanation, tell which discipline of Maths does this concept belong to."
    )


def test_instructions_table_matches_schema():
    table = data.instructions_table(data.load_eval("fr")[:3] + data.load_modifiers("fr")[:2])
    assert table.schema == INSTRUCTION_SCHEMA
    assert table.column("modifier_type").to_pylist() == [None, None, None, "short", "short"]


@pytest.fixture
def data_copy(tmp_path):
    dst = tmp_path / "eval"
    shutil.copytree(data.default_data_dir(), dst)
    data._load_tasks_cached.cache_clear()
    yield dst
    data._load_tasks_cached.cache_clear()


def test_bad_jsonl_line_names_file_and_line(data_copy):
    path = data_copy / "alpacaeval_test_subset.pt.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[6] = '[{"role": "user", "content": "x"'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"alpacaeval_test_subset\.pt\.jsonl:7: invalid JSON"):
        data.load_eval("pt", data_copy)


def test_missing_field_names_file_line_and_field(data_copy):
    path = data_copy / "alpacaeval_test_subset.ru.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps([{"role": "user", "text": "x"}])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"\.ru\.jsonl:3: messages\[0\]\.content missing"):
        data.load_eval("ru", data_copy)


def test_task_ranges_must_cover_every_line(data_copy):
    spec = json.loads((data_copy / "tasks.json").read_text())
    spec["tasks"][3]["first"] += 1
    (data_copy / "tasks.json").write_text(json.dumps(spec))
    with pytest.raises(RecordError, match=r"tasks\[3\] \(general_questions\): range must start at 13"):
        data.load_tasks(data_copy)


def test_unknown_language_is_rejected():
    with pytest.raises(ValueError, match="unknown evaluation language 'de'"):
        data.load_eval("de")
