"""Aggregation: the paper's exclusion rule on hand-computed examples, bootstrap CIs, LR selection."""

from __future__ import annotations

import numpy as np
import pytest

from evalsuite import aggregate as agg

CRIT = ("language", "helpfulness", "fluency", "factuality", "logic", "harmlessness")


def row(lang="fr", status="ok", language=2, help=2, lang_correct=True, model="m", **kw):
    r = {"model": model, "lang": lang, "judge_status": status, "lang_correct": lang_correct, **kw}
    for c in CRIT:
        r[f"judge_{c}"] = None if status != "ok" else (language if c == "language" else help)
    return r


ROWS = [
    row(language=2, help=2),  # correct language
    row(language=0, help=0, lang_correct=False),  # wrong language (1 star): excluded except for Language
    row(language=1, help=1),  # code-switching (2 stars) still counts as the correct language
    row(status="failed", lang_correct=True),  # failed judge call: left out, counted
    row(language=2, help=2, lang_correct=False),  # fastText disagrees with the judge
]


def test_exclusion_rule_judge():
    vals, counts = agg.criterion_values(ROWS, "helpfulness", "judge")
    assert counts == {"n": 3, "n_failed": 1, "n_wrong_lang": 1}
    assert np.nanmean(vals) == pytest.approx(5 / 3)  # (2 + 1 + 2) / 3
    lang_vals, lang_counts = agg.criterion_values(ROWS, "language", "judge")
    assert np.nanmean(lang_vals) == pytest.approx(1.25)  # (2 + 0 + 1 + 2) / 4, no exclusion
    assert lang_counts == {"n": 4, "n_failed": 1, "n_wrong_lang": 0}


def test_exclusion_rule_fasttext():
    vals, counts = agg.criterion_values(ROWS, "helpfulness", "fasttext")
    assert counts == {"n": 2, "n_failed": 1, "n_wrong_lang": 2}
    assert np.nanmean(vals) == pytest.approx(1.5)  # (2 + 1) / 2


def test_lang_modifier_rows_use_fasttext_even_with_judge_rule():
    r = row(language=0, help=2, lang_correct=True, modifier_type="lang", modifier_arg="de")
    assert agg.correct_language(r, "judge") is True
    assert agg.correct_language(row(language=0), "judge") is False
    with pytest.raises(ValueError):
        agg.correct_language(r, "gpt")


def test_criteria_table_rows():
    table = agg.criteria_table(ROWS, ("model", "lang"), "judge", n_boot=200)
    assert [t["criterion"] for t in table] == list(CRIT)
    helpful = table[1]
    assert (helpful["model"], helpful["lang"], helpful["n"], helpful["n_failed"]) == ("m", "fr", 3, 1)
    assert helpful["mean"] == pytest.approx(5 / 3) and helpful["lo"] <= 5 / 3 <= helpful["hi"]


def test_non_english_is_the_mean_of_per_language_means():
    rows = [row("en", help=2), row("en", help=1)]
    rows += [row("fr", help=2), row("fr", help=0)]  # fr mean 1.0
    rows += [row("pt", help=2)]  # pt mean 2.0
    rows += [row("ru", help=1), row("ru", help=2)]  # ru mean 1.5
    out = {r["criterion"]: r for r in agg.en_vs_nonen(rows, ("model",), "judge", n_boot=200)}
    assert out["helpfulness"]["en"] == pytest.approx(1.5)
    assert out["helpfulness"]["non_en"] == pytest.approx(1.5)  # not the pooled 1.4
    assert out["language"]["non_en"] == pytest.approx(2.0)


def test_bootstrap_ci():
    const = agg.mean_ci(np.full(50, 1.0), n_boot=500)
    assert const == {"mean": 1.0, "lo": 1.0, "hi": 1.0}
    half = agg.mean_ci(np.array([0.0, 1.0] * 50), n_boot=2000, seed=0)
    assert half["mean"] == 0.5
    assert half["lo"] == pytest.approx(0.40, abs=0.02) and half["hi"] == pytest.approx(0.60, abs=0.02)
    assert agg.mean_ci(np.array([np.nan, np.nan])) == {"mean": None, "lo": None, "hi": None}
    # same seed, same CI
    assert agg.mean_ci(np.arange(10.0), seed=3) == agg.mean_ci(np.arange(10.0), seed=3)


