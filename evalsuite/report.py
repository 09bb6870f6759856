r"""The report: the paper's Figures 2-5 and Table 1 from a runs directory (docs/results.md).

  python -m evalsuite.report --runs=runs/ --out=report/ [--human=ratings.parquet] [--rule=judge|fasttext]
      [--n_boot=1000]

Reads runs/judge.json, runs/*/run.json and runs/*/scores.parquet (a run without scores is listed as "not
scored yet") and optional human ratings (evalsuite.human import). Writes into --out: fig*.png, one CSV per
table (fig2, fig3_surface, fig3_tasks, fig4, table1, fig5, runs), report.md and a self-contained
index.html. Every file is written atomically (temporary file + rename), index.html last.

Models of Figures 2 and 4 and Table 1 are the runs at the chosen LR of each group (aggregate.select_lr on
the surface metrics); Figure 3 right is the anchor run (run.json "anchor", else the first model). All
numbers come from evalsuite.aggregate / evalsuite.agreement; this module only selects rows and lays out.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from beam_pipelines.files import RecordError, read_table
from beam_pipelines.schemas import JUDGE_CRITERIA
from evalsuite import aggregate as agg
from evalsuite import figures
from evalsuite.agreement import agreement_table
from evalsuite.report_html import FAILED_NOTE, Cell, Section, Table, csv_text, html_page, markdown_report

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", None, "Runs directory (docs/results.md).")
flags.DEFINE_string("out", None, "Output folder for the report.")
flags.DEFINE_string("human", None, "Human ratings Parquet (output of `evalsuite.human import`).")
flags.DEFINE_enum("rule", "judge", ["judge", "fasttext"], "Correct-language decision for the exclusion rule.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the 95% CIs.")

CRITERIA = ("helpfulness", "language", "fluency", "factuality", "logic", "harmlessness")  # paper's order
SHORT = {
    "helpfulness": "Helpful.",
    "language": "Cor. lang",
    "fluency": "Fluency",
    "factuality": "Factual.",
    "logic": "Logical",
    "harmlessness": "Harmless",
}
LANGS = ("en", "fr", "pt", "ru")
TABLE1_LANGS = ("en", "ru", "fr", "pt")
SURFACE_TITLES = {
    "lang_correct": "language correctness",
    "spell_ok_rate": "spelling",
    "relevance": "relevance",
}
DEMO_BANNER = "demo judge — a small local model, not a real judge; scores illustrate the pipeline only"
Row = dict[str, Any]


class ReportError(ValueError):
    """Bad input for the report; the message names the file and field."""


@dataclass
class Run:
    name: str
    label: str
    group: str
    lr: float | None
    anchor: bool
    method: str | None
    data: str | None
    path: Path
    scored: bool


def load_judge(runs_dir: Path) -> dict[str, str]:
    """runs/judge.json ({"spec", "kind": real|demo|none, "note"}); a missing file gives kind "unknown"."""
    path = runs_dir / "judge.json"
    if not path.exists():
        return {"spec": "unknown", "kind": "unknown", "note": f"{path} is missing"}
    try:
        judge = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(judge, dict):
        raise ReportError(f"{path}: expected a JSON object")
    if judge.get("kind") not in ("real", "demo", "none"):
        raise ReportError(f"{path}: field 'kind' is {judge.get('kind')!r}, expected 'real', 'demo' or 'none'")
    if not isinstance(judge.get("spec"), str):
        raise ReportError(f"{path}: field 'spec' must be a string")
    return {"spec": judge["spec"], "kind": judge["kind"], "note": str(judge.get("note") or "")}


def _field(info: dict, path: Path, name: str, types: tuple[type, ...], required: bool = True) -> Any:
    """info[name] checked against `types` (bool is not a number here); None allowed when not required."""
    v = info.get(name)
    if v is None:
        if required:
            raise ReportError(
                f"{path}: missing field {name!r}" if name not in info else f"{path}: field {name!r} is null"
            )
        return None
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        want = " or ".join(t.__name__ for t in types)
        raise ReportError(f"{path}: field {name!r} is {v!r}, expected {want}")
    return v


def load_runs(runs_dir: Path, skip: Path | None = None) -> tuple[list[Run], list[str]]:
    """Every runs_dir/<run>/run.json, sorted by folder; notes list folders without run.json (but `skip`)."""
    if not runs_dir.is_dir():
        raise ReportError(f"{runs_dir}: not a directory")
    runs, notes = [], []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        path = d / "run.json"
        if skip is not None and d.resolve() == skip.resolve():
            continue  # the report's own folder (e.g. runs/demo/report)
        if not path.exists():
            notes.append(f"{d.name}/ has no run.json: ignored")
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReportError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(info, dict):
            raise ReportError(f"{path}: expected a JSON object")
        name = _field(info, path, "run", (str,))
        lr = _field(info, path, "lr", (int, float), required=False)
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ReportError(f"{path}: field 'lr' is {lr!r}, expected a positive number or null")
        anchor = _field(info, path, "anchor", (bool,), required=False)
        if name != d.name:
            notes.append(f"{path}: field 'run' is {name!r}, the folder is {d.name!r}; using {name!r}")
        runs.append(
            Run(
                name=name,
                label=_field(info, path, "label", (str,)),
                group=_field(info, path, "group", (str,)),
                lr=None if lr is None else float(lr),
                anchor=bool(anchor),
                method=_field(info, path, "method", (str,), required=False),
                data=_field(info, path, "data", (str,), required=False),
                path=d,
                scored=(d / "scores.parquet").exists(),
            )
        )
    if not runs:
        raise ReportError(f"{runs_dir}: no <run>/run.json found")
    seen: dict[str, Path] = {}
    for r in runs:
        if r.name in seen:
            raise ReportError(f"{r.path / 'run.json'}: field 'run' {r.name!r} is also used by {seen[r.name]}")
        seen[r.name] = r.path / "run.json"
    return runs, notes


def load_rows(run: Run) -> list[Row]:
    """scores.parquet of a run, each row tagged with the run's name, group and LR.

    (Not evalsuite.summary.load_scores: importing summary would define its absl flags here too.)
    """
    path = run.path / "scores.parquet"
    table = read_table(path)
    for col in ("id", "lang", "judge_status", "lang_correct"):
        if col not in table.column_names:
            raise ReportError(f"{path}: missing column {col!r}; is this an evalsuite.score output?")
    rows = table.to_pylist()
    for r in rows:
        r.update(run=run.name, group=run.group, lr=run.lr)
    return rows


def is_paper(r: Row) -> bool:
    """A row of the paper's evaluation set (as evalsuite.summary decides)."""
    return r.get("eval_set") == "paper" if "eval_set" in r else not r.get("modifier_type")


