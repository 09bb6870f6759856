r"""Prints the paper's tables from one or more score files (output of evalsuite.score).

  python -m evalsuite.summary --scores=a.parquet,b.parquet [--rule=judge|fasttext] [--output_json=t.json]

Rows are grouped by the `model` column (or the file name when there is none). Main-criteria, task and
surface tables use the paper's evaluation set (eval_set == "paper", or every row without a modifier when
there is no eval_set column); the modifier table uses the modifier rows. With an `lr` column, the LR chosen
by `aggregate.select_lr` is printed per model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from absl import app, flags

from beam_pipelines.files import RecordError, atomic_write_text, read_table
from evalsuite import aggregate as agg

FLAGS = flags.FLAGS
flags.DEFINE_list("scores", None, "Score files (Parquet) written by evalsuite.score.")
flags.DEFINE_enum("rule", "judge", ["judge", "fasttext"], "Correct-language decision for the exclusion rule.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the 95% CIs.")
flags.DEFINE_string("model_key", "model", "Column naming the model configuration.")
flags.DEFINE_string("lr_key", "lr", "Column holding the learning rate (LR selection is printed if present).")
flags.DEFINE_string("output_json", None, "Also write every table as JSON here.")


def load_scores(paths: list[str], model_key: str = "model") -> list[dict[str, Any]]:
    rows = []
    for p in paths:
        table = read_table(p)
        for col in ("lang", "judge_status", "lang_correct"):
            if col not in table.column_names:
                raise RecordError(f"{p}: missing column {col!r}; is this an evalsuite.score output?")
        for r in table.to_pylist():
            if r.get(model_key) is None:
                r[model_key] = Path(p).stem
            rows.append(r)
    return rows


def _ci(mean_key: str, lo_key: str, hi_key: str):
    return lambda r: f"{agg.fmt(r[mean_key])} [{agg.fmt(r[lo_key])},{agg.fmt(r[hi_key])}]"


def build_tables(
    rows: list[dict[str, Any]], rule: str, n_boot: int, model_key: str, lr_key: str
) -> dict[str, Any]:
    def is_paper(r: dict[str, Any]) -> bool:
        return r.get("eval_set") == "paper" if "eval_set" in r else not r.get("modifier_type")

    paper = [r for r in rows if is_paper(r)]
    mods = [r for r in rows if r.get("modifier_type")]
    judged = any(r.get("judge_status") in ("ok", "failed") for r in paper)
    tables: dict[str, Any] = {}
    if judged:
        tables["main_en_vs_nonen"] = agg.en_vs_nonen(paper, (model_key,), rule, n_boot)
        tables["main_per_language"] = agg.criteria_table(paper, (model_key, "lang"), rule, n_boot)
        tables["helpfulness_per_task"] = agg.task_table(paper, "helpfulness", (model_key,), rule, n_boot)
    if mods:
        tables["modifiers"] = agg.modifier_table(mods, (model_key,), rule, n_boot)
    has_lr = any(r.get(lr_key) is not None for r in paper)
    keys = (model_key, lr_key, "lang") if has_lr else (model_key, "lang")
    tables["surface"] = agg.surface_table(paper, keys, n_boot)
    if has_lr:
        chosen = {}
        for (model,), srows in agg.group_rows(tables["surface"], (model_key,)).items():
            try:
                chosen[str(model)] = agg.select_lr(srows, lr_key=lr_key)
            except ValueError as e:
                chosen[str(model)] = f"n/a ({e})"
        tables["selected_lr"] = chosen
    return tables


def render(tables: dict[str, Any], model_key: str, lr_key: str) -> str:
    out = []
    if "main_en_vs_nonen" in tables:
        out.append("== Judge criteria, en vs mean(fr,pt,ru) (0-2, 95% CI) [Figure 2] ==")
        out.append(
            agg.format_table(
                tables["main_en_vs_nonen"],
                [model_key, "criterion", "en", "non_en"],
                {"en": _ci("en", "en_lo", "en_hi"), "non_en": _ci("non_en", "non_en_lo", "non_en_hi")},
            )
        )
        out.append("\n== Judge criteria per language [Figure 4] ==")
        out.append(
            agg.format_table(
                tables["main_per_language"],
                [model_key, "lang", "criterion", "mean", "n", "n_failed", "n_wrong_lang"],
                {"mean": _ci("mean", "lo", "hi")},
            )
        )
        out.append("\n== Helpfulness per task [Figure 3 right] ==")
        out.append(
            agg.format_table(
                tables["helpfulness_per_task"],
                [model_key, "task", "lang", "mean", "n"],
                {"mean": _ci("mean", "lo", "hi")},
            )
        )
    if "modifiers" in tables:
        out.append("\n== Task modifiers: fulfilment and helpfulness [Table 1] ==")
        out.append(
            agg.format_table(
                tables["modifiers"],
                [
                    model_key,
                    "modifier_type",
                    "lang",
                    "fulfilled",
                    "n_checked",
                    "helpfulness",
                    "n_helpfulness",
                ],
                {
                    "fulfilled": _ci("fulfilled", "fulfilled_lo", "fulfilled_hi"),
                    "helpfulness": _ci("helpfulness", "helpfulness_lo", "helpfulness_hi"),
                },
            )
        )
    surface = tables["surface"]
    cols = [c for c in (model_key, lr_key, "lang") if surface and c in surface[0]]
    out.append("\n== Surface metrics [Figure 3 left] ==")
    out.append(
        agg.format_table(
            surface,
            [*cols, "n", *agg.SURFACE_METRICS, "code_switch_rate"],
            {m: _ci(m, f"{m}_lo", f"{m}_hi") for m in (*agg.SURFACE_METRICS, "code_switch_rate")},
        )
    )
    if "selected_lr" in tables:
        out.append("\n== LR chosen from surface metrics (maximin rule) ==")
        out += [f"{m}: {lr}" for m, lr in tables["selected_lr"].items()]
    return "\n".join(out)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        rows = load_scores(FLAGS.scores, FLAGS.model_key)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    tables = build_tables(rows, FLAGS.rule, FLAGS.n_boot, FLAGS.model_key, FLAGS.lr_key)
    print(render(tables, FLAGS.model_key, FLAGS.lr_key))
    if FLAGS.output_json:
        atomic_write_text(json.dumps(tables, indent=1, default=str), FLAGS.output_json)


if __name__ == "__main__":
    flags.mark_flags_as_required(["scores"])
    app.run(main)