def test_task_and_modifier_tables():
    rows = [row(task="recipes", help=2), row(task="recipes", help=1), row(task="emails", help=0)]
    t = {r["task"]: r for r in agg.task_table(rows, n_boot=100)}
    assert t["recipes"]["mean"] == pytest.approx(1.5) and t["emails"]["mean"] == 0.0
    mods = [
        {**row(), "modifier_type": "short", "modifier_ok": True, "judge_helpfulness_mod": 2},
        {**row(), "modifier_type": "short", "modifier_ok": False, "judge_helpfulness_mod": 1},
        {**row(), "modifier_type": "short", "modifier_ok": None, "judge_helpfulness_mod": None},
        {**row(language=0), "modifier_type": "short", "modifier_ok": False, "judge_helpfulness_mod": 0},
    ]
    (m,) = agg.modifier_table(mods, n_boot=100)
    assert (m["modifier_type"], m["n_checked"], m["n_helpfulness"]) == ("short", 3, 2)
    assert m["fulfilled"] == pytest.approx(1 / 3) and m["helpfulness"] == pytest.approx(1.5)


def surf(lr, lang, lc, sp, rel):
    return {"model": "m", "lr": lr, "lang": lang, "lang_correct": lc, "spell_ok_rate": sp, "relevance": rel}


def test_select_lr_maximin():
    rows = [
        *(surf(1e-6, lang, 0.99, 0.97, 0.60) for lang in ("en", "fr", "pt", "ru")),  # under-trained
        *(surf(1e-5, lang, 0.97, 0.96, 0.95) for lang in ("en", "fr", "pt", "ru")),
        *(
            surf(1e-4, lang, 0.70 if lang != "en" else 1.0, 0.85, 0.98) for lang in ("en", "fr", "pt", "ru")
        ),  # overfit
    ]
    assert agg.select_lr(rows) == 1e-5
    # ties on the minimum go to the higher mean, then to the smaller LR
    tie = [surf(1e-5, "fr", 0.9, 0.9, 0.9), surf(1e-4, "fr", 0.9, 1.0, 1.0), surf(1e-6, "fr", 0.9, 1.0, 1.0)]
    assert agg.select_lr(tie) == 1e-6
    # relevance not measured: no silent choice on the other metrics; naming them is the way out
    norel = [surf(1e-5, "fr", 0.9, 0.9, None), surf(1e-4, "fr", 0.8, 1.0, None)]
    with pytest.raises(
        agg.LRChoiceError, match="needs relevance for every LR; missing for runs: lr=1e-05, lr=0.0001"
    ):
        agg.select_lr(norel)
    choice = agg.choose_lr(norel, ["lang_correct", "spell_ok"])
    assert (choice.lr, choice.metrics, choice.explicit) == (1e-5, ("lang_correct", "spell_ok_rate"), True)
    assert (
        choice.describe()
        == "maximin over lang_correct, spell_ok_rate (explicit --lr_metrics; not used: relevance)"
    )
    default = agg.choose_lr(rows)
    assert default.metrics == agg.LR_METRICS == ("lang_correct", "spell_ok_rate", "relevance")
    assert not default.explicit and default.describe().endswith("(paper default)")
    with pytest.raises(ValueError):
        agg.select_lr([])