def load_human(
    path: Path, runs: dict[str, Run], score_rows: list[Row]
) -> tuple[list[Row], list[Row], list[str]]:
    """Ratings rows, the same as score-like rows (judge_<c> = human <c>) joined to scores on (run, id), notes."""
    table = read_table(path)
    for c in ("run", "id", "lang", *JUDGE_CRITERIA):
        if c not in table.column_names:
            raise ReportError(f"{path}: missing column {c!r} (human ratings, docs/results.md)")
    raw = table.to_pylist()
    for i, h in enumerate(raw):
        for c in JUDGE_CRITERIA:
            if h[c] is not None and h[c] not in (0, 1, 2):
                raise ReportError(f"{path}: row {i}: column {c!r} is {h[c]!r}, expected 0, 1, 2 or null")
    index = {(r["run"], r.get("id")): r for r in score_rows}
    like, unknown, unmatched = [], 0, 0
    for h in raw:
        if h["run"] not in runs:
            unknown += 1
            continue
        s = index.get((h["run"], h["id"]))
        unmatched += s is None
        base = s if s is not None else {"lang": h["lang"], "task": h.get("task")}
        like.append(
            {
                **{
                    k: base[k]
                    for k in ("eval_set", "task", "modifier_type", "lang_correct", "lang")
                    if k in base
                },
                "run": h["run"],
                "id": h["id"],
                "group": runs[h["run"]].group,
                "judge_status": "ok",
                **{f"judge_{c}": h[c] for c in JUDGE_CRITERIA},
            }
        )
    notes = [f"{len(raw)} human ratings from {path}"]
    if unknown:
        notes.append(f"{unknown} ratings name a run that is not in the runs directory: ignored")
    if unmatched:
        notes.append(f"{unmatched} ratings have no scores row with the same (run, id): kept without fastText")
    return raw, like, notes


