"""A language the paper did not have, end to end (docs/languages.md): German.

translate (tiny random NLLB, `beam_pipelines.translate --eval_set --eval_items`: a few English evaluation
prompts and the modifier lines built on them) → generate (tiny random LLaMA, `beam_pipelines.generate
--eval_dir`) → score (`beam_pipelines.score --eval_dir`: fastText + Hunspell de_DE, German thresholds) →
report (`reporting.build.build_report`). The translations and answers are gibberish; what is checked is the
pipeline: files, ids and items, carried modifier types, provenance columns, quality flags, the German
dictionary and thresholds actually used, and German columns in the report. Plus: a language without a
Hunspell dictionary (Swahili) fails naming the Debian package, or with --spelling=skip is scored without
spelling, visibly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hunspell
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines import generate, score, translate
from beam_pipelines.io import cli_main, read_outputs
from beam_pipelines.tiny_nllb import CODES, make_tiny_nllb
from evalsuite import data
from evalsuite.modifiers import count_sentences, count_words, thresholds
from evalsuite.spelling import MissingDictionaryError, find_dictionaries, get_checker, words
from evalsuite.surface import SPELLING_META_KEY, SurfaceScorer
from reporting.build import build_report, write_report
from study import grid_plan as gp
from study.grid_run import GridOptions, check_scorable

ITEMS = [0, 1, 2, 3, 4]  # evaluation lines translated (tasks sport_rules and music)
DE_DIC = Path("/usr/share/hunspell/de_DE.dic")
GERMAN = "Das Haus ist sehr schön. Die Strasse ist lang."  # de_DE: Straße, so 8 of 9 words pass
NO_JUDGE = {"spec": "none", "kind": "none", "note": "surface metrics only", "models": {"relevance": None}}


def runs_dir(root: Path, name: str, scores: pa.Table) -> Path:
    """A runs directory (docs/results.md) with one untuned run and its scores, as the grid writes it."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    (root / "runs" / "judge.json").write_text(json.dumps(NO_JUDGE))
    (run / "run.json").write_text(json.dumps({"run": name, "label": name, "group": name, "lr": None}))
    pq.write_table(scores, run / "scores.parquet")
    return root / "runs"


