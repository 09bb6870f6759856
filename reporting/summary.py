r"""Prints the paper's tables from one or more score files (output of evalsuite.score).

  python -m reporting.summary --scores=a.parquet,b.parquet [--rule=judge|fasttext] [--output_json=t.json]
      [--lr_metrics=lang_correct,spell_ok_rate]

Rows are grouped by the `model` column (or the file name when there is none). Main-criteria, task and
surface tables use the paper's evaluation set (eval_set == "paper", or every row without a modifier when
there is no eval_set column); the modifier table uses the modifier rows. With an `lr` column, the LR chosen
by `aggregate.choose_lr` is printed per model with the metrics it used (by default the paper's three, each
needed for every LR: a missing one prints an error naming it and the runs instead of an LR; --lr_metrics
names the metrics to use). The header names, per score file, its run, protocol and decoding (run.json next to
a grid's <run>/scores.parquet) and the model that scored relevance (report_data.relevance_model_of, falling
back to runs/judge.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from absl import app, flags

from evalsuite import aggregate as agg
from evalsuite.calibration import card_status
from records.cli import expected_errors
from records.files import RecordError, atomic_write_text, read_table
from reporting.report_data import (
    NO_PROTOCOL,
    is_paper,
    model_name,
    protocol_text,
    relevance_model_of,
)

FLAGS = flags.FLAGS
flags.DEFINE_list("scores", None, "Score files (Parquet) written by evalsuite.score.")
flags.DEFINE_enum("rule", "judge", ["judge", "fasttext"], "Correct-language decision for the exclusion rule.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the 95% CIs.")
flags.DEFINE_string("model_key", "model", "Column naming the model configuration.")
flags.DEFINE_string("lr_key", "lr", "Column holding the learning rate (LR selection is printed if present).")
flags.DEFINE_string("output_json", None, "Also write every table as JSON here.")
flags.DEFINE_list(
    "lr_metrics",
    None,
    "Surface metrics of the LR choice (default: the paper's lang_correct, spell_ok_rate, relevance, each "
    "needed for every LR), e.g. lang_correct,spell_ok_rate when no relevance model was run.",
)

SOURCE = "_source"  # row key: the run (folder of a grid's scores.parquet) or file stem the row comes from


def source_name(path: str | Path) -> str:
    p = Path(path)
    return p.parent.name if p.name == "scores.parquet" and p.parent.name else p.stem


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def file_info(path: str | Path, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run, protocol and relevance model of one score file, from what lies next to it (defensively)."""
    p = Path(path)
    run_json = p.parent / "run.json"
    info = _read_json(run_json) if run_json.exists() else {}
    decode = info.get("decode") if isinstance(info.get("decode"), dict) else None
    protocol = info.get("protocol") if isinstance(info.get("protocol"), str) else None
    judge = _read_json(p.parent.parent / "judge.json")
    models = judge.get("models") if isinstance(judge.get("models"), dict) else None
    spec = str(judge.get("spec") or "")
    if models is not None:
        fallback = model_name(models.get("relevance"), spec)
    elif "relevance_model" in judge:
        fallback = model_name(judge["relevance_model"], spec)
    else:
        fallback = f"unknown (not recorded with {p}, and no ../judge.json naming it)"
    measured = rows is None or any(r.get("relevance") is not None for r in rows)
    relevance = relevance_model_of(p, spec, fallback) if measured else "none (relevance not scored)"
    if measured and relevance == "none":
        relevance = "unknown (relevance scored, but the record names no model)"
    return {
        "file": str(p),
        "run": source_name(p),
        "protocol": protocol,
        "decode": decode,
        "protocol_text": protocol_text(protocol, decode) if run_json.exists() else NO_PROTOCOL,
        "relevance_model": relevance,
    }


def load_scores(paths: list[str], model_key: str = "model") -> list[dict[str, Any]]:
    """Rows of every score file, each tagged with its source (SOURCE) and, if missing, its model."""
    rows = []
    for p in paths:
        table = read_table(p)
        for col in ("lang", "judge_status", "lang_correct"):
            if col not in table.column_names:
                raise RecordError(f"{p}: missing column {col!r}; is this an evalsuite.score output?")
        for r in table.to_pylist():
            if r.get(model_key) is None:
                r[model_key] = Path(p).stem
            r[SOURCE] = source_name(p)
            rows.append(r)
    return rows