def choose_runs(runs: list[Run], surface: list[Row]) -> tuple[dict[str, Run], list[str]]:
    """Per group (scored runs only), the run at the LR aggregate.select_lr picks from the surface table."""
    chosen, notes = {}, []
    by_group: dict[str, list[Run]] = {}
    for r in runs:
        if r.scored:
            by_group.setdefault(r.group, []).append(r)
    for group, members in by_group.items():
        with_lr = [r for r in members if r.lr is not None]
        lrs = Counter(r.lr for r in with_lr)
        dup = [lr for lr, k in lrs.items() if k > 1]
        if dup:
            names = [str(r.path / "run.json") for r in with_lr if r.lr == dup[0]]
            raise ReportError(f"{' and '.join(names)}: same field 'group' {group!r} and field 'lr' {dup[0]}")
        if len(members) == 1 or len(with_lr) < 2:
            chosen[group] = members[0]
            continue
        try:
            lr = agg.select_lr([s for s in surface if s["group"] == group and s["lr"] is not None])
            chosen[group] = next(r for r in with_lr if r.lr == lr)
        except ValueError as e:
            chosen[group] = with_lr[0]
            notes.append(f"group {group!r}: no LR selection ({e}); showing lr={with_lr[0].lr}")
    return chosen, notes


def _f(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.0f}%" if pct else f"{x:.2f}"


def ci_cell(
    mean: float | None,
    lo: float | None,
    hi: float | None,
    n: int | None = None,
    n_failed: int = 0,
    pct: bool = False,
) -> Cell:
    """ "mean [lo, hi] n=N", with † and a tooltip when judge items of the cell failed."""
    text = _f(mean, pct) if mean is None else f"{_f(mean, pct)} [{_f(lo, pct)}, {_f(hi, pct)}]"
    if n is not None:
        text += f" n={n}"
    if n_failed:
        return Cell(text + " †", f"n_failed={n_failed}: failed judge items left out")
    return Cell(text)


def _mean_text(mean: float | None, n_failed: int) -> str:
    return _f(mean) + ("†" if n_failed else "")


@dataclass
class Report:
    title: str
    banner: str
    header: list[tuple[str, str]]
    sections: list[Section]
    summary: str


