"""Judge calibration, the statistics: the card (AUC with bootstrap CIs per criterion, fastText agreement,
repeatability) computed from scored controls, its Markdown rendering, and the card status the report and
the summary show. Running the judge on the controls is `study.calibrate` (python -m study.calibrate).
Thresholds and the card format: docs/evalsuite.md ("Judge calibration").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evalsuite.controls import KINDS, NULL_KINDS
from records.schemas import JUDGE_CRITERIA

CARD_VERSION = 1
DEMO_PER_KIND = 2  # the demo judge answers a batch in minutes on a CPU: a small card by default
DEMO_REPEAT = 2
CALIBRATED = ("language", "helpfulness", "relevance")  # criteria with hidden labels and a verdict


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """What a judge must reach to pass (documented in docs/evalsuite.md, "Judge calibration")."""

    min_parse_rate: float = 0.9  # replies that parse, judge and relevance model each
    min_auc: float = 0.8  # separation of good vs bad controls per calibrated criterion (point estimate)
    min_auc_ci_low: float = 0.5  # ... and the lower end of its 95% bootstrap interval must exceed this
    max_null_helpfulness: float = 0.5  # mean helpfulness (0..2) of null controls
    min_good_helpfulness: float = 1.5  # mean helpfulness (0..2) of good controls
    max_bad_relevance: float = 0.25  # share of null and mismatched controls judged relevant
    min_good_relevance: float = 0.75  # share of good controls judged relevant
    min_wrong_lang_zero: float = 0.8  # share of wrong-language controls with language score 0
    min_fasttext_agreement: float = 0.8  # judge (language >= 1) agrees with fastText (correct language)
    min_repeatability: float = 0.9  # exact agreement on rescoring, per calibrated criterion

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- statistics


def auc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """P(score of a positive > score of a negative) + 0.5 P(tie) (Mann-Whitney); None if a side is empty."""
    p, n = np.asarray(pos, float), np.asarray(neg, float)
    if not len(p) or not len(n):
        return None
    diff = p[:, None] - n[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def auc_ci(
    pos: Sequence[float], neg: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> tuple[float | None, float | None]:
    """95% percentile bootstrap interval of `auc`, positives and negatives resampled separately."""
    p, n = np.asarray(pos, float), np.asarray(neg, float)
    if not len(p) or not len(n):
        return None, None
    rng = np.random.default_rng(seed)
    pi = rng.integers(0, len(p), (n_boot, len(p)))
    ni = rng.integers(0, len(n), (n_boot, len(n)))
    diff = p[pi][:, :, None] - n[ni][:, None, :]
    boots = ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(1, 2))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(lo), float(hi)


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _corr(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


# ------------------------------------------------------------------------------------------- the card


def _value(row: dict[str, Any], criterion: str, expected: bool = False) -> float | None:
    col = "relevance" if criterion == "relevance" else f"judge_{criterion}"
    status = row.get("relevance_status" if criterion == "relevance" else "judge_status")
    if status != "ok":
        return None
    v = row.get(col + "_expected" if expected else col)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _label(row: dict[str, Any], criterion: str) -> bool | None:
    v = {"language": row["language_ok"], "helpfulness": row["helpful"], "relevance": row["relevant"]}[
        criterion
    ]
    return None if v is None else bool(v)


def _judged_right(row: dict[str, Any], criterion: str) -> bool | None:
    """Whether the judge's score agrees with the control's label (good: language/helpfulness >= 1,
    relevance 1; bad: 0), None if not applicable or not scored."""
    label, v = _label(row, criterion), _value(row, criterion)
    if label is None or v is None:
        return None
    return v >= 1 if label else v == 0


def _check(name: str, value: float | None, op: str, threshold: float, detail: str = "") -> dict[str, Any]:
    ok = value is not None and (
        value >= threshold if op == ">=" else value > threshold if op == ">" else value <= threshold
    )
    return {"name": name, "value": value, "op": op, "threshold": threshold, "ok": bool(ok), "detail": detail}


def compute_card(
    rows: Sequence[dict[str, Any]],
    repeats: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
    thresholds: Thresholds = Thresholds(),
    *,
    has_relevance: bool = True,
    n_boot: int = 1000,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The calibration card from scored controls (Control fields + score columns + lang_pred).

    repeats: (first scoring, rescoring with the cache bypassed) of the repeatability sample.
    """
    t = thresholds
    checks: list[dict[str, Any]] = []
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in KINDS}
    crits = [c for c in CALIBRATED if has_relevance or c != "relevance"]

    parse: dict[str, Any] = {}
    for name, col in (("judge", "judge_status"), ("relevance", "relevance_status")):
        if name == "relevance" and not has_relevance:
            continue
        ok = sum(r.get(col) == "ok" for r in rows)
        parse[name] = {"ok": ok, "n": len(rows), "rate": ok / len(rows) if rows else None}
        checks.append(_check(f"{name} replies parse", parse[name]["rate"], ">=", t.min_parse_rate))

    criteria: dict[str, Any] = {}
    for c in list(JUDGE_CRITERIA) + (["relevance"] if has_relevance else []):
        entry: dict[str, Any] = {
            "mean_by_kind": {
                k: _mean([v for r in by_kind[k] if (v := _value(r, c)) is not None]) for k in KINDS
            },
        }
        exp_pairs = [
            (p, e) for r in rows if (p := _value(r, c)) is not None and (e := _value(r, c, True)) is not None
        ]
        entry["expected_vs_parsed"] = {
            "n": len(exp_pairs),
            "mean_abs_diff": _mean([abs(p - e) for p, e in exp_pairs]),
            "corr": _corr([p for p, _ in exp_pairs], [e for _, e in exp_pairs]),
        }
        if c in crits:
            labelled = [(r, lab) for r in rows if (lab := _label(r, c)) is not None]
            pos = [v for r, lab in labelled if lab and (v := _value(r, c)) is not None]
            neg = [v for r, lab in labelled if not lab and (v := _value(r, c)) is not None]
            a, (lo, hi) = auc(pos, neg), auc_ci(pos, neg, n_boot)
            pos_e = [v for r, lab in labelled if lab and (v := _value(r, c, True)) is not None]
            neg_e = [v for r, lab in labelled if not lab and (v := _value(r, c, True)) is not None]
            entry.update(
                n_pos=len(pos), n_neg=len(neg), auc=a, auc_ci=[lo, hi], auc_expected=auc(pos_e, neg_e)
            )
            right = {}
            for k in KINDS:
                js = [j for r in by_kind[k] if (j := _judged_right(r, c)) is not None]
                right[k] = {"right": sum(js), "n": len(js)}
            entry["judged_right_by_kind"] = right
            sep = f"{c} separates good from bad controls (AUC)"
            checks.append(_check(sep, a, ">=", t.min_auc, f"{len(pos)} good vs {len(neg)} bad"))
            checks.append(_check(f"{c} AUC 95% CI lower end", lo, ">", t.min_auc_ci_low))
        criteria[c] = entry

    def kind_mean(c: str, kinds: Sequence[str]) -> float | None:
        return _mean([v for k in kinds for r in by_kind[k] if (v := _value(r, c)) is not None])

    checks.append(
        _check(
            "null answers: mean helpfulness",
            kind_mean("helpfulness", NULL_KINDS),
            "<=",
            t.max_null_helpfulness,
        )
    )
    checks.append(
        _check(
            "good answers: mean helpfulness", kind_mean("helpfulness", ["good"]), ">=", t.min_good_helpfulness
        )
    )
    if has_relevance:
        bad = kind_mean("relevance", [*NULL_KINDS, "mismatched"])
        checks.append(
            _check("null and mismatched answers: share judged relevant", bad, "<=", t.max_bad_relevance)
        )
        checks.append(
            _check(
                "good answers: share judged relevant",
                kind_mean("relevance", ["good"]),
                ">=",
                t.min_good_relevance,
            )
        )
    wl = [v for r in by_kind["wrong_lang"] if (v := _value(r, "language")) is not None]
    wl_zero = _mean([float(v == 0) for v in wl])
    checks.append(
        _check("wrong-language answers: share with language 0", wl_zero, ">=", t.min_wrong_lang_zero)
    )
    agree = [
        float((v >= 1) == (r["lang_pred"] == r["lang"]))
        for r in rows
        if r.get("response") and r.get("lang_pred") and (v := _value(r, "language")) is not None
    ]
    ft_agree = _mean(agree)
    checks.append(
        _check("language agrees with fastText", ft_agree, ">=", t.min_fasttext_agreement, f"n={len(agree)}")
    )
    ft_right = [
        float((r["lang_pred"] == r["lang"]) == r["language_ok"])
        for r in rows
        if r.get("lang_pred") and r["language_ok"] is not None
    ]
    criteria["language"].update(wrong_lang_zero=wl_zero, fasttext_agreement=ft_agree, fasttext_n=len(agree))

    rep: dict[str, Any] = {"n": len(repeats), "agreement": {}}
    for c in list(JUDGE_CRITERIA) + (["relevance"] if has_relevance else []):
        pairs = [
            (a_, b_)
            for r1, r2 in repeats
            if (a_ := _value(r1, c)) is not None and (b_ := _value(r2, c)) is not None
        ]
        rep["agreement"][c] = {"n": len(pairs), "rate": _mean([float(x == y) for x, y in pairs])}
        if c in criteria:
            criteria[c]["repeatability"] = rep["agreement"][c]["rate"]
    if repeats:
        for c in crits:
            checks.append(
                _check(
                    f"{c} repeatable (cache bypassed)",
                    rep["agreement"][c]["rate"],
                    ">=",
                    t.min_repeatability,
                    f"n={rep['agreement'][c]['n']}",
                )
            )

    failed_controls = []
    for c in crits:
        for k, v in criteria[c]["judged_right_by_kind"].items():
            if v["n"] and v["right"] / v["n"] < 0.5:
                failed_controls.append(f"{k} ({c}: {v['right']}/{v['n']} right)")
    failed = [ch for ch in checks if not ch["ok"]]
    return {
        "verdict": "fail" if failed else "pass",
        "failed": [_check_text(ch) for ch in failed],
        "failed_controls": failed_controls,
        "card_version": CARD_VERSION,
        **(meta or {}),
        "controls": {
            "n": len(rows),
            "by_kind": {k: len(v) for k, v in by_kind.items()},
            "by_lang": {
                lang: sum(r["lang"] == lang for r in rows) for lang in sorted({r["lang"] for r in rows})
            },
        },
        "thresholds": dataclasses.asdict(t),
        "parse": parse,
        "criteria": criteria,
        "fasttext_vs_labels": _mean(ft_right),
        "repeatability": rep,
        "checks": checks,
    }


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _check_text(ch: dict[str, Any]) -> str:
    return f"{ch['name']}: {_fmt(ch['value'])} (needs {ch['op']} {ch['threshold']})"


