r"""The report: the paper's Figures 2-5 and Table 1 from a runs directory (docs/results.md).

  python -m reporting.report --runs=runs/ --out=report/ [--human=ratings.parquet] [--rule=judge|fasttext]
      [--n_boot=1000] [--lr_metrics=lang_correct,spell_ok_rate]

Reads runs/judge.json, runs/*/run.json and runs/*/scores.parquet (a run without scores is listed as "not
scored yet") and optional human ratings (reporting.human import). Writes into --out: fig*.png, one CSV per
table (fig2, fig3_surface, fig3_tasks, fig4, table1, fig5, runs), report.md and a self-contained
index.html. Every file is written atomically (temporary file + rename), index.html last.

Models of Figures 2 and 4 and Table 1 are the runs at the chosen LR of each group (aggregate.choose_run_lr on
the surface metrics: by default the paper's three, each needed for every LR of the group, else the report stops
with an error naming the metric and the runs; --lr_metrics names the metrics to use instead). The header, the
summary and the runs table state the LR metrics, the relevance model and each run's protocol. Figure 3 right is the anchor run (run.json "anchor", else the first model). All
numbers come from evalsuite.aggregate / evalsuite.agreement. Runs whose train/metrics.jsonl has validation lines
(train/validate.py) add "language correctness vs training step" curves after the top section.
Modules: report_data (reading, LR choice), report_sections (the figures and tables), figures (matplotlib), report_html (CSV, markdown, HTML).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from absl import app, flags

from evalsuite import aggregate as agg
from evalsuite.calibration import card_status
from records.files import RecordError
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

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", None, "Runs directory (docs/results.md).")
flags.DEFINE_string("out", None, "Output folder for the report.")
flags.DEFINE_string("human", None, "Human ratings Parquet (output of `reporting.human import`).")
flags.DEFINE_enum("rule", "judge", ["judge", "fasttext"], "Correct-language decision for the exclusion rule.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the 95% CIs.")
flags.DEFINE_list(
    "lr_metrics",
    None,
    "Surface metrics of the LR choice (default: the paper's lang_correct, spell_ok_rate, relevance, each "
    "needed for every LR). Name them to choose without one, e.g. lang_correct,spell_ok_rate when no relevance "
    "model was run.",
)

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
        report = build_report(
            Path(FLAGS.runs), human, FLAGS.rule, FLAGS.n_boot, Path(FLAGS.out), FLAGS.lr_metrics
        )
        index = write_report(report, Path(FLAGS.out))
    except (ReportError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.summary)
    print(f"\nreport: {index.resolve()}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["runs", "out"])
    app.run(main)
