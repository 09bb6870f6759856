"""reporting.report on a synthetic runs directory: exact values of every table, LR choice, failed-item flags,
a self-contained page, the demo banner, errors naming the file and field."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evalsuite import aggregate as agg
from evalsuite.agreement import weighted_kappa
from records.schemas import JUDGE_CRITERIA
from reporting import build as report
from tests.report_helpers import ANCHOR, BASE, LOW, OTHER, OTHER_G, RELEVANCE, SCHEMA, TINY, make_runs

REPO = Path(__file__).resolve().parents[1]
N_BOOT = 200


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs, ratings = make_runs(root)
    rep = report.build_report(runs, ratings, "judge", N_BOOT)
    index = report.write_report(rep, root / "out")
    return root, rep, index


def pick(rows, **kw):
    out = [r for r in rows if all(r[k] == v for k, v in kw.items())]
    assert len(out) == 1, (kw, out)
    return out[0]


def test_outputs_exist(built):
    root, _, index = built
    names = {p.name for p in (root / "out").iterdir()}
    for n in ("fig2", "fig3_surface", "fig3_tasks", "fig4", "fig5"):
        assert f"{n}.png" in names and f"{n}.csv" in names
    assert {"table1.csv", "report.md", "index.html", "runs.csv"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert index == root / "out" / "index.html"


def test_figure2_values(built):
    root, *_ = built
    rows = read_csv(root / "out" / "fig2.csv")
    en = pick(rows, source="judge", run=ANCHOR, criterion="helpfulness", langs="en")
    assert (
        float(en["mean"]) == pytest.approx((2 + 1 + 2 + 0) / 4) and en["n"] == "4" and en["n_failed"] == "0"
    )
    non = pick(rows, source="judge", run=ANCHOR, criterion="helpfulness", langs="non_en")
    # fr (wrong-language item left out) (2+1+1)/3, pt 1, ru (failed item left out) (2+0+2)/3
    assert float(non["mean"]) == pytest.approx((4 / 3 + 1 + 4 / 3) / 3)
    assert (non["n"], non["n_failed"], non["n_wrong_lang"]) == ("10", "1", "1")
    assert float(non["lo"]) <= float(non["mean"]) <= float(non["hi"])
    lang = pick(rows, source="judge", run=ANCHOR, criterion="language", langs="non_en")
    assert float(lang["mean"]) == pytest.approx((6 / 4 + 2 + 5 / 3) / 3)  # no exclusion for Correct language
    other = pick(rows, source="judge", run=OTHER, criterion="helpfulness", langs="en")
    assert float(other["mean"]) == 2.0
    assert not [r for r in rows if r["run"] == LOW]  # only the chosen LR of each group is a model
    assert float(pick(rows, source="judge", run=BASE, criterion="helpfulness", langs="en")["mean"]) == 2.0
    human = pick(rows, source="human", run=ANCHOR, criterion="helpfulness", langs="en")
    assert float(human["mean"]) == pytest.approx((1 + 1 + 2 + 0 + 2) / 5) and human["n"] == "5"
    human = pick(rows, source="human", run=ANCHOR, criterion="helpfulness", langs="non_en")
    assert float(human["mean"]) == pytest.approx((2.0 + 1.0) / 2)  # no pt ratings: fr and ru only


def test_figure4_and_tasks(built):
    root, *_ = built
    fr = pick(
        read_csv(root / "out" / "fig4.csv"), source="judge", run=ANCHOR, lang="fr", criterion="helpfulness"
    )
    assert float(fr["mean"]) == pytest.approx(4 / 3) and (fr["n"], fr["n_wrong_lang"]) == ("3", "1")
    ru = pick(read_csv(root / "out" / "fig4.csv"), source="judge", run=ANCHOR, lang="ru", criterion="logic")
    assert ru["n_failed"] == "1"
    tasks = read_csv(root / "out" / "fig3_tasks.csv")
    assert float(pick(tasks, source="judge", task="brainstorm", lang="en")["mean"]) == 1.5
    assert float(pick(tasks, source="judge", task="calc", lang="en")["mean"]) == 1.0
    assert float(pick(tasks, source="human", task="calc", lang="en")["mean"]) == 1.0  # (2 + 0) / 2
    # non-en calc: fr (1+1)/2, pt 1, ru item 2 only (item 3 failed) 2 -> mean of means 4/3
    assert float(pick(tasks, source="judge", task="calc", lang="non_en")["mean"]) == pytest.approx(4 / 3)
    assert {r["run"] for r in tasks} == {ANCHOR}


def test_chosen_lr_is_select_lr(built):
    root, *_ = built
    rows = [
        r
        for name in (ANCHOR, LOW)
        for r in report.load_rows(
            report.Run(
                name, TINY, TINY, float(name.split("lr")[1]), True, None, None, root / "runs" / name, True
            )
        )
    ]
    surface = agg.surface_table([r for r in rows if report.is_paper(r)], ("group", "lr", "lang"), N_BOOT)
    assert agg.select_lr(surface) == 1e-3  # 1e-4 loses on relevance (0.5)
    srows = read_csv(root / "out" / "fig3_surface.csv")
    chosen = {(r["group"], float(r["lr"])) for r in srows if r["chosen"] == "True"}
    assert chosen == {(TINY, 1e-3), (OTHER_G, 1e-4)}
    low_fr = pick(srows, group=TINY, lr="0.0001", lang="fr")
    assert float(low_fr["relevance"]) == 0.5 and low_fr["run"] == LOW and low_fr["n"] == "4"
    base = [r for r in srows if r["run"] == BASE]  # no LR: listed, never chosen (a line, not a point)
    assert len(base) == 4 and {r["lr"] for r in base} == {""} and {r["chosen"] for r in base} == {"False"}
    runs = {r["run"]: r for r in read_csv(root / "out" / "runs.csv")}
    assert (
        runs[ANCHOR]["chosen"] == "True" and runs[LOW]["chosen"] == "False" and runs[BASE]["chosen"] == "True"
    )
    assert runs["pending-lr0.01"]["status"] == "not scored yet"


def test_protocol_relevance_model_and_lr_metrics_are_stated(built):
    root, rep, index = built
    runs = {r["run"]: r for r in read_csv(root / "out" / "runs.csv")}
    assert runs[ANCHOR]["protocol"] == "released" and runs[OTHER]["protocol"] == "paper"
    assert (runs[ANCHOR]["repetition_penalty"], runs[ANCHOR]["max_new_tokens"]) == ("1.2", "512")
    assert runs[BASE]["protocol"] == "unknown (run.json predates protocols)"
    assert runs[ANCHOR]["relevance_model"] == RELEVANCE
    header = dict(rep.header)
    assert header["relevance model"] == RELEVANCE
    assert header["LR choice"] == "maximin over lang_correct, spell_ok_rate, relevance (paper default)"
    assert "released (repetition_penalty 1.2, max_new_tokens 512): 3 runs" in header["protocol"]
    assert "unknown (run.json predates protocols): 1 run" in header["protocol"]
    assert "runs differ in protocol" in header["protocol"]
    for key in ("relevance model: ", "protocol: ", "LR choice: maximin over"):
        assert key in rep.summary
    page = index.read_text(encoding="utf-8")
    md = (index.parent / "report.md").read_text(encoding="utf-8")
    for text in (page, md):
        assert f"relevance ({RELEVANCE})" in text  # the Figure 3 left column, next to the values
        assert f"Relevance scored by: {RELEVANCE}." in text
        assert "released (repetition_penalty 1.2, max_new_tokens 512)" in text
    assert "not scored yet, so left out of the LR choice: pending-lr0.01" in page


def _drop_relevance(runs: Path, name: str) -> None:
    t = pq.read_table(runs / name / "scores.parquet").to_pylist()
    for r in t:
        r.update(relevance=None, relevance_status="skipped")
    pq.write_table(pa.Table.from_pylist(t, schema=SCHEMA), runs / name / "scores.parquet")


def test_lr_choice_fails_when_relevance_is_missing_for_one_lr(tmp_path):
    runs, _ = make_runs(tmp_path, human=False)
    _drop_relevance(runs, LOW)
    with pytest.raises(report.ReportError) as e:
        report.build_report(runs, None, "judge", 10)
    msg = str(e.value)
    assert f"group {TINY!r}: LR choice needs relevance for every LR; missing for runs: {LOW}" in msg
    assert ANCHOR not in msg and "--lr_metrics=lang_correct,spell_ok_rate" in msg
    # the same rule in the human-evaluation packet (one strict function for both)
    from reporting import human

    with pytest.raises(ValueError, match=f"needs relevance for every LR; missing for runs: {LOW}"):
        human.select_runs([_with_gens(r) for r in human.load_runs(runs)])
    # explicit metrics: the choice is made without relevance, and every output says so
    rep = report.build_report(runs, None, "judge", 10, lr_metrics=["lang_correct", "spell_ok"])
    used = "maximin over lang_correct, spell_ok_rate (explicit --lr_metrics; not used: relevance)"
    assert dict(rep.header)["LR choice"] == used and f"LR choice: {used}" in rep.summary
    # without relevance the under-trained LR wins (the anchor LR has a wrong-language fr answer)
    assert f"{TINY}: 0.0001 ({LOW})" in rep.summary
    with pytest.raises(report.ReportError, match="unknown metric"):
        report.build_report(runs, None, "judge", 10, lr_metrics=["fluency"])


def _with_gens(run):
    """A human.Run whose generations.parquet 'exists' (the scores stand in for it): selection reads scores."""
    gens = run.path / "generations.parquet"
    if not gens.exists() and run.scores.exists():
        gens.write_bytes(run.scores.read_bytes())
    return run


def test_relevance_model_read_per_run(tmp_path):
    from reporting.report_data import relevance_model_of

    runs, _ = make_runs(tmp_path, human=False)
    scores = runs / ANCHOR / "scores.parquet"
    assert relevance_model_of(scores, "real:test", "fallback") == "fallback"
    (runs / ANCHOR / "stages").mkdir()
    (runs / ANCHOR / "stages" / "score.json").write_text(json.dumps({"models": {"relevance": "demo"}}))
    assert relevance_model_of(scores, "demo:SmolLM2", "fallback") == "demo:SmolLM2"
    t = pq.read_table(scores)
    pq.write_table(t.replace_schema_metadata({b"xlit.relevance_model": b"openai:m@u"}), scores)
    assert relevance_model_of(scores, "real:test", "fallback") == "openai:m@u"  # the score file wins
    old = json.loads((runs / "judge.json").read_text())
    del old["models"]
    (runs / "judge.json").write_text(json.dumps(old))
    (runs / ANCHOR / "stages" / "score.json").unlink()
    t = pq.read_table(scores)
    pq.write_table(t.replace_schema_metadata(None), scores)
    rep = report.build_report(runs, None, "judge", 10)
    assert dict(rep.header)["relevance model"].startswith("unknown (not recorded")
    _drop_relevance(runs, OTHER)
    rows = {r.name: r for r in report.load_runs(runs)[0]}
    assert rows[OTHER].relevance_model is None  # set by build_report only
    rep = report.build_report(runs, None, "judge", 10)
    shown = dict(rep.header)["relevance model"]
    assert f"none (relevance not scored) (runs {OTHER})" in shown


def test_summary_cli_states_protocol_relevance_model_and_lr_metrics(tmp_path):
    runs, _ = make_runs(tmp_path, human=False)
    files = [runs / ANCHOR / "scores.parquet", runs / BASE / "scores.parquet"]
    for lr, name in ((1e-3, ANCHOR), (1e-4, LOW)):  # one configuration "m" at two LRs, relevance lost for one
        t = pq.read_table(runs / name / "scores.parquet").to_pylist()
        for r in t:
            r.update(model="m", lr=lr, **({"relevance": None} if name == LOW else {}))
        pq.write_table(pa.Table.from_pylist(t), tmp_path / f"{name}.parquet")
    lr_files = [tmp_path / f"{ANCHOR}.parquet", tmp_path / f"{LOW}.parquet"]

    def summary(paths, *extra):
        cmd = [
            sys.executable,
            "-m",
            "reporting.summary",
            f"--scores={','.join(map(str, paths))}",
            "--n_boot=10",
        ]
        res = subprocess.run([*cmd, *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout

    out = summary(files)
    assert (
        f"{ANCHOR}: protocol released (repetition_penalty 1.2, max_new_tokens 512); relevance by {RELEVANCE}"
        in out
    )
    assert f"{BASE}: protocol unknown (run.json predates protocols); relevance by {RELEVANCE}" in out
    assert f"== Surface metrics [Figure 3 left] (relevance by {RELEVANCE}) ==" in out
    out = summary(lr_files)
    assert f"m: no LR chosen: LR choice needs relevance for every LR; missing for runs: {LOW}" in out
    out = summary(lr_files, "--lr_metrics=lang_correct,spell_ok")
    assert (
        "m: 0.0001 (maximin over lang_correct, spell_ok_rate (explicit --lr_metrics; not used: relevance))"
        in out
    )


def test_table1_rates(built):
    root, *_ = built
    rows = read_csv(root / "out" / "table1.csv")
    assert {r["run"] for r in rows} == {ANCHOR, OTHER}
    short_en = pick(rows, run=ANCHOR, modifier_type="short", lang="en")
    assert float(short_en["fulfilled"]) == 0.5 and float(short_en["helpfulness"]) == 1.5
    short_ru = pick(rows, run=ANCHOR, modifier_type="short", lang="ru")
    assert float(short_ru["fulfilled"]) == 1.0 and float(short_ru["helpfulness"]) == 1.5
    assert (short_ru["n_checked"], short_ru["n_helpfulness"], short_ru["n_failed"]) == ("3", "2", "1")
    lang_en = pick(rows, run=ANCHOR, modifier_type="lang", lang="en")
    assert float(lang_en["fulfilled"]) == 0.5 and float(lang_en["helpfulness"]) == 2.0


def test_figure5_kappa(built):
    root, *_ = built
    rows = read_csv(root / "out" / "fig5.csv")
    # judge helpfulness en [2,1,2,0]; human [1,1,2,0] + a second annotator's 2 on item 0
    pairs = [(2, 1), (1, 1), (2, 2), (0, 0), (2, 2)]
    assert {r["reference"] for r in rows} == {"human", "fastText"}
    en = pick(rows, reference="human", criterion="helpfulness", langs="en")
    assert en["n"] == "5" and float(en["kappa"]) == pytest.approx(weighted_kappa(pairs))
    assert float(en["pct_judge2_human1"]) == pytest.approx(20.0)
    non = pick(rows, reference="human", criterion="helpfulness", langs="non_en")
    assert non["n"] == "4"  # fr items; ru item 3 failed in the judge: no pair
    assert float(non["pct_judge1_human2"]) == pytest.approx(50.0)


class _Parser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.flagged = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "td" and a.get("title"):
            self.flagged.append(a["title"])


def test_html_self_contained_and_flags(built):
    _, rep, index = built
    page = index.read_text(encoding="utf-8")
    assert 'src="http' not in page and 'href="http' not in page and "<link" not in page
    p = _Parser()
    p.feed(page)
    assert len(p.imgs) == 6 and all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in p.imgs)
    assert "n_failed=1: failed judge items left out" in p.flagged
    assert "†" in page and "not scored yet" in page and "trainer-workdir/ has no run.json" in page
    assert report.DEMO_BANNER not in page
    md = (index.parent / "report.md").read_text(encoding="utf-8")
    assert "![Figure 2" in md
    line = next(x for x in md.splitlines() if x.startswith("| Tiny / Dolly-En / LoRA | helpfulness | "))
    # human en | human non-en (no pt ratings: mean of fr 2.0 and ru 1.0) | judge en | judge non-en
    assert "| 1.20 [" in line and "| 1.50 [" in line and "n=5 | 1.25 [" in line and line.endswith(" n=10 † |")
    assert "human: non-English is the mean over fr/ru only" in page


def test_demo_banner_and_no_human(tmp_path):
    runs, _ = make_runs(tmp_path, judge_kind="demo", human=False)
    rep = report.build_report(runs, None, "fasttext", 50)
    page = report.write_report(rep, tmp_path / "out").read_text(encoding="utf-8")
    assert report.DEMO_BANNER in page and "--rule=fasttext" in page
    assert "python -m reporting.annotate export --runs=" in page
    # no human panels; fastText still rates the language criterion of every judged paper response
    assert (tmp_path / "out" / "fig5.png").exists()
    fig5 = read_csv(tmp_path / "out" / "fig5.csv")
    assert {(r["reference"], r["criterion"]) for r in fig5} == {("fastText", "language")}
    en, non = pick(fig5, langs="en"), pick(fig5, langs="non_en")
    assert en["n"] == "16" and float(en["pct_judge2_human2"]) == 100.0
    # anchor: fr item 1 judged 0 and misidentified (0, 0); ru item 2 judged 1, fastText 2; ru item 3 failed
    assert non["n"] == "47" and float(non["pct_judge0_human0"]) == pytest.approx(100 / 47, abs=0.005)
    assert float(non["pct_judge1_human2"]) == pytest.approx(100 / 47, abs=0.005)
    pairs = [(0, 0), (1, 2)] + [(2, 2)] * 45
    assert float(non["kappa"]) == pytest.approx(weighted_kappa(pairs))
    rows = read_csv(tmp_path / "out" / "fig2.csv")
    assert {r["source"] for r in rows} == {"judge"}


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"lr": "fast"}, "'lr'"),
        ({"label": None}, "'label'"),
        ({"anchor": "yes"}, "'anchor'"),
        (None, "'group'"),
    ],
)
def test_malformed_run_json(tmp_path, patch, field):
    runs, _ = make_runs(tmp_path, human=False)
    path = runs / OTHER / "run.json"
    info = json.loads(path.read_text())
    if patch is None:
        del info["group"]
    else:
        info.update(patch)
    path.write_text(json.dumps(info))
    with pytest.raises(report.ReportError, match=field) as e:
        report.build_report(runs, None, "judge", 10)
    assert str(path) in str(e.value)


def test_cli(tmp_path):
    runs, ratings = make_runs(tmp_path)
    out = runs / "report"  # inside the runs directory, as `make demo` does: not listed as a stray folder
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "reporting.report",
        f"--runs={runs}",
        f"--out={out}",
        f"--human={ratings}",
        "--n_boot=50",
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"report: {out / 'index.html'}" in res.stdout and "help_en" in res.stdout
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "trainer-workdir/ has no run.json" in page and "report/ has no run.json" not in page
    (runs / ANCHOR / "run.json").write_text("{not json")  # an expected failure: one error line, exit 2
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(runs / ANCHOR / "run.json") in errors[0] and "invalid JSON" in errors[0]


def test_without_judge_and_without_scores(tmp_path):
    runs, _ = make_runs(tmp_path, judge_kind="none", human=False)
    for name in (ANCHOR, LOW, OTHER, BASE):  # surface metrics only, as with --judge=none
        t = pq.read_table(runs / name / "scores.parquet").to_pylist()
        for r in t:
            r.update(
                {f"judge_{c}": None for c in JUDGE_CRITERIA},
                judge_status="skipped",
                judge_helpfulness_mod=None,
            )
        pq.write_table(pa.Table.from_pylist(t, schema=SCHEMA), runs / name / "scores.parquet")
    rep = report.build_report(runs, None, "judge", 20)
    page = report.write_report(rep, tmp_path / "out").read_text(encoding="utf-8")
    assert "No judge scores in the shown runs" in page and (tmp_path / "out" / "fig3_surface.png").exists()
    assert not (tmp_path / "out" / "fig2.png").exists()
    for name in (ANCHOR, LOW, OTHER, BASE):
        (runs / name / "scores.parquet").unlink()
    rep = report.build_report(runs, None, "judge", 20)
    page = report.write_report(rep, tmp_path / "out2").read_text(encoding="utf-8")
    assert page.count("not scored yet") == 5 + 1 and "No scored runs yet" in page


def test_note_when_the_judge_rejects_every_language(tmp_path):
    runs, _ = make_runs(tmp_path, judge_kind="demo", human=False)
    for name in (ANCHOR, LOW, OTHER, BASE):  # a demo judge that always gives Language 1 star
        t = pq.read_table(runs / name / "scores.parquet").to_pylist()
        for r in t:
            r["judge_language"] = 0 if r["judge_status"] == "ok" else None
        pq.write_table(pa.Table.from_pylist(t, schema=SCHEMA), runs / name / "scores.parquet")
    text = " ".join(p for s in report.build_report(runs, None, "judge", 20).sections for p in s.text)
    assert "judge: every rated response counts as being in the wrong language" in text
    text = " ".join(p for s in report.build_report(runs, None, "fasttext", 20).sections for p in s.text)
    assert "wrong language" not in text


def test_untrusted_judge_is_greyed(tmp_path):
    from reporting.build import build_report

    runs, _ = make_runs(tmp_path, human=False)
    trusted = build_report(runs, n_boot=20)
    assert not any(s.greyed for s in trusted.sections) and "Figure 2 (means" in trusted.summary
    card = runs / "calibration" / "card.json"
    card.write_text(
        json.dumps({"verdict": "fail", "failed": ["helpfulness AUC: 0.50"], "judge": {"spec": "real:test"}})
    )
    for rep, head in (
        (build_report(runs, n_boot=20), "judge failed calibration: helpfulness AUC: 0.50"),
        (card.unlink() or build_report(runs, n_boot=20), "judge not calibrated"),
    ):
        anchors = [s.anchor for s in rep.sections]
        i = anchors.index("untrusted_judge")
        assert rep.sections[i].title.startswith(head)
        assert set(anchors[i + 1 :]) == {"fig2", "fig4", "fig3_tasks", "table1"}
        assert all(s.greyed for s in rep.sections[i + 1 :]) and not any(s.greyed for s in rep.sections[:i])
        assert "Figure 2 (means" not in rep.summary and head in rep.summary


def test_language_correctness_vs_lr_opens_the_report(built):
    """The first section: language correctness per language against LR for the group trained at two LRs,
    the untuned run as its own rows; the same numbers as Figure 3 left's table."""
    root, rep, _ = built
    assert rep.sections[0].anchor == "lang_vs_lr"
    rows = read_csv(root / "out" / "lang_vs_lr.csv")
    surface = read_csv(root / "out" / "fig3_surface.csv")
    assert {(r["group"], r["lr"]) for r in rows} == {
        (TINY, "0.001"),
        (TINY, "0.0001"),
        ("Tiny (untuned)", ""),
    }
    for r in rows:
        s = pick(surface, group=r["group"], lr=r["lr"], lang=r["lang"])
        assert (r["lang_correct"], r["lang_correct_lo"], r["lang_correct_hi"]) == (
            s["lang_correct"],
            s["lang_correct_lo"],
            s["lang_correct_hi"],
        )
    assert (root / "out" / "lang_vs_lr.png").stat().st_size > 0
    md = (root / "out" / "report.md").read_text()
    assert md.index("Language correctness vs learning rate") < md.index("Figure 3 left")
