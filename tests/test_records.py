"""records/ core: row models agree with the Arrow schemas and name file:line and field; the run directory
(RunDir, RunMeta, load_runs); data-file hashes in run.json and in the report; one LR-choice path."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import types
import typing
from pathlib import Path

import pyarrow as pa
import pytest

from infer.records import read_prompts
from records import rows
from records.files import RecordError
from records.rundir import DataFiles, RunDir, RunDirError, load_runs
from records.schemas import (
    DEAD_LETTER_REQUIRED,
    DEAD_LETTER_SCHEMA,
    GENERATION_OUTPUT_SCHEMA,
    GENERATION_REQUIRED,
    HUMAN_REQUIRED,
    HUMAN_SCHEMA,
    INSTRUCTION_REQUIRED,
    INSTRUCTION_SCHEMA,
    MESSAGES,
    SCORE_REQUIRED,
    SCORE_SCHEMA,
    TRANSLATION_REQUIRED,
    TRANSLATION_SCHEMA,
)
from study import grid_plan as gp
from tests.report_helpers import ANCHOR, BASE, LOW, OTHER, make_runs
from train.data import DataError, read_corpus

ROOT = Path(__file__).resolve().parents[1]

# model, its schema, the schema's required columns, whether the model declares every column of the schema
AGREEMENT = [
    (rows.InstructionRecord, INSTRUCTION_SCHEMA, INSTRUCTION_REQUIRED, True),
    (rows.TrainingRecord, TRANSLATION_SCHEMA, TRANSLATION_REQUIRED, False),  # the columns training reads
    (rows.GenerationRow, GENERATION_OUTPUT_SCHEMA, GENERATION_REQUIRED, True),
    (rows.ScoreRow, SCORE_SCHEMA, SCORE_REQUIRED, True),
    (rows.HumanRating, HUMAN_SCHEMA, HUMAN_REQUIRED, True),
    (rows.DeadLetter, DEAD_LETTER_SCHEMA, DEAD_LETTER_REQUIRED, True),
]


def _python_type(t: pa.DataType) -> object:
    if t == MESSAGES:
        return list[rows.ChatMessage]
    if pa.types.is_string(t):
        return str
    if pa.types.is_boolean(t):
        return bool
    if pa.types.is_integer(t):
        return int
    if pa.types.is_floating(t):
        return float
    if pa.types.is_list(t):
        return list[_python_type(t.value_type)]  # type: ignore[misc]
    raise AssertionError(f"no Python type for {t}")


def _base(annotation: object) -> object:
    """Optional/Annotated/Literal stripped: the type a column holds."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        elif origin is typing.Literal:
            (annotation,) = {type(a) for a in typing.get_args(annotation)}
        elif origin is list:
            return list[_base(typing.get_args(annotation)[0])]  # type: ignore[misc]
        else:
            return annotation


@pytest.mark.parametrize("model, schema, required, full", AGREEMENT, ids=lambda x: getattr(x, "__name__", ""))
def test_models_agree_with_the_arrow_schemas(model, schema, required, full):
    fields = model.model_fields
    assert set(required) <= set(schema.names)
    assert set(fields) <= set(schema.names), set(fields) - set(schema.names)
    if full:
        assert set(fields) == set(schema.names), set(schema.names) - set(fields)
    for name, info in fields.items():
        assert info.is_required() == (name in required), name
        if not info.is_required():  # optional means nullable, with null as the default
            assert info.default is None and type(None) in typing.get_args(info.annotation), name
        assert _base(info.annotation) == _python_type(schema.field(name).type), name


def test_scoring_input_is_a_generation_row_with_its_instruction_columns():
    both = {f.name: f for s in (GENERATION_OUTPUT_SCHEMA, INSTRUCTION_SCHEMA) for f in s}
    fields = rows.ScoringInput.model_fields
    assert set(fields) <= set(both)
    assert {n for n, i in fields.items() if i.is_required()} == {*GENERATION_REQUIRED, "lang", "response"}
    for name, info in fields.items():
        assert _base(info.annotation) == _python_type(both[name].type), name