def test_select_lr_relevance_missing_for_one_lr_names_metric_and_run():
    """Issue #13: with relevance absent for one LR, the old rule silently dropped it for every LR and the
    maximin favoured the lowest, under-trained LR; now the choice fails and names the metric and the run."""
    runs = [("smollm2-ft-lr1e-6", 1e-6), ("smollm2-ft-lr1e-5", 1e-5), ("smollm2-ft-lr1e-4", 1e-4)]
    names = {lr: name for name, lr in runs}
    langs = ("en", "fr", "pt", "ru")
    rows = [
        *(surf(1e-6, lang, 0.99, 0.98, 0.40) for lang in langs),  # under-trained: irrelevant answers
        *(surf(1e-5, lang, 0.97, 0.96, 0.95) for lang in langs),
        *(surf(1e-4, lang, 0.90, 0.90, None) for lang in langs),  # relevance not scored for this run
    ]
    with pytest.raises(agg.LRChoiceError) as e:
        agg.choose_lr(rows, run_names=names)
    msg = str(e.value)
    assert "LR choice needs relevance for every LR; missing for runs: smollm2-ft-lr1e-4" in msg
    assert "smollm2-ft-lr1e-5" not in msg and "--lr_metrics=lang_correct,spell_ok_rate" in msg
    # one language missing counts too (all-NaN / absent column for that row)
    partial = [dict(r) for r in rows if r["lr"] != 1e-4]
    partial[-1]["relevance"] = float("nan")
    with pytest.raises(agg.LRChoiceError, match="relevance .* missing for runs: smollm2-ft-lr1e-5"):
        agg.choose_lr(partial, run_names=names)
    absent = [{k: v for k, v in r.items() if k != "relevance"} for r in rows]
    with pytest.raises(
        agg.LRChoiceError, match="missing for runs: smollm2-ft-lr1e-6, smollm2-ft-lr1e-5, smollm2"
    ):
        agg.choose_lr(absent, run_names=names)
    # an explicit list that still names the missing metric fails as well
    with pytest.raises(agg.LRChoiceError, match="needs relevance"):
        agg.choose_lr(rows, ["relevance", "lang_correct"], run_names=names)
    # without relevance, by explicit choice: 1e-6 wins (the reason relevance is in the paper's default)
    assert agg.choose_lr(rows, "lang_correct,spell_ok_rate").lr == 1e-6
    # the same from score rows, the entry point of the report and the human packet
    score_rows = [
        {"lr": lr, "lang": lang, "lang_correct": True, "spell_ok_rate": 0.9, "relevance": rel}
        for name, lr in runs
        for lang in langs
        for rel in ((None, None) if lr == 1e-4 else (1, 1 if lr == 1e-5 else 0))
    ]
    with pytest.raises(
        agg.LRChoiceError, match="needs relevance for every LR; missing for runs: smollm2-ft-lr1e-4"
    ):
        agg.choose_run_lr(runs, score_rows)
    assert agg.choose_run_lr(runs[:2], score_rows).lr == 1e-5
    with pytest.raises(agg.LRChoiceError, match="no evaluation-set rows for runs: x"):
        agg.choose_run_lr([*runs[:2], ("x", 1e-3)], score_rows)


def test_select_lr_needs_the_same_languages_and_known_metrics():
    rows = [surf(1e-5, "en", 0.9, 0.9, 0.9), surf(1e-5, "fr", 0.9, 0.9, 0.9), surf(1e-4, "en", 1.0, 1.0, 1.0)]
    with pytest.raises(agg.LRChoiceError, match="same languages for every LR: b lacks fr"):
        agg.choose_lr(rows, run_names={1e-5: "a", 1e-4: "b"})
    with pytest.raises(agg.LRChoiceError, match="unknown metric"):
        agg.parse_lr_metrics("lang_correct,fluency")
    assert agg.parse_lr_metrics(None) is None and agg.parse_lr_metrics("") is None


def test_surface_table():
    rows = [
        {
            "model": "m",
            "lr": 1e-5,
            "lang": "fr",
            "lang_correct": True,
            "spell_ok_rate": 0.9,
            "relevance": 1,
            "code_switch_rate": 0.0,
        },
        {
            "model": "m",
            "lr": 1e-5,
            "lang": "fr",
            "lang_correct": False,
            "spell_ok_rate": 0.7,
            "relevance": None,
            "code_switch_rate": None,
        },
    ]
    (t,) = agg.surface_table(rows, n_boot=100)
    assert (t["n"], t["lang_correct"], t["spell_ok_rate"], t["relevance"], t["code_switch_rate"]) == (
        2,
        0.5,
        pytest.approx(0.8),
        1.0,
        0.0,
    )