@pytest.fixture(scope="module")
def german(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The English evaluation lines ITEMS and their modifiers, translated into German by the tiny NLLB."""
    root = tmp_path_factory.mktemp("german")
    nllb = make_tiny_nllb(root / "nllb", [*CODES, "deu_Latn"])
    summary = translate.run(
        [
            f"--eval_set={data.default_data_dir()}",
            "--src=en",
            "--tgt=de",
            f"--model={nllb}",
            f"--output={root / 'eval'}",
            f"--eval_items={ITEMS[0]}-{ITEMS[-1]}",
            "--num_beams=1",
            "--max_new_tokens=8",
            "--batch_size=16",
        ]
    )
    return root / "eval", summary


def test_translated_eval_folder(german: tuple[Path, dict]) -> None:
    folder, summary = german
    assert data.eval_langs(folder) == data.modifier_langs(folder) == ("de",)
    en = data.load_eval("en")
    de = data.load_eval("de", folder)
    assert [r.id for r in de] == [f"paper-de-{i:03d}" for i in ITEMS]
    assert [(r.item, r.task) for r in de] == [(en[i].item, en[i].task) for i in ITEMS]
    # modifier lines: those of the English set built on ITEMS, types and targets carried over unchanged
    en_mods = [r for r in data.load_modifiers("en") if r.base_item in ITEMS]
    de_mods = data.load_modifiers("de", folder)
    assert len(de_mods) == len(en_mods) == 14
    for d, e in zip(de_mods, en_mods, strict=True):
        assert d.id == f"modifiers-de-{e.item:03d}"
        assert (d.item, d.base_item, d.task, d.modifier_type, d.modifier_arg) == (
            e.item, e.base_item, e.task, e.modifier_type, e.modifier_arg,
        )  # fmt: skip
    types = (folder / "modifiers.de.types").read_text(encoding="utf-8").split()
    assert {"short", "long", "num_items_2", "lang_fr", "lang_pt", "lang_ru"} == set(types)
    # provenance: every German line is a translation record with its source id, translator and decoding
    rows = read_outputs(str(folder / "translation")).to_pylist()
    tr = {r["source_id"]: r for r in rows if r["lang"] == "de"}
    assert {r["translator"] for r in rows if r["lang"] == "en"} == {"source"}
    texts = {e.modifier_text for e in en_mods}
    assert len(tr) == len(ITEMS) + len(texts) == 11
    for r in tr.values():
        assert r["translator"] == "nllb" and r["id"] == r["source_id"] and isinstance(r["flags"], list)
        dec = json.loads(r["decoding"])
        assert (dec["num_beams"], dec["max_new_tokens"], dec["model"]) == (1, 8, str(folder.parent / "nllb"))
    for d in de:
        assert d.instruction == tr[f"paper-en-{d.item:03d}.m0"]["instruction"].strip()
    mod_id = {r["instruction"]: r["source_id"] for r in rows if r["lang"] == "en" and r["category"] != "eval"}
    for d, e in zip(de_mods, en_mods, strict=True):
        base = tr[f"paper-en-{e.base_item:03d}.m0"]["instruction"].strip()
        assert d.instruction == base + " " + tr[mod_id[e.modifier_text]]["instruction"].strip()
    # flags: the run's counters, translation.json and the records agree
    info = json.loads((folder / "translation.json").read_text(encoding="utf-8"))["targets"]["de"]
    assert info["items"] == ITEMS and info == summary["eval_set"]["targets"]["de"]
    flagged = {
        f: sorted(k for k, r in tr.items() if f in r["flags"]) for r in tr.values() for f in r["flags"]
    }
    assert info["flagged"] == flagged
    assert summary["counters"]["flagged"] == sum(1 for r in tr.values() if r["flags"])
    assert (folder / "alpacaeval_test_subset.de.items").read_text().split() == [str(i) for i in ITEMS]


def test_german_thresholds_derived_from_the_translation(german: tuple[Path, dict]) -> None:
    folder, _ = german
    de = [r.instruction for r in data.load_eval("de", folder)]
    en = [data.load_eval("en")[i].instruction for i in ITEMS]  # the same lines in English
    want_s = max(1, round(5 * sum(map(count_sentences, de)) / sum(map(count_sentences, en))))
    want_w = max(1, round(150 * sum(map(count_words, de)) / sum(map(count_words, en))))
    assert thresholds("de", folder) == (want_s, want_w)
    with pytest.raises(
        ValueError, match=r"unknown evaluation language 'de'.*alpacaeval_test_subset\.de\.jsonl"
    ):
        thresholds("de")  # not in the shipped folder


def test_generate_score_report_in_german(
    german: tuple[Path, dict], tiny_hf_dir: Path, tmp_path: Path
) -> None:
    folder, _ = german
    gens = tmp_path / "gens"
    common = [f"--model={tiny_hf_dir}", f"--eval_dir={folder}", "--max_new_tokens=4", "--batch_size=8"]
    generate.run(
        [*common, "--eval=paper", "--limit=2", f"--output={gens / 'paper'}"]
    )  # --langs: the folder's
    generate.run([*common, "--eval=modifiers", "--limit=14", f"--output={gens / 'modifiers'}"])
    got = pa.concat_tables([read_outputs(str(gens / n)) for n in ("paper", "modifiers")])
    assert set(got.column("lang").to_pylist()) == {"de"} and got.num_rows == 16
    # one more row with a real German answer: the German dictionary must accept 8 of its 9 words
    crafted = got.slice(0, 1).to_pylist()[0] | {"id": "paper-de-crafted", "response": GERMAN}
    pq.write_table(
        pa.Table.from_pylist([crafted], schema=got.schema), gens / "crafted-00000-of-00001.parquet"
    )
    out = tmp_path / "scores"
    score.run([f"--generations={gens}/*-of-*.parquet", f"--output={out}", f"--eval_dir={folder}"])
    rows = {r["id"]: r for r in read_outputs(str(out)).to_pylist()}
    assert len(rows) == 17
    de_dic = hunspell.HunSpell(str(DE_DIC), str(DE_DIC.with_suffix(".aff")))  # independent of evalsuite
    assert de_dic.spell("Haus") and not de_dic.spell("Hauss") and not de_dic.spell("Strasse")
    assert get_checker("de").dictionaries[0][0] == DE_DIC
    assert rows["paper-de-crafted"]["spell_ok_rate"] == pytest.approx(8 / 9)
    assert rows["paper-de-crafted"]["lang_pred"] == "de" and rows["paper-de-crafted"]["lang_correct"]
    for r in rows.values():
        target = r["modifier_arg"] if r["modifier_type"] == "lang" else "de"
        assert r["expected_lang"] == target
        ws = words(r["response"])
        if r["expected_lang"] == "de" and ws:  # the rate is de_DE's verdict on the response's words
            assert r["spell_ok_rate"] == pytest.approx(sum(bool(de_dic.spell(w)) for w in ws) / len(ws))
    limits = thresholds("de", folder)
    short = [r for r in rows.values() if r["modifier_type"] == "short"]
    long = [r for r in rows.values() if r["modifier_type"] == "long"]
    assert short and long
    assert all(r["modifier_detail"].endswith(f"(max {limits.short_max_sentences} in de)") for r in short)
    assert all(r["modifier_detail"].endswith(f"(min {limits.long_min_words} in de)") for r in long)
    # the report: a runs directory with one run, the scores above
    runs = runs_dir(tmp_path, "tiny-de", read_outputs(str(out)))
    rep = build_report(runs, None, "fasttext", 20, tmp_path / "report", ["lang_correct"])
    write_report(rep, tmp_path / "report")
    surface = (tmp_path / "report" / "fig3_surface.csv").read_text(encoding="utf-8")
    assert ",de," in surface and ",en," not in surface
    t1 = (tmp_path / "report" / "table1.csv").read_text(encoding="utf-8").splitlines()
    assert len(t1) > 1 and all(",de," in line for line in t1[1:])
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "fulfilled de" in md and "mean fr/pt/ru" not in md


@pytest.fixture
def swahili(german: tuple[Path, dict], tmp_path: Path) -> Path:
    """An evaluation folder in Swahili (the German files renamed): a language whose dictionary is missing."""
    if find_dictionaries("sw"):
        pytest.skip("a Swahili Hunspell dictionary is installed here")
    folder = tmp_path / "eval_sw"
    folder.mkdir()
    for f in german[0].iterdir():
        if ".de." in f.name or f.name == "tasks.json":
            shutil.copy(f, folder / f.name.replace(".de.", ".sw."))
    return folder


def test_language_without_dictionary_names_the_debian_package(
    swahili: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(
        MissingDictionaryError, match=r"Debian package hunspell-sw \(apt-get install hunspell-sw\)"
    ):
        SurfaceScorer().check_language("sw")
    # the grid stops before training
    records = gp.select_records(["paper", "modifiers"], [], {}, str(swahili))
    assert {r.lang for r in records} == {"sw"}
    with pytest.raises(gp.GridError, match="hunspell-sw"):
        check_scorable(records, GridOptions(configs=[]))
    check_scorable(records, GridOptions(configs=[], spelling="skip"))
    # the scoring pipeline stops before it starts, with the same message and exit status 2
    gens = tmp_path / "gens.parquet"
    rows = [{**r.to_row(), "response": "Habari ya asubuhi, rafiki yangu."} for r in records[:2]]
    pq.write_table(pa.Table.from_pylist(rows), gens)
    argv = ["score", f"--generations={gens}", f"--output={tmp_path / 'scores'}", f"--eval_dir={swahili}"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(score.run)
    assert exit_info.value.code == 2 and "install the Debian package hunspell-sw" in capsys.readouterr().err
    # --spelling=skip: scored, spelling null, and said so in the summary and in the report
    summary = score.run([*argv[1:], "--spelling=skip"])
    assert summary["spelling_skipped"].startswith("spelling not scored (spell_ok_rate null) for sw")
    table = read_outputs(str(tmp_path / "scores"))
    assert table.column("spell_ok_rate").to_pylist() == [None, None]
    assert table.column("expected_lang").to_pylist() == ["sw", "sw"]
    rep = build_report(runs_dir(tmp_path, "sw", table), None, "fasttext", 20, None, ["lang_correct"])
    text = [t for s in rep.sections if s.anchor == "fig3_surface" for t in s.text]
    assert any(t.startswith("Spelling not scored for sw") for t in text)


def test_spelling_skip_is_stored_in_the_scores_file(swahili: Path, tmp_path: Path) -> None:
    """evalsuite.score (the grid's scorer) keeps the note in the Parquet metadata of its output."""
    import subprocess
    import sys

    gens = tmp_path / "gens.parquet"
    recs = data.load_eval("sw", swahili)[:1]
    pq.write_table(pa.Table.from_pylist([{**recs[0].to_row(), "response": "Habari ya asubuhi."}]), gens)
    out = tmp_path / "scores.parquet"
    cmd = [sys.executable, "-m", "evalsuite.score", f"--generations={gens}", f"--output={out}"]
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "hunspell-sw" in bad.stderr and not out.exists()
    ok = subprocess.run([*cmd, "--spelling=skip"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "spelling not scored" in pq.read_schema(out).metadata[SPELLING_META_KEY].decode()