def test_check_is_strict_and_names_the_field():
    ok = rows.check(
        rows.HumanRating, {"run": "r", "id": "a", "lang": "en", "annotator": "x", "logic": 2}, "w"
    )
    assert ok.logic == 2 and ok.fluency is None
    cases = [
        ({"logic": "2"}, "w: field 'logic' must be 0, 1 or 2, or null (str)"),
        ({"logic": True}, "w: field 'logic' must be 0, 1 or 2, or null (bool)"),
        ({"logic": 3}, "w: field 'logic' must be 0, 1 or 2, or null (got 3)"),
        ({"annotator": None}, "w: field 'annotator' must be a string (null)"),
        ({"item": -1}, "w: field 'item' must be an integer >= 0 or null (got -1)"),
    ]
    for patch, message in cases:
        value = {"run": "r", "id": "a", "lang": "en", "annotator": "x", **patch}
        with pytest.raises(RecordError) as e:
            rows.check(rows.HumanRating, value, "w")
        assert str(e.value) == message
    with pytest.raises(RecordError, match=r"^w: field 'stage' must be a string \(missing\)$"):
        rows.check(rows.DeadLetter, {"id": "a", "reason": "r"}, "w")
    with pytest.raises(RecordError, match=r"^w: expected a JSON object, got list$"):
        rows.check(rows.ScoreRow, [1], "w")
    with pytest.raises(
        RecordError, match=r"^w: field 'judge_status' is 'bad', expected ok, failed or skipped"
    ):
        rows.check(rows.ScoreRow, {"id": "a", "lang": "en", "judge_status": "bad"}, "w")