def verdict_line(card: dict[str, Any]) -> str:
    """One line: the verdict and, for a failed card, the failed checks and controls."""
    head = f"judge calibration: {card['verdict'].upper()} ({card.get('judge', {}).get('spec', '?')})"
    if card["verdict"] == "pass":
        return head
    parts = "; ".join(card["failed"][:4]) + (
        f"; +{len(card['failed']) - 4} more" if len(card["failed"]) > 4 else ""
    )
    ctl = ", ".join(card.get("failed_controls", [])[:6])
    return f"{head} — failed: {parts}" + (f" — controls judged wrong: {ctl}" if ctl else "")


def render_md(card: dict[str, Any]) -> str:
    """card.md: the verdict, the checks, per-criterion separation and per-kind means."""
    j, r = card.get("judge", {}), card.get("relevance") or {}
    out = [
        f"# Judge calibration card: {card['verdict'].upper()}",
        "",
        f"- judge: `{j.get('spec')}` ({j.get('kind')}); relevance model: `{r.get('spec', 'none')}`",
        f"- controls: {card['controls']['n']} ({', '.join(f'{k} {v}' for k, v in card['controls']['by_kind'].items())}); "
        f"languages: {', '.join(f'{k} {v}' for k, v in card['controls']['by_lang'].items())}",
        f"- created {card.get('created', '?')}; {card.get('seconds', 0):.0f} s; calls: {card.get('calls', {})}",
        "",
        "## Checks",
        "",
        "| check | value | needs | |",
        "|---|---|---|---|",
    ]
    for ch in card["checks"]:
        out.append(
            f"| {ch['name']} | {_fmt(ch['value'])} | {ch['op']} {ch['threshold']} | {'ok' if ch['ok'] else '**FAIL**'} |"
        )
    if card.get("failed_controls"):
        out += ["", "Controls judged wrong in most cases: " + ", ".join(card["failed_controls"])]
    out += [
        "",
        "## Criteria",
        "",
        "| criterion | AUC [95% CI] | AUC (expected) | repeatable | expected vs parsed: n, mean abs diff, corr | "
        + " | ".join(KINDS)
        + " |",
        "|---" * (5 + len(KINDS)) + "|",
    ]
    for c, e in card["criteria"].items():
        ci = e.get("auc_ci") or [None, None]
        a = f"{_fmt(e.get('auc'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if "auc" in e else ""
        ev = e["expected_vs_parsed"]
        means = " | ".join(_fmt(e["mean_by_kind"][k]) for k in KINDS)
        out.append(
            f"| {c} | {a} | {_fmt(e.get('auc_expected')) if 'auc' in e else ''} | {_fmt(e.get('repeatability'))} | "
            f"{ev['n']}, {_fmt(ev['mean_abs_diff'])}, {_fmt(ev['corr'])} | {means} |"
        )
    lang = card["criteria"].get("language", {})
    out += [
        "",
        f"Language: wrong-language answers rated 0: {_fmt(lang.get('wrong_lang_zero'))}; agreement with fastText: "
        f"{_fmt(lang.get('fasttext_agreement'))} (n={lang.get('fasttext_n')}); fastText vs the controls' labels: "
        f"{_fmt(card.get('fasttext_vs_labels'))}.",
        f"Repeatability sample: {card['repeatability']['n']} controls rescored with the cache bypassed.",
        "Scores are 0..2 (stars - 1) for the judge criteria and 0/1 for relevance; means per kind of control.",
        "",
    ]
    return "\n".join(out)


def load_card(runs_dir: str | Path) -> dict[str, Any] | None:
    """`<runs>/calibration/card.json` (where the grid and the demo write it), or None."""
    path = Path(runs_dir) / "calibration" / "card.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) and card.get("verdict") in ("pass", "fail") else None


def card_status(runs_dir: str | Path, judge_spec: str | None = None) -> tuple[bool, str]:
    """(trusted, heading) for a runs directory: trusted only with a passing card (for `judge_spec`, the
    runs' judge.json spec, when given); otherwise the heading under which judge figures are shown greyed
    ("judge not calibrated ..." / "judge failed calibration: ...")."""
    card = load_card(runs_dir)
    if card is None:
        return False, "judge not calibrated (no calibration/card.json: see python -m study.calibrate)"
    spec = (card.get("judge") or {}).get("spec")
    if judge_spec is not None and spec is not None and spec != judge_spec:
        return False, f"judge not calibrated (calibration/card.json is for {spec}, not {judge_spec})"
    if card["verdict"] == "pass":
        return True, f"judge passed calibration ({spec or '?'})"
    failed = "; ".join(card.get("failed", [])[:3]) or "see calibration/card.md"
    return False, f"judge failed calibration: {failed}"
