"""The report, built: reads a runs directory and lays out the paper's Figures 2-5 and Table 1
(`build_report`), and writes it (`write_report`). `python -m reporting.report` is the CLI; what the report
shows is described there and in docs/results.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from evalsuite import aggregate as agg
from evalsuite.calibration import card_status
from records.files import atomic_write_bytes
from reporting import report_sections as sec
from reporting.report_data import (
    ReportError,
    Row,
    Run,
    choose_runs,
    is_paper,
    load_human,
    load_judge,
    load_rows,
    load_runs,
    load_validation,
    relevance_model,
)
from reporting.report_html import Section, csv_text, html_page, markdown_report

__all__ = [
    "DEMO_BANNER",
    "Report",
    "ReportError",
    "Run",
    "build_report",
    "is_paper",
    "load_rows",
    "write_report",
]

DEMO_BANNER = "demo judge — a small local model, not a real judge; scores illustrate the pipeline only"


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
    lr_metrics: Sequence[str] | None = None,
) -> Report:
    """Reads the runs directory (and ratings) and lays out every figure and table of the report.

    `lr_metrics`: the surface metrics of the LR choice (None: the paper's three, strict; see choose_runs).
    """
    judge = load_judge(runs_dir)
    runs, notes = load_runs(runs_dir, skip=out_dir)
    by_name = {r.name: r for r in runs}
    rows = [row for r in runs if r.scored for row in load_rows(r)]
    paper = [r for r in rows if is_paper(r)]
    surface = agg.surface_table(paper, ("group", "lr", "lang"), n_boot)
    try:
        lr_metrics = agg.parse_lr_metrics(lr_metrics)
    except agg.LRChoiceError as e:
        raise ReportError(str(e)) from None
    chosen, choose_notes, choices = choose_runs(runs, paper, lr_metrics)
    notes += choose_notes
    for r in runs:
        if r.scored:
            measured = any(x.get("relevance") is not None for x in rows if x["run"] == r.name)
            r.relevance_model = relevance_model(r, judge, measured)
    lr_text = agg.lr_rule_text(lr_metrics, lr_metrics is not None)
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

    top = sec.lang_vs_lr(surface, runs)
    curves = sec.validation_curves([row for r in runs for row in load_validation(r)])
    sections = [
        *([top] if top is not None else []),
        *([curves] if curves is not None else []),
        sec.runs_section(runs, chosen_names, rows, notes, labels),
        *sec.fig2_fig4(sources, models, labels, rule, n_boot, judged),
        sec.fig3_surface(surface, runs, chosen, lr_text),
        sec.fig3_tasks(sources, anchor, labels, rule, n_boot),
        sec.table1(
            [r for r in rows if r.get("modifier_type") and r["run"] in chosen_names],
            models,
            labels,
            rule,
            n_boot,
        ),
        sec.fig5(human_raw, rows, paper, runs_dir),
    ]
    calibration = ""
    if judge["kind"] != "none" and judged:  # judge figures count only with a passing calibration card
        trusted, calibration = card_status(runs_dir, judge["spec"])
        if not trusted:
            sections = grey_judge_sections(sections, calibration)
    n_scored = sum(r.scored for r in runs)
    header = [
        ("runs", f"{runs_dir} — {len(runs)} runs, {n_scored} scored, {len(runs) - n_scored} not scored yet"),
        (
            "judge",
            f"{judge['spec']} (kind: {judge['kind']})"
            + (f" — {judge['note']}" if judge["note"] else "")
            + (f" — {calibration}" if calibration else ""),
        ),
        (
            "relevance model",
            sec.relevance_models_text(runs, judge["relevance"])
            + (f" — {judge['relevance_note']}" if judge["relevance_note"] else ""),
        ),
        ("protocol", sec.protocols_text(runs)),
        ("LR choice", lr_text + ("" if choices else " — no group has several scored LRs")),
        ("human ratings", str(human_path) if human_path else "none"),
        ("exclusion rule", sec.rule_text(rule)),
        ("bootstrap", f"95% percentile CIs, {n_boot} resamples, seed 0"),
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    banner = DEMO_BANNER if judge["kind"] == "demo" else ""
    summary = sec.summary_text([s for s in sections if not s.greyed], header, banner)
    return Report("xlit report: zero-shot cross-lingual transfer", banner, header, sections, summary)


JUDGE_SECTIONS = ("fig2", "fig4", "fig3_tasks", "table1")  # sections whose figures come from the judge


def grey_judge_sections(sections: list[Section], heading: str) -> list[Section]:
    """The judge's sections moved after the trusted ones, greyed, under `heading` (an untrusted judge:
    no passing calibration card, see docs/evalsuite.md "Judge calibration")."""
    judge = [s for s in sections if s.anchor in JUDGE_SECTIONS]
    if not judge:
        return sections
    for s in judge:
        s.greyed = True
    note = Section(
        "untrusted_judge",
        heading,
        [
            "The figures below come from a judge without a passing calibration card "
            "(<runs>/calibration/card.json, written by python -m study.calibrate): they are shown for "
            "inspection only, greyed, and are not results."
        ],
    )
    return [s for s in sections if s.anchor not in JUDGE_SECTIONS] + [note, *judge]


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
        atomic_write_bytes(data, out_dir / name)
    return out_dir / "index.html"