def test_prompts_errors_name_file_line_and_field(tmp_path):
    good = {"id": "a", "messages": [{"role": "user", "content": "hi"}]}
    lines = [
        (good, None),
        ({"id": "b", "messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},
         "field 'messages[1].role' is 'bot', expected system, user or assistant"),
        ({"id": "c", "messages": [{"role": "user", "content": 3}]},
         "field 'messages[0].content' must be a string (int)"),
        ({"id": "d", "messages": []}, "field 'messages' must be a non-empty list of {role, content} objects"),
        ({"id": 1.5, "messages": good["messages"]}, "field 'id' must be a string (float)"),
        ({"id": "f", "messages": good["messages"], "item": "7"}, "field 'item' must be an integer >= 0 or null"),
    ]  # fmt: skip
    for n, (obj, message) in enumerate(lines[1:], start=2):
        path = tmp_path / f"p{n}.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(obj) + "\n")
        with pytest.raises(RecordError) as e:
            read_prompts(path)
        assert str(e.value).startswith(f"{path}:2: {message}"), str(e.value)
    path = tmp_path / "ok.jsonl"
    extra = {"id": 7, "messages": [{"role": "user", "content": "hi", "name": "x"}], "lang": "fr", "n": 1}
    path.write_text(json.dumps(extra) + "\n")
    (row,), bad = read_prompts(path)
    assert (
        row == {"id": "7", "messages": [{"role": "user", "content": "hi"}], "lang": "fr", "n": 1} and not bad
    )


def test_training_records_name_file_line_and_field(tmp_path):
    lima = tmp_path / "l.jsonl"
    lima.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(DataError, match=r"l\.jsonl:1: field 'messages' has no assistant message"):
        read_corpus([str(lima)], "lima")
    lima.write_text(json.dumps({"conversations": ["q"]}) + "\n")
    with pytest.raises(DataError, match=r"l\.jsonl:1: field 'conversations' must be a list of >= 2 strings"):
        read_corpus([str(lima)], "lima")
    dolly = tmp_path / "d.jsonl"
    dolly.write_text(json.dumps({"instruction": "q", "response": "r", "context": 5}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'context' must be a string or null \(int\)"):
        read_corpus([str(dolly)], "dolly")
    dolly.write_text(json.dumps({"instruction": "q", "response": "r", "context": None}) + "\n")
    corpus = read_corpus([f"fr={dolly}", f"pt={dolly}"], "dolly")
    assert corpus.files == [str(dolly)]  # what train/loop.py hashes into done.json "data_files"


# ------------------------------------------------------------------------------------------- run directory


def _meta(name: str, **kw: object) -> dict:
    return {"run": name, "group": "G", "label": "G / lr 0.001", "lr": 1e-3, "anchor": False, **kw}


def test_run_json_is_validated_when_written_and_read(tmp_path):
    rd = RunDir(tmp_path, "a-lr0.001")
    rd.write_run_json(_meta("a-lr0.001", extra_key=[1]))
    mtime = rd.run_json.stat().st_mtime_ns
    rd.write_run_json(_meta("a-lr0.001", extra_key=[1]))  # the same text: not rewritten
    assert rd.run_json.stat().st_mtime_ns == mtime
    meta = rd.read_run_json()
    assert meta.lr == 1e-3 and meta.model_extra == {"extra_key": [1]} and meta.data_files is None
    with pytest.raises(RunDirError, match=r"run\.json \(to write\): field 'lr' must be a positive number"):
        rd.write_run_json(_meta("a-lr0.001", lr=-1.0))
    with pytest.raises(RunDirError, match=r"field 'data_files\.train\[\"x\.jsonl\"\]' must be a sha256 hex"):
        rd.write_run_json(_meta("a-lr0.001", data_files={"train": {"x.jsonl": "abc"}}))
    assert meta == rd.read_run_json()  # nothing bad was written
    bad = {
        '{"group": "G", "lr": "fast"}': "field 'lr' must be a number or null (str)",
        '{"group": "G", "anchor": "yes"}': "field 'anchor' must be true or false (str)",
        '{"label": "L"}': "field 'group' must be a string (missing)",
        '{"group": "G", "method": "rlhf"}': "field 'method' is 'rlhf', expected ft, lora or none, or null",
        '{"group": "G",\n "lr": 1e-3,}': ":2: invalid JSON",
        "[1]": "expected a JSON object, got list",
    }
    for text, message in bad.items():
        rd.run_json.write_text(text)
        with pytest.raises(RunDirError) as e:
            rd.read_run_json()
        assert str(e.value).startswith(str(rd.run_json)) and message in str(e.value), str(e.value)
    rd.run_json.write_text('{"group": "G"}')  # older run.json: run = folder, label = group
    meta = rd.read_run_json()
    assert (meta.run, meta.label, meta.lr, meta.anchor, meta.method) == ("a-lr0.001", "G", None, False, None)


def test_load_runs_notes_skips_and_duplicates(tmp_path):
    for name in ("b", "a", "c"):
        RunDir(tmp_path, name).write_run_json(_meta(name))
    (tmp_path / "trainer").mkdir()
    (tmp_path / "report").mkdir()
    (tmp_path / "judge.json").write_text("{}")  # a file, not a run
    runs, notes = load_runs(tmp_path, skip=[tmp_path / "report"])
    assert [r.meta.run for r in runs] == ["a", "b", "c"] and runs[0].dir.path == tmp_path / "a"
    assert notes == ["trainer/ has no run.json: ignored"]
    RunDir(tmp_path, "c").write_run_json(_meta("renamed"))
    runs, notes = load_runs(tmp_path, skip=[tmp_path / "report", tmp_path / "trainer"])
    assert notes == [
        f"{tmp_path / 'c' / 'run.json'}: field 'run' is 'renamed', the folder is 'c'; using 'renamed'"
    ]
    RunDir(tmp_path, "c").write_run_json(_meta("a"))
    with pytest.raises(RunDirError, match=r"c/run\.json: field 'run' 'a' is also used by .*a/run\.json"):
        load_runs(tmp_path)
    with pytest.raises(RunDirError, match="not a directory"):
        load_runs(tmp_path / "nope")
    with pytest.raises(RunDirError, match="no <run>/run.json found"):
        load_runs(tmp_path / "trainer")


def test_stage_markers(tmp_path):
    rd = RunDir(tmp_path, "r")
    assert rd.status("generate", "k1") == "to run" and rd.running("generate") is None
    rd.start("generate", "k1")
    assert rd.running("generate") == "k1"
    rd.generations.write_bytes(b"x")
    marker = rd.finish("generate", "k1", 1.234, {"rows": 4})
    assert marker["seconds"] == 1.23 and rd.marker("generate") == marker and rd.running("generate") is None
    assert rd.status("generate", "k1") == "done" and rd.status("generate", "k2") == "stale"
    rd.generations.unlink()
    assert rd.status("generate", "k1") == "stale"
    assert gp.RunDir is RunDir  # the grid uses this one


# ------------------------------------------------------------------------------------------- data files


def _sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_grid_hashes_the_data_files_of_each_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository, as the grid runs them
    spec = "configs/llama2_13b_dolly_dt_ft.py:runlocal"  # four languages, the same shipped file
    base, tuned = gp.plan_runs([spec], [1e-5], [], include_base=True)
    files = gp.data_files(tuned, ["paper", "modifiers"], ["ru"])
    dolly = "data/train/dolly_subset.jsonl"
    assert files["train"] == {dolly: _sha256(ROOT / dolly)}
    names = ["tasks.json", "alpacaeval_test_subset.ru.jsonl", "modifiers.ru.jsonl", "modifiers.ru.types"]
    assert files["eval"] == {f"data/eval/{n}": _sha256(ROOT / "data" / "eval" / n) for n in names}
    assert gp.data_files(base, ["paper"], ["en"])["train"] == {}  # the untuned model trains on nothing
    tuned.cfg.data.paths = ("missing.jsonl",)
    tuned.cfg.data.hub_dataset = "databricks/databricks-dolly-15k"
    assert gp.data_files(tuned, ["paper"], ["en"])["train"] == {
        "missing.jsonl": None,
        "hub:databricks/databricks-dolly-15k": None,
    }
    DataFiles.model_validate(files)  # what run.json accepts


def test_report_lists_the_data_files(tmp_path):
    from reporting import build

    runs, _ = make_runs(tmp_path, human=False)
    train = tmp_path / "train.jsonl"
    train.write_text('{"instruction": "q", "response": "r"}\n')
    ev = ROOT / "data" / "eval" / "tasks.json"
    for name, content in ((ANCHOR, train), (LOW, train), (OTHER, None)):
        path = runs / name / "run.json"
        info = json.loads(path.read_text())
        digest = _sha256(content) if content else "f" * 64
        info["data_files"] = {"train": {"train.jsonl": digest}, "eval": {"data/eval/tasks.json": _sha256(ev)}}
        path.write_text(json.dumps(info))
    rep = build.build_report(runs, None, "judge", 10)
    out = build.write_report(rep, tmp_path / "out").parent
    with open(out / "data_files.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    got = {(r["run"], r["kind"], r["file"]): r["sha256"] for r in table}
    assert got[(ANCHOR, "train", "train.jsonl")] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert got[(LOW, "eval", "data/eval/tasks.json")] == hashlib.sha256(ev.read_bytes()).hexdigest()
    assert got[(BASE, "", "")] == ""  # a run.json written before data hashes: listed as not recorded
    page = (out / "index.html").read_text(encoding="utf-8")
    assert _sha256(train) in page and "not recorded (run.json predates data hashes)" in page
    note = f"data file train.jsonl differs between runs: ffffffffffff: {OTHER}; {_sha256(train)[:12]}: {LOW}, {ANCHOR}"
    assert note in page


# ------------------------------------------------------------------------------------------- LR choice


def test_human_packet_and_report_choose_the_same_lr(tmp_path):
    from reporting import human, report_data

    runs, _ = make_runs(tmp_path, human=False)
    for d in runs.iterdir():  # the scores stand in for generations (human selection reads scores)
        if (d / "scores.parquet").exists():
            os.link(d / "scores.parquet", d / "generations.parquet")
    picked = {r.group: r.name for r in human.select_runs(human.load_runs(runs))}
    loaded, _ = report_data.load_runs(runs)
    rows_ = [x for r in loaded if r.scored for x in report_data.load_rows(r) if report_data.is_paper(x)]
    chosen, _, choices = report_data.choose_runs(loaded, rows_)
    assert choices  # a group with several LRs was chosen from
    assert {g: r.name for g, r in chosen.items()} == picked
