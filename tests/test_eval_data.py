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


def test_languages_come_from_the_folder(tmp_path):
    assert data.eval_langs() == data.modifier_langs() == data.LANGS
    assert set(data.LANGS) >= {"en", "fr"}
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "alpacaeval_test_subset.xx.jsonl").write_text("")
    (folder / "notes.de.txt").write_text("")
    assert data.eval_langs(folder) == ("xx",) and data.modifier_langs(folder) == ()
    with pytest.raises(ValueError, match=r"unknown evaluation language 'de'.*its languages: xx"):
        data.load_eval("de", folder)
    with pytest.raises(ValueError, match=r"has no modifiers\.xx\.jsonl / modifiers\.xx\.types"):
        data.load_modifiers("xx", folder)


def partial_copy(src, dst, lang, items):
    """`lang`'s evaluation lines `items` and the modifier lines built on them, as a partial folder."""
    dst.mkdir()
    (dst / "tasks.json").write_text((src / "tasks.json").read_text())
    ev = data.load_eval(lang, src)
    mods = [m for m in data.load_modifiers(lang, src) if m.base_item in items]
    lines = (src / f"alpacaeval_test_subset.{lang}.jsonl").read_text(encoding="utf-8").splitlines()
    (dst / f"alpacaeval_test_subset.{lang}.jsonl").write_text("".join(lines[i] + "\n" for i in items))
    (dst / f"alpacaeval_test_subset.{lang}.items").write_text("".join(f"{i}\n" for i in items))
    mlines = (src / f"modifiers.{lang}.jsonl").read_text(encoding="utf-8").splitlines()
    types = (src / f"modifiers.{lang}.types").read_text(encoding="utf-8").splitlines()
    (dst / f"modifiers.{lang}.jsonl").write_text("".join(mlines[m.item] + "\n" for m in mods))
    (dst / f"modifiers.{lang}.types").write_text("".join(types[m.item] + "\n" for m in mods))
    (dst / f"modifiers.{lang}.items").write_text("".join(f"{m.item}\n" for m in mods))
    return ev, mods


def test_partial_set_keeps_items_and_ids(tmp_path):
    folder = tmp_path / "part"
    ev, mods = partial_copy(data.default_data_dir(), folder, "fr", [3, 38, 40])
    got = data.load_eval("fr", folder)
    assert [(r.id, r.item, r.task, r.messages) for r in got] == [
        (ev[i].id, i, ev[i].task, ev[i].messages) for i in (3, 38, 40)
    ]
    got_m = data.load_modifiers("fr", folder)
    assert [(m.id, m.item, m.base_item, m.modifier_type, m.modifier_arg) for m in got_m] == [
        (m.id, m.item, m.base_item, m.modifier_type, m.modifier_arg) for m in mods
    ]
    (folder / "alpacaeval_test_subset.fr.items").write_text("3\n2\n40\n")
    with pytest.raises(RecordError, match=r"fr\.items:2: 2 must be in 0\.\.112 and above the line before"):
        data.load_eval("fr", folder)
    (folder / "alpacaeval_test_subset.fr.items").unlink()
    with pytest.raises(RecordError, match=r"3 records, expected 113 \(a partial set needs its"):
        data.load_eval("fr", folder)


def test_named_base_wins_over_the_prefix_search(tmp_path):
    """Two evaluation lines with the same text (as a translator may make them): .base says which one."""
    folder = tmp_path / "dup"
    partial_copy(data.default_data_dir(), folder, "en", [0, 1])
    same = json.dumps([{"role": "user", "content": "Explain kickball."}])
    (folder / "alpacaeval_test_subset.en.jsonl").write_text(same + "\n" + same + "\n")
    mods = data.load_modifiers("en")
    picked = [m for m in mods if m.base_item in (0, 1)]
    chats = [
        json.dumps([{"role": "user", "content": "Explain kickball. " + m.modifier_text}]) for m in picked
    ]
    (folder / "modifiers.en.jsonl").write_text("".join(c + "\n" for c in chats))
    assert {m.base_item for m in data.load_modifiers("en", folder)} == {0}  # the search cannot tell
    (folder / "modifiers.en.base").write_text("".join(f"{m.base_item}\n" for m in picked))
    got = data.load_modifiers("en", folder)
    assert [m.base_item for m in got] == [m.base_item for m in picked] and {1} < {m.base_item for m in got}
    (folder / "modifiers.en.base").write_text("".join("7\n" for _ in picked))
    with pytest.raises(
        RecordError, match=r"modifiers\.en\.jsonl:1: no evaluation instruction is a prefix.*item 7"
    ):
        data.load_modifiers("en", folder)
