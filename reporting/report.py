r"""The report: the paper's Figures 2-5 and Table 1 from a runs directory (docs/results.md).

  python -m reporting.report --runs=runs/ --out=report/ [--human=ratings.parquet] [--rule=judge|fasttext]
      [--n_boot=1000] [--lr_metrics=lang_correct,spell_ok_rate]

Reads runs/judge.json, runs/*/run.json and runs/*/scores.parquet (a run without scores is listed as "not
scored yet") and optional human ratings (reporting.annotate import). Writes into --out: fig*.png, one CSV per
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

from pathlib import Path

from absl import app, flags

from records.cli import expected_errors
from reporting.build import build_report, write_report

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", None, "Runs directory (docs/results.md).")
flags.DEFINE_string("out", None, "Output folder for the report.")
flags.DEFINE_string("human", None, "Human ratings Parquet (output of `reporting.annotate import`).")
flags.DEFINE_enum("rule", "judge", ["judge", "fasttext"], "Correct-language decision for the exclusion rule.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the 95% CIs.")
flags.DEFINE_list(
    "lr_metrics",
    None,
    "Surface metrics of the LR choice (default: the paper's lang_correct, spell_ok_rate, relevance, each "
    "needed for every LR). Name them to choose without one, e.g. lang_correct,spell_ok_rate when no relevance "
    "model was run.",
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    human = Path(FLAGS.human) if FLAGS.human else None
    report = build_report(
        Path(FLAGS.runs), human, FLAGS.rule, FLAGS.n_boot, Path(FLAGS.out), FLAGS.lr_metrics
    )
    index = write_report(report, Path(FLAGS.out))
    print(report.summary)
    print(f"\nreport: {index.resolve()}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["runs", "out"])
    app.run(expected_errors(main))
