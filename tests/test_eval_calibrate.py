"""Judge calibration: controls, the card's statistics (checked by hand), and whole runs against the fake
OpenAI server as a judge that scores at random (fails) or from the controls' hidden labels (passes)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from evalsuite import calibration as cal
from evalsuite.controls import KINDS, build_controls
from study import calibration_run
from tests.fake_openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]


def test_controls_are_deterministic_and_labelled():
    a, b = build_controls(4), build_controls(4)
    assert a == b and len(a) == 16
    assert {c.kind for c in a} == set(KINDS)
    assert {c.lang for c in a} == {"en", "fr", "pt", "ru"}
    for c in a:
        if c.kind == "good":
            assert (c.language_ok, c.helpful, c.relevant) == (True, True, 1)
        elif c.kind == "wrong_lang":
            assert c.language_ok is False and c.response_lang != c.lang and c.helpful is None
        else:
            assert c.helpful is False and c.relevant == 0
        if c.kind == "null_empty":
            assert c.response == "" and c.language_ok is None
        if c.kind == "null_echo":
            assert c.response == c.instruction
    assert build_controls(4, seed=1) != a


def test_auc_and_ci_by_hand():
    # pairs (pos, neg): (2,0) 1, (2,1) 1, (1,0) 1, (1,1) 0.5 -> 3.5 / 4
    assert cal.auc([2, 1], [0, 1]) == 0.875
    assert cal.auc([1, 1], [1]) == 0.5 and cal.auc([], [1]) is None
    lo, hi = cal.auc_ci([2, 2, 2], [0, 0])
    assert lo == hi == 1.0  # perfect separation stays perfect in every resample
    lo, hi = cal.auc_ci([2, 1, 0, 2], [0, 1, 2, 1], n_boot=500)
    assert 0 <= lo < cal.auc([2, 1, 0, 2], [0, 1, 2, 1]) < hi <= 1


def _row(kind, lang, lang_pred, language, helpful_score, rel, *, labels, response="text", exp=None):
    language_ok, helpful, relevant = labels
    r = {
        "kind": kind,
        "lang": lang,
        "lang_pred": lang_pred,
        "response": response,
        "language_ok": language_ok,
        "helpful": helpful,
        "relevant": relevant,
        "judge_status": "ok",
        "relevance_status": "ok",
        "relevance": rel,
        "relevance_expected": None,
    }
    for c in ("language", "helpfulness", "fluency", "factuality", "logic", "harmlessness"):
        r[f"judge_{c}"] = {"language": language, "helpfulness": helpful_score}.get(c, 2)
        r[f"judge_{c}_expected"] = None
    if exp is not None:
        r["judge_helpfulness_expected"] = exp
    return r


def test_card_numbers_by_hand():
    good, bad, wrong = (True, True, 1), (True, False, 0), (False, None, None)
    rows = [
        _row("good", "en", "en", 2, 2, 1, labels=good, exp=1.8),
        _row("good", "fr", "fr", 2, 1, 1, labels=good, exp=1.2),
        _row("null_refusal", "fr", "fr", 2, 0, 0, labels=bad, exp=0.4),
        _row("null_echo", "pt", "pt", 2, 1, 1, labels=bad, exp=0.6),  # the judge is fooled by the echo
        _row("mismatched", "en", "en", 2, 0, 0, labels=bad, exp=0.2),
        _row("wrong_lang", "fr", "en", 0, 2, 1, labels=wrong),
        _row("wrong_lang", "ru", "en", 2, 2, 1, labels=wrong),  # missed: language 2 for an English answer
    ]
    repeats = [(rows[0], {**rows[0]}), (rows[2], {**rows[2], "judge_helpfulness": 1})]
    card = cal.compute_card(rows, repeats, n_boot=200)
    h = card["criteria"]["helpfulness"]
    # good {2, 1} vs bad {0, 1, 0}: pairs 2>all (3), 1>0 twice, 1=1 once -> (3 + 2 + 0.5) / 6
    assert h["n_pos"] == 2 and h["n_neg"] == 3
    assert h["auc"] == pytest.approx(5.5 / 6)
    assert h["auc_expected"] == 1.0  # {1.8, 1.2} vs {0.4, 0.6, 0.2}
    assert h["mean_by_kind"]["good"] == 1.5 and h["mean_by_kind"]["null_echo"] == 1.0
    # expected vs parsed on the 5 rows that have both: |2-1.8|, |1-1.2|, |0-.4|, |1-.6|, |0-.2|
    assert h["expected_vs_parsed"]["n"] == 5
    assert h["expected_vs_parsed"]["mean_abs_diff"] == pytest.approx((0.2 + 0.2 + 0.4 + 0.4 + 0.2) / 5)
    r = card["criteria"]["relevance"]
    # relevance: good {1, 1} vs bad {0, 1, 0}: each good beats two and ties one -> (2 + 0.5) / 3
    assert r["auc"] == pytest.approx(2.5 / 3)
    lang = card["criteria"]["language"]
    # language: correct-language rows {2,2,2,2,2} vs wrong {0, 2}: 5 x (1 + 0.5) / 10
    assert lang["auc"] == pytest.approx(0.75)
    assert lang["wrong_lang_zero"] == 0.5
    # fastText: every row agrees with the judge except the missed wrong_lang (ft says en != ru)
    assert lang["fasttext_agreement"] == pytest.approx(6 / 7)
    rep = card["repeatability"]["agreement"]
    assert rep["helpfulness"] == {"n": 2, "rate": 0.5} and rep["language"] == {"n": 2, "rate": 1.0}
    checks = {c["name"]: c for c in card["checks"]}
    assert checks["null answers: mean helpfulness"]["value"] == 0.5  # refusal 0, echo 1
    assert checks["null and mismatched answers: share judged relevant"]["value"] == pytest.approx(1 / 3)
    assert not checks["wrong-language answers: share with language 0"]["ok"]
    assert card["verdict"] == "fail"
    assert any(f.startswith("wrong-language answers") for f in card["failed"])
    assert "wrong_lang (language: 1/2 right)" not in card["failed_controls"]  # exactly half is not "most"
    assert "null_echo (helpfulness: 0/1 right)" in card["failed_controls"]
    assert "**FAIL**" in cal.render_md(card) and "FAIL" in cal.verdict_line(card)
    assert "language separates good from bad" in cal.verdict_line(card)


def _run(tmp_path: Path, mode: str, per_kind: int = 4, repeat: int = 4) -> dict:
    controls = build_controls(per_kind)
    labels = {(c.instruction, c.response): c for c in controls}
    with FakeOpenAIServer(seed=1, fault_rate=0.0, judge_mode=mode, labels=labels) as srv:
        setup = calibration_run.Setup(
            judge=f"openai:fake-judge@{srv.base_url}",
            per_kind=per_kind,
            repeat=repeat,
            cache_dir=str(tmp_path / "cache"),
        )
        card = calibration_run.run_calibration(setup, tmp_path / f"card-{mode}", log=lambda *_: None)
        again = calibration_run.run_calibration(setup, tmp_path / f"card-{mode}", log=lambda *_: None)
        requests = srv.stats["requests"]
    assert again == card  # an up-to-date card is reused: no call
    n = len(controls)
    assert requests == 2 * n + 2 * repeat  # judge + relevance, first pass and the rescored sample
    return card


def test_random_judge_fails_calibration(tmp_path):
    card = _run(tmp_path, "random")
    assert card["verdict"] == "fail"
    names = " ".join(card["failed"])
    assert "separates good from bad" in names and "repeatable" in names
    assert json.loads((tmp_path / "card-random" / "card.json").read_text())["verdict"] == "fail"


def test_oracle_judge_passes_calibration(tmp_path):
    card = _run(tmp_path, "oracle")
    assert card["verdict"] == "pass", card["failed"]
    assert card["failed"] == [] and card["parse"]["judge"]["rate"] == 1.0
    for c in ("language", "helpfulness", "relevance"):
        assert card["criteria"][c]["auc"] == 1.0 and card["criteria"][c]["repeatability"] == 1.0
    # probability-weighted scores from the fake log-probs: "3" -> 2.7 stars (1.7), "1" -> 1.3 stars (0.3)
    h = card["criteria"]["helpfulness"]
    assert h["mean_by_kind"]["good"] == 2.0 and h["expected_vs_parsed"]["n"] == card["controls"]["n"]
    rows = [json.loads(x) for x in (tmp_path / "card-oracle" / "controls.jsonl").read_text().splitlines()]
    want = {True: 1.7, False: 0.3, None: 1.0}  # 3, 1 and 2 stars
    for r in rows:
        assert math.isclose(r["judge_helpfulness_expected"], want[r["helpful"]], abs_tol=1e-6)
    diffs = [abs(r["judge_helpfulness"] - r["judge_helpfulness_expected"]) for r in rows]
    assert h["expected_vs_parsed"]["mean_abs_diff"] == pytest.approx(sum(diffs) / len(diffs))
    assert card["criteria"]["relevance"]["expected_vs_parsed"]["mean_abs_diff"] == pytest.approx(0.2)
    md = (tmp_path / "card-oracle" / "card.md").read_text()
    assert md.startswith("# Judge calibration card: PASS")


def test_cli_dry_run_and_usage(tmp_path):
    cmd = [sys.executable, "-m", "study.calibrate", f"--out={tmp_path}", f"--cache_dir={tmp_path / 'c'}"]
    p = subprocess.run(
        [*cmd, "--judge=openai:gpt-4o-mini", "--dry_run", "--per_kind=2", "--repeat=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},  # no API key: the estimate needs none
    )
    assert p.returncode == 0, p.stderr
    assert "8 controls" in p.stdout and "20 calls still needed" in p.stdout
    assert not (tmp_path / "card.json").exists()
    p = subprocess.run([*cmd, "--judge=none"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "a judge is needed" in p.stderr


def test_card_status(tmp_path):
    trusted, head = cal.card_status(tmp_path)
    assert not trusted and head.startswith("judge not calibrated")
    (tmp_path / "calibration").mkdir()
    card = {"verdict": "fail", "failed": ["helpfulness separates good from bad controls (AUC): 0.50"]}
    (tmp_path / "calibration" / "card.json").write_text(json.dumps(card))
    trusted, head = cal.card_status(tmp_path)
    assert not trusted and head.startswith("judge failed calibration: helpfulness")
    card["verdict"] = "pass"
    (tmp_path / "calibration" / "card.json").write_text(json.dumps(card))
    assert cal.card_status(tmp_path)[0]


def test_demo_summary_hides_helpfulness_of_an_untrusted_judge():
    from study.demo_steps import summary_table

    rows = [
        {
            "model": "m",
            "lang": "en",
            "eval_set": "paper",
            "lang_correct": True,
            "spell_ok_rate": 1.0,
            "relevance": 1,
            "judge_status": "ok",
            "judge_language": 2,
            "judge_helpfulness": 2,
        }
    ]
    assert summary_table(rows).splitlines()[2].split()[-2] == "2.00"
    assert summary_table(rows, judge_trusted=False).splitlines()[2].split()[-2] == "-"


def test_demo_calibration_stage_writes_the_card_the_report_reads(tmp_path, capsys):
    from study.demo_steps import calibrate_judge

    labels = {(c.instruction, c.response): c for c in build_controls(8)}  # the CLI's default size
    with FakeOpenAIServer(fault_rate=0.0, judge_mode="oracle", labels=labels) as srv:
        spec = f"openai:fake-judge@{srv.base_url}"
        res = calibrate_judge(tmp_path, "real", spec, str(tmp_path / "cache"))
    assert res.status == "ran" and res.stage == "calibrate"
    card = cal.load_card(tmp_path)
    assert card is not None and card["verdict"] == "pass" and card["judge"]["spec"] == spec
    assert cal.card_status(tmp_path, spec) == (True, f"judge passed calibration ({spec})")
    assert not cal.card_status(tmp_path, "openai:other")[0]