def _ci(mean_key: str, lo_key: str, hi_key: str):
    return lambda r: f"{agg.fmt(r[mean_key])} [{agg.fmt(r[lo_key])},{agg.fmt(r[hi_key])}]"


def build_tables(
    rows: list[dict[str, Any]],
    rule: str,
    n_boot: int,
    model_key: str,
    lr_key: str,
    lr_metrics: list[str] | None = None,
) -> dict[str, Any]:
    """Every table of the summary; "selected_lr" maps a model to {"lr", "metrics", "rule"} or {"error"}."""

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
        chosen: dict[str, dict[str, Any]] = {}
        for (model,), srows in agg.group_rows(tables["surface"], (model_key,)).items():
            names: dict[Any, set[str]] = {}
            for r in paper:
                if r.get(model_key) == model:
                    names.setdefault(r.get(lr_key), set()).add(str(r.get(SOURCE, model)))
            run_names = {lr: "+".join(sorted(n)) for lr, n in names.items()}
            try:
                c = agg.choose_lr(srows, lr_metrics, lr_key=lr_key, run_names=run_names)
                chosen[str(model)] = {"lr": c.lr, "metrics": list(c.metrics), "rule": c.describe()}
            except agg.LRChoiceError as e:
                chosen[str(model)] = {"error": str(e)}
        tables["selected_lr"] = chosen
    return tables


def header_lines(infos: list[dict[str, Any]]) -> list[str]:
    """Per score file: run, protocol (decode) and the relevance model; a warning when protocols differ."""
    lines = ["== Score files: run, protocol (decode), relevance model =="]
    for i in infos:
        lines.append(f"{i['run']}: protocol {i['protocol_text']}; relevance by {i['relevance_model']}")
    if len({i["protocol_text"] for i in infos}) > 1:
        lines.append("!! the score files differ in protocol: compare them with care")
    return lines


def render(
    tables: dict[str, Any], model_key: str, lr_key: str, infos: list[dict[str, Any]] | None = None
) -> str:
    out = [*header_lines(infos), ""] if infos else []
    if tables.get("judge_calibration") and "main_en_vs_nonen" in tables:  # no passing card: not results
        out.append(f"!! {tables['judge_calibration']} — the judge tables below are not results\n")
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
    rel_models = sorted({i["relevance_model"] for i in infos or []})
    rel = "; ".join(rel_models) if rel_models else "see the score files"
    out.append(f"\n== Surface metrics [Figure 3 left] (relevance by {rel}) ==")
    out.append(
        agg.format_table(
            surface,
            [*cols, "n", *agg.SURFACE_METRICS, "code_switch_rate"],
            {m: _ci(m, f"{m}_lo", f"{m}_hi") for m in (*agg.SURFACE_METRICS, "code_switch_rate")},
        )
    )
    if "selected_lr" in tables:
        out.append("\n== LR chosen from surface metrics (maximin rule) ==")
        for m, c in tables["selected_lr"].items():
            out.append(f"{m}: {c['lr']:g} ({c['rule']})" if "lr" in c else f"{m}: no LR chosen: {c['error']}")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rows = load_scores(FLAGS.scores, FLAGS.model_key)
    lr_metrics = agg.parse_lr_metrics(FLAGS.lr_metrics)
    infos = [file_info(p, [r for r in rows if r[SOURCE] == source_name(p)]) for p in FLAGS.scores]
    tables = build_tables(
        rows, FLAGS.rule, FLAGS.n_boot, FLAGS.model_key, FLAGS.lr_key, list(lr_metrics or []) or None
    )
    tables["score_files"] = infos
    trust = [card_status(Path(p).resolve().parent.parent) for p in FLAGS.scores]  # <runs>/calibration/
    tables["judge_calibration"] = next((head for ok, head in trust if not ok), None)
    print(render(tables, FLAGS.model_key, FLAGS.lr_key, infos))
    if FLAGS.output_json:
        atomic_write_text(json.dumps(tables, indent=1, default=str), FLAGS.output_json)


if __name__ == "__main__":
    flags.mark_flags_as_required(["scores"])
    app.run(expected_errors(main))