def build_report(
    runs_dir: Path,
    human_path: Path | None = None,
    rule: str = "judge",
    n_boot: int = 1000,
    out_dir: Path | None = None,
) -> Report:
    """Reads the runs directory (and ratings) and lays out every figure and table of the report."""
    judge = load_judge(runs_dir)
    runs, notes = load_runs(runs_dir, skip=out_dir)
    by_name = {r.name: r for r in runs}
    rows = [row for r in runs if r.scored for row in load_rows(r)]
    paper = [r for r in rows if is_paper(r)]
    surface = agg.surface_table(paper, ("group", "lr", "lang"), n_boot)
    chosen, choose_notes = choose_runs(runs, surface)
    notes += choose_notes
    chosen_names = {r.name for r in chosen.values()}
    # model order: the anchor group first, then groups by first run
    anchor_groups = {r.group for r in runs if r.anchor}
    flagged = [r for r in chosen.values() if r.group in anchor_groups]
    anchor = flagged[0] if flagged else (next(iter(chosen.values()), None))
    order = sorted(chosen.values(), key=lambda r: (r is not anchor, runs.index(r)))
    labels: dict[str, str] = {}
    for r in order:
        dup = sum(o.label == r.label for o in order) > 1
        labels[r.name] = f"{r.label} [{r.name}]" if dup else r.label
    models = [r.name for r in order]

    human_raw: list[Row] = []
    human_like: list[Row] = []
    if human_path is not None:
        human_raw, human_like, hn = load_human(human_path, by_name, rows)
        notes += hn
    sources: dict[str, list[Row]] = {"judge": [r for r in paper if r["run"] in chosen_names]}
    if human_like:
        sources = {"human": [r for r in human_like if is_paper(r) and r["run"] in chosen_names], **sources}
    judged = any(r.get("judge_status") in ("ok", "failed") for r in sources["judge"])

    sections = [
        _runs_section(runs, chosen_names, rows, notes, labels),
        *_fig2_fig4(sources, models, labels, rule, n_boot, judged),
        _fig3_surface(surface, runs, chosen),
        _fig3_tasks(sources, anchor, labels, rule, n_boot),
        _table1(
            [r for r in rows if r.get("modifier_type") and r["run"] in chosen_names],
            models,
            labels,
            rule,
            n_boot,
        ),
        _fig5(human_raw, rows, runs_dir),
    ]
    n_scored = sum(r.scored for r in runs)
    header = [
        ("runs", f"{runs_dir} — {len(runs)} runs, {n_scored} scored, {len(runs) - n_scored} not scored yet"),
        (
            "judge",
            f"{judge['spec']} (kind: {judge['kind']})" + (f" — {judge['note']}" if judge["note"] else ""),
        ),
        ("human ratings", str(human_path) if human_path else "none"),
        ("exclusion rule", _rule_text(rule)),
        ("bootstrap", f"95% percentile CIs, {n_boot} resamples, seed 0"),
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    banner = DEMO_BANNER if judge["kind"] == "demo" else ""
    summary = _summary(sections, header, banner)
    return Report("xlit report: zero-shot cross-lingual transfer", banner, header, sections, summary)


def _rule_text(rule: str) -> str:
    how = "judge Language score ≥ 1" if rule == "judge" else "fastText label == expected language"
    return (
        f"--rule={rule}: criteria other than Correct language are averaged over responses in the correct "
        f"language ({how}; lang_XX modifier rows use fastText); failed judge items are left out and counted"
    )


def _runs_section(
    runs: list[Run], chosen: set[str], rows: list[Row], notes: list[str], labels: dict
) -> Section:
    counts: dict[str, Counter] = {}
    for r in rows:
        counts.setdefault(r["run"], Counter())[r.get("judge_status") or "null"] += 1
    header = [
        "run",
        "label",
        "group",
        "lr",
        "method",
        "anchor",
        "status",
        "rows",
        "judge ok/failed/skipped",
        "shown",
    ]
    disp, raw = [], []
    for r in runs:
        c = counts.get(r.name, Counter())
        status = "scored" if r.scored else "not scored yet"
        jc = f"{c['ok']}/{c['failed']}/{c['skipped'] + c['null']}" if r.scored else "–"
        shown = "chosen LR" if r.name in chosen else ""
        disp.append(
            [
                r.name,
                r.label,
                r.group,
                _lr(r.lr),
                r.method or "",
                "yes" if r.anchor else "",
                status,
                sum(c.values()) if r.scored else "–",
                jc,
                shown,
            ]
        )
        raw.append(
            {
                "run": r.name,
                "label": r.label,
                "group": r.group,
                "lr": r.lr,
                "method": r.method,
                "data": r.data,
                "anchor": r.anchor,
                "status": status,
                "rows": sum(c.values()),
                "judge_ok": c["ok"],
                "judge_failed": c["failed"],
                "chosen": r.name in chosen,
            }
        )
    return Section("runs", "Runs", notes, None, [Table("runs", "run.json of every run", header, disp, raw)])


def _lr(lr: float | None) -> str:
    return "–" if lr is None else f"{lr:g}"


def _fig2_fig4(
    sources: dict, models: list[str], labels: dict, rule: str, n_boot: int, judged: bool
) -> list[Section]:
    s2 = Section("fig2", "Figure 2: judge criteria, English vs mean of fr/pt/ru")
    s4 = Section("fig4", "Figure 4: judge criteria per language")
    if not judged or not models:
        msg = "No judge scores in the shown runs (judge not run, or kind 'none'): Figures 2 and 4 are empty."
        return [Section(s2.anchor, s2.title, [msg]), Section(s4.anchor, s4.title, [msg])]
    p2, p4, d2, d4, c2, c4 = [], [], [], [], [], []
    for src, srows in sources.items():
        per_lang = {
            (t["run"], t["lang"], t["criterion"]): t
            for t in agg.criteria_table(srows, ("run", "lang"), rule, n_boot)
        }
        env = {(t["run"], t["criterion"]): t for t in agg.en_vs_nonen(srows, ("run",), rule, n_boot)}

        def counts(run: str, c: str, langs: tuple, per_lang: dict = per_lang) -> tuple[int, int, int]:
            ts = [per_lang.get((run, lang, c), {}) for lang in langs]
            return tuple(sum(t.get(k, 0) for t in ts) for k in ("n", "n_failed", "n_wrong_lang"))

        vals = np.full((len(models), 2 * len(CRITERIA)), np.nan)
        texts = [["–"] * (2 * len(CRITERIA)) for _ in models]
        for i, run in enumerate(models):
            for j, c in enumerate(CRITERIA):
                t = env.get((run, c), {})
                for k, (key, langs) in enumerate((("en", ("en",)), ("non_en", agg.NON_EN))):
                    n, nf, nw = counts(run, c, langs)
                    m = t.get(key)
                    vals[i, 2 * j + k] = np.nan if m is None else m
                    texts[i][2 * j + k] = _mean_text(m, nf)
                    c2.append(
                        {
                            "source": src,
                            "run": run,
                            "model": labels[run],
                            "criterion": c,
                            "langs": key,
                            "mean": m,
                            "lo": t.get(f"{key}_lo"),
                            "hi": t.get(f"{key}_hi"),
                            "n": n,
                            "n_failed": nf,
                            "n_wrong_lang": nw,
                        }
                    )
        cols = [f"{SHORT[c]} {lang}" for c in CRITERIA for lang in ("en", "non-en")]
        p2.append(figures.Panel(f"{src} evaluation", vals, texts, [labels[m] for m in models], cols))
        for lang in LANGS:
            v4 = np.full((len(models), len(CRITERIA)), np.nan)
            t4 = [["–"] * len(CRITERIA) for _ in models]
            for i, run in enumerate(models):
                for j, c in enumerate(CRITERIA):
                    t = per_lang.get((run, lang, c))
                    if t is None:
                        continue
                    v4[i, j] = np.nan if t["mean"] is None else t["mean"]
                    t4[i][j] = _mean_text(t["mean"], t["n_failed"])
            p4.append(
                figures.Panel(
                    f"{src} evaluation, {lang}",
                    v4,
                    t4,
                    [labels[m] for m in models],
                    [SHORT[c] for c in CRITERIA],
                )
            )
        for run in models:
            for c in CRITERIA:
                cells = []
                for lang in LANGS:
                    t = per_lang.get((run, lang, c))
                    cells.append(
                        ci_cell(t["mean"], t["lo"], t["hi"], t["n"], t["n_failed"]) if t else Cell("–")
                    )
                    if t:
                        c4.append(
                            {
                                "source": src,
                                "run": run,
                                "model": labels[run],
                                "lang": lang,
                                "criterion": c,
                                **{k: t[k] for k in ("mean", "lo", "hi", "n", "n_failed", "n_wrong_lang")},
                            }
                        )
                d4.append([src, labels[run], c, *cells])
    by = {(r["source"], r["run"], r["criterion"], r["langs"]): r for r in c2}
    for run in models:  # sources side by side, as in the figure
        for c in CRITERIA:
            rs = [by[(src, run, c, key)] for src in sources for key in ("en", "non_en")]
            d2.append(
                [labels[run], c, *[ci_cell(r["mean"], r["lo"], r["hi"], r["n"], r["n_failed"]) for r in rs]]
            )
    ncols = len(sources)
    s2.figure = ("fig2.png", figures.heatmaps_png(p2, ncols, "Scores 0–2 († = failed judge items left out)"))
    s2.text = [
        "Rows: models (each group at its chosen LR). Columns: criterion × (English, mean of the fr/pt/ru means)."
        + (
            " Human (left) and judge (right)."
            if "human" in sources
            else " Judge only: no human ratings given."
        )
    ]
    s2.tables = [
        Table(
            "fig2",
            "Figure 2 values (95% CI, n)",
            [
                "model",
                "criterion",
                *[f"{src} {k}" for src in sources for k in ("en", "non-en (mean fr/pt/ru)")],
            ],
            d2,
            c2,
            FAILED_NOTE,
        )
    ]
    p4 = [p for lang in LANGS for p in p4 if p.title.endswith(f", {lang}")]  # language-major: human | judge
    s4.figure = ("fig4.png", figures.heatmaps_png(p4, ncols, "Per language, scores 0–2"))
    s4.tables = [
        Table(
            "fig4",
            "Figure 4 values (95% CI, n)",
            ["source", "model", "criterion", *LANGS],
            d4,
            c4,
            FAILED_NOTE,
            collapsed=len(d4) > 24,
        )
    ]
    return [s2, s4]


def _fig3_surface(surface: list[Row], runs: list[Run], chosen: dict[str, Run]) -> Section:
    s = Section("fig3_surface", "Figure 3 left: surface metrics vs LR")
    if not surface:
        s.text = ["No scored runs yet."]
        return s
    run_of = {(r.group, r.lr): r.name for r in runs}
    chosen_lr = {g: r.lr for g, r in chosen.items()}
    groups = list(dict.fromkeys(r.group for r in runs if r.group in chosen))
    disp, raw = [], []
    gorder = {g: i for i, g in enumerate(dict.fromkeys(r.group for r in runs))}
    surface = sorted(
        surface,
        key=lambda r: (
            gorder.get(r["group"], 0),
            r["lr"] or 0.0,
            LANGS.index(r["lang"]) if r["lang"] in LANGS else 9,
        ),
    )
    for row in surface:
        mark = row["lr"] is not None and chosen_lr.get(row["group"]) == row["lr"]
        raw.append(
            {
                "group": row["group"],
                "run": run_of.get((row["group"], row["lr"])),
                "lr": row["lr"],
                "chosen": mark,
                **{k: v for k, v in row.items() if k not in ("group", "lr")},
            }
        )
        metrics = (*agg.SURFACE_METRICS, "code_switch_rate")
        disp.append(
            [
                row["group"],
                _lr(row["lr"]) + (" ★" if mark else ""),
                row["lang"],
                row["n"],
                *[ci_cell(row[m], row[f"{m}_lo"], row[f"{m}_hi"]) for m in metrics],
            ]
        )
    lines: dict[str, list[figures.Line]] = {SURFACE_TITLES[m]: [] for m in agg.SURFACE_METRICS}
    for gi, g in enumerate(groups):
        grows = [r for r in surface if r["group"] == g and r["lr"] is not None]
        lrs = sorted({r["lr"] for r in grows})
        for m in agg.SURFACE_METRICS:
            for dashed, langs in ((False, ("en",)), (True, agg.NON_EN)):
                ys = []
                for lr in lrs:
                    v = [r[m] for r in grows if r["lr"] == lr and r["lang"] in langs and r[m] is not None]
                    ys.append(float(np.mean(v)) if v else None)
                name = f"{g} — {'en' if not dashed else 'fr/pt/ru'}"
                lines[SURFACE_TITLES[m]].append(figures.Line(name, lrs, ys, chosen_lr.get(g), gi, dashed))
    if any(ln.xs for ls in lines.values() for ln in ls):
        s.figure = ("fig3_surface.png", figures.surface_png(lines))
    no_lr = sorted({r["group"] for r in surface if r["lr"] is None})
    s.text = [
        "One line per group: solid = English, dashed = mean of the fr/pt/ru means; ★ = LR chosen by "
        "aggregate.select_lr (maximise the worst (metric, language) value)."
    ]
    if no_lr:
        s.text.append(f"Without an LR (not plotted): {', '.join(no_lr)}.")
    header = ["group", "lr", "lang", "n", "language correct", "spelling ok", "relevance", "code-switching"]
    s.tables = [
        Table("fig3_surface", "Figure 3 left values (95% CI)", header, disp, raw, collapsed=len(disp) > 24)
    ]
    return s


def _fig3_tasks(sources: dict, anchor: Run | None, labels: dict, rule: str, n_boot: int) -> Section:
    s = Section("fig3_tasks", "Figure 3 right: helpfulness per task (anchor model)")
    if anchor is None:
        s.text = ["No scored runs yet."]
        return s
    disp, raw, plot, plot_src = [], [], None, ""
    for src, srows in sources.items():
        arows = [r for r in srows if r["run"] == anchor.name and r.get("task")]
        if not arows or not any(r.get("judge_status") in ("ok", "failed") for r in arows):
            continue
        per = {
            (t["task"], t["lang"]): t for t in agg.task_table(arows, "helpfulness", ("run",), rule, n_boot)
        }
        env = {
            t["task"]: t
            for t in agg.en_vs_nonen(arows, ("task",), rule, n_boot)
            if t["criterion"] == "helpfulness"
        }
        tasks = sorted(env)
        for task in tasks:
            e = env[task]
            nf = {
                k: sum(per.get((task, lang), {}).get(k, 0) for lang in agg.NON_EN) for k in ("n", "n_failed")
            }
            en = per.get((task, "en"), {})
            raw.append(
                {
                    "source": src,
                    "run": anchor.name,
                    "task": task,
                    "lang": "non_en",
                    "mean": e["non_en"],
                    "lo": e["non_en_lo"],
                    "hi": e["non_en_hi"],
                    "n": nf["n"],
                    "n_failed": nf["n_failed"],
                }
            )
            cells = [
                ci_cell(e["en"], e["en_lo"], e["en_hi"], en.get("n", 0), en.get("n_failed", 0)),
                ci_cell(e["non_en"], e["non_en_lo"], e["non_en_hi"], nf["n"], nf["n_failed"]),
            ]
            for lang in LANGS:
                t = per.get((task, lang))
                if t:
                    raw.append(
                        {
                            "source": src,
                            "run": anchor.name,
                            "task": task,
                            "lang": lang,
                            **{k: t[k] for k in ("mean", "lo", "hi", "n", "n_failed")},
                        }
                    )
                if lang != "en":
                    cells.append(
                        ci_cell(t["mean"], t["lo"], t["hi"], t["n"], t["n_failed"]) if t else Cell("–")
                    )
            disp.append([src, task, *cells])
        full = all(env[t]["en"] is not None for t in tasks) and any(
            env[t]["non_en"] is not None for t in tasks
        )
        if plot is None and (full or src == "judge"):  # human if it covers en and non-en, else judge
            series = {
                "en": (
                    [env[t]["en"] for t in tasks],
                    [env[t]["en_lo"] for t in tasks],
                    [env[t]["en_hi"] for t in tasks],
                ),
                "non-en (mean fr/pt/ru)": (
                    [env[t]["non_en"] for t in tasks],
                    [env[t]["non_en_lo"] for t in tasks],
                    [env[t]["non_en_hi"] for t in tasks],
                ),
            }
            title = f"{src}-evaluated helpfulness of {labels.get(anchor.name, anchor.label)} (95% CI)"
            plot, plot_src = figures.tasks_png(tasks, series, title), src
    if plot is None:
        s.text = [f"No judged or rated rows with a task for the anchor run {anchor.name}."]
        return s
    s.figure = ("fig3_tasks.png", plot)
    s.text = [
        f"Anchor run: {anchor.name} ({labels.get(anchor.name, anchor.label)}); plotted: {plot_src} ratings."
    ]
    header = ["source", "task", "en", "non-en (mean fr/pt/ru)", "fr", "pt", "ru"]
    s.tables = [
        Table(
            "fig3_tasks", "Figure 3 right values (95% CI, n)", header, disp, raw, FAILED_NOTE, len(disp) > 30
        )
    ]
    return s


def _table1(mods: list[Row], models: list[str], labels: dict, rule: str, n_boot: int) -> Section:
    s = Section("table1", "Table 1: task modifiers — fulfilment and modifier-aware helpfulness")
    if not mods:
        s.text = ["No modifier rows in the shown runs."]
        return s
    failed = Counter(
        (r["run"], r["modifier_type"], r["lang"]) for r in mods if r.get("judge_status") == "failed"
    )
    mfailed = Counter(
        (r["run"], r["modifier_type"], r["lang"]) for r in mods if r.get("modifier_status") == "failed"
    )
    table = {
        (t["run"], t["modifier_type"], t["lang"]): t for t in agg.modifier_table(mods, ("run",), rule, n_boot)
    }
    types = list(dict.fromkeys(t[1] for t in table))
    disp, raw = [], []
    for run in models:
        avg: dict[tuple, list[float]] = {}
        for mt in types:
            fcells, hcells = [], []
            for lang in TABLE1_LANGS:
                t = table.get((run, mt, lang))
                if t is None:
                    fcells.append(Cell("–"))
                    hcells.append(Cell("–"))
                    continue
                key = (run, mt, lang)
                raw.append(
                    {
                        "run": run,
                        "model": labels[run],
                        **{k: v for k, v in t.items() if k != "run"},
                        "n_failed": failed[key],
                        "n_modifier_failed": mfailed[key],
                    }
                )
                fcells.append(
                    ci_cell(
                        t["fulfilled"],
                        t["fulfilled_lo"],
                        t["fulfilled_hi"],
                        t["n_checked"],
                        mfailed[key],
                        pct=True,
                    )
                )
                hcells.append(
                    ci_cell(
                        t["helpfulness"],
                        t["helpfulness_lo"],
                        t["helpfulness_hi"],
                        t["n_helpfulness"],
                        failed[key],
                    )
                )
                for what in ("fulfilled", "helpfulness"):
                    if t[what] is not None:
                        avg.setdefault((what, lang), []).append(t[what])
            if any(c.text != "–" for c in fcells + hcells):
                disp.append([labels[run], mt, *fcells, *hcells])
        if avg:
            mean = {k: float(np.mean(v)) for k, v in avg.items()}
            disp.append(
                [
                    labels[run],
                    "average (of the rows)",
                    *[Cell(_f(mean.get(("fulfilled", lang)), pct=True)) for lang in TABLE1_LANGS],
                    *[Cell(_f(mean.get(("helpfulness", lang)))) for lang in TABLE1_LANGS],
                ]
            )
    header = [
        "model",
        "modifier",
        *[f"fulfilled {x}" for x in TABLE1_LANGS],
        *[f"helpfulness {x}" for x in TABLE1_LANGS],
    ]
    s.text = [
        "Fulfilment: share of checked responses that follow the modifier. Helpfulness (0–2) is capped at 1 "
        "when the modifier is not fulfilled (judge_helpfulness_mod), averaged under the exclusion rule."
    ]
    note = FAILED_NOTE + " On fulfilment, † counts failed modifier checks."
    s.tables = [Table("table1", "Table 1 (95% CI, n)", header, disp, raw, note)]
    return s


def _fig5(human_raw: list[Row], rows: list[Row], runs_dir: Path) -> Section:
    s = Section("fig5", "Figure 5: agreement between human and judge ratings")
    if not human_raw:
        s.text = [
            "No human ratings given (--human). To produce them: "
            f"python -m evalsuite.human export --runs={runs_dir} --out=human/ ; have the human/annotate_<lang>.html "
            "pages rated; python -m evalsuite.human import --key=human/key.json --ratings=FILES "
            "--out=human/ratings.parquet ; then rerun this report with --human=human/ratings.parquet."
        ]
        return s
    table = agreement_table(human_raw, rows)
    panels, disp, raw = [], [], []
    for t in table:
        m = np.array(t["matrix"], dtype=float)
        kappa = "–" if t["kappa"] is None else f"{t['kappa']:.2f}"
        panels.append(
            figures.Panel(
                f"{t['criterion']} · {t['langs']}\nκ={kappa}, n={t['n']}",
                m if t["n"] else np.full((3, 3), np.nan),
                [[f"{v:.0f}%" if t["n"] else "" for v in row] for row in m],
                ["0", "1", "2"],
                ["0", "1", "2"],
                vmin=0,
                vmax=100,
                cmap="Blues",
                xlabel="human",
                ylabel="judge",
            )
        )
        disp.append(
            [
                t["criterion"],
                t["langs"],
                t["n"],
                _f(t["exact"], pct=True),
                kappa,
                *["/".join(f"{v:.0f}" for v in row) for row in m],
            ]
        )
        raw.append(
            {
                "criterion": t["criterion"],
                "langs": t["langs"],
                "n": t["n"],
                "exact": t["exact"],
                "kappa": t["kappa"],
                **{f"pct_judge{j}_human{h}": m[j, h] for j in range(3) for h in range(3)},
            }
        )
    s.figure = (
        "fig5.png",
        figures.heatmaps_png(
            panels, 4, "% of pairs rated X by the judge (rows) and Y by a human (columns)", colorbar=False
        ),
    )
    s.text = [
        "Pairs are (judge, human) scores of one response joined on (run, id); several annotators of one "
        "response give one pair each; failed judge items and unrated criteria are left out. κ = Cohen's "
        "kappa with linear weights |i−j|/2."
    ]
    header = [
        "criterion",
        "langs",
        "n",
        "exact",
        "weighted κ",
        "judge 0: human 0/1/2 %",
        "judge 1: human 0/1/2 %",
        "judge 2: human 0/1/2 %",
    ]
    s.tables = [Table("fig5", "Figure 5 values", header, disp, raw)]
    return s


def _summary(sections: list[Section], header: list[tuple[str, str]], banner: str) -> str:
    lines = [f"{k}: {v}" for k, v in header if k in ("runs", "judge")]
    if banner:
        lines.append(f"!! {banner}")
    tables = {t.name: t for s in sections for t in s.tables}
    if "fig2" in tables:
        hl = [r for r in tables["fig2"].csv_rows if r["criterion"] in ("helpfulness", "language")]
        wide: dict[tuple, Row] = {}
        for r in hl:
            w = wide.setdefault((r["source"], r["model"]), {"source": r["source"], "model": r["model"]})
            w[f"{r['criterion'][:4]}_{r['langs']}"] = _f(r["mean"])
        cols = ["source", "model", "help_en", "help_non_en", "lang_en", "lang_non_en"]
        lines += ["", "Figure 2 (means, 0-2):", agg.format_table(list(wide.values()), cols)]
    if "runs" in tables:
        chosen = [r for r in tables["runs"].csv_rows if r["chosen"]]
        lines += ["", "chosen LR per group:"] + [
            f"  {r['group']}: {_lr(r['lr'])} ({r['run']})" for r in chosen
        ]
    return "\n".join(lines)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(data: bytes, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Report, out_dir: Path) -> Path:
    """Writes PNGs, CSVs, report.md and index.html (last), each atomically; returns index.html's path."""
    files: dict[str, bytes] = {}
    for s in report.sections:
        if s.figure:
            files[s.figure[0]] = s.figure[1]
        for t in s.tables:
            files[f"{t.name}.csv"] = csv_text(t).encode()
    files["report.md"] = markdown_report(report.title, report.banner, report.header, report.sections).encode()
    files["index.html"] = html_page(report.title, report.banner, report.header, report.sections).encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():  # dicts keep order: index.html is written last
        _atomic_write(data, out_dir / name)
    return out_dir / "index.html"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        human = Path(FLAGS.human) if FLAGS.human else None
        report = build_report(Path(FLAGS.runs), human, FLAGS.rule, FLAGS.n_boot)
        index = write_report(report, Path(FLAGS.out))
    except (ReportError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.summary)
    print(f"\nreport: {index.resolve()}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["runs", "out"])
    app.run(main)
