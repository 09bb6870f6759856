"""The main job on the embedded default (what `make demo` runs): a small grid, scored and reported.

    python -m evalsuite.demo [--workdir=runs/demo] [--tasks=3 --modifiers=1 --max_new_tokens=48 --steps=6]
                             [--nobase] [--judge=auto|demo|none|openai:MODEL] [--max_cost_usd=0.5]

What it runs (evalsuite.grid, layout of docs/results.md, stage by stage):
  train     configs/smollm2.py (SmolLM2-135M-Instruct, LoRA on the shipped Dolly subset) at lr 1e-4 for
            --steps steps (the config's 12 shortened to 6);
  generate  for that run and the untuned base model (`smollm2-base`), a task-balanced subset: one item
            from each of --tasks tasks spread over the 25 (data/eval/tasks.json), plus --modifiers
            modifier items of distinct types, the same items in en/fr/pt/ru (3×4 + 1×4 = 16 prompts),
            greedy with repetition penalty 1.1, --max_new_tokens tokens;
  score     surface metrics (fastText language, Hunspell spelling, modifier checks), relevance and the
            6-criterion judge: with $OPENAI_API_KEY set, gpt-3.5-turbo-0125 (cost capped by
            --max_cost_usd); otherwise SmolLM2 itself behind `python -m infer.server` — a demo judge,
            labelled "demo judge (not a real judge)" in runs/demo/judge.json and the report, decoding
            under a JSON schema (six keys, integers 1..3) so that its replies always parse;
  report    `python -m evalsuite.report --runs=runs/demo --out=runs/demo/report` when evalsuite/report.py
            exists; then a one-screen summary table here.
Rerunning skips every finished stage (a crash resumes); --workdir elsewhere starts afresh.

Measured time on this machine (2 CPU cores shared with other jobs, load average ~3.8, XLA cache cold for
inference): 13m39s wall — train 184 s (11 s/step; 5.5 s/step when quiet), generation 80 s + 85 s, scoring
279 s + 175 s (server start, one judge batch of 16 in 165 s incl. compilation, one relevance batch in 78 s),
report 7 s. On a quiet machine the same steps take about half (~7 minutes; train alone 88 s measured).
Decode speed measured here: ~15 tok/s at batch 1, ~43 tok/s at batch 16 (quiet machine), which is why the
subset is 16 prompts (one batch) × 48 tokens. Expected result: every stage done, runs/demo/report/index.html,
the summary table (language correctness, spelling, relevance per run × language; the tuned run sometimes
answers a French prompt in English), and "judge replies parsed 32/32 (100%)": the demo judge decodes under
a JSON schema (measured on the demo's 32 answers: JSON mode 0/32 judge replies parse, free-text relevance 1/32;
with the schemas 32/32 and 32/32); its scores are not meaningful.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from absl import app, flags

from beam_pipelines.files import read_table
from evalsuite import aggregate as agg
from evalsuite import grid_plan as gp
from evalsuite.grid_run import Grid, GridOptions, StageResult

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The demo's flags, defined only when it runs as a program: importing this module (tests, other
    tools) must not clash with flags of the same name elsewhere (train.main also has --workdir)."""
    flags.DEFINE_string("workdir", "runs/demo", "Runs directory of the demo grid.")
    flags.DEFINE_integer("tasks", 3, "Tasks in the subset (one item each, same items in every language).")
    flags.DEFINE_integer("modifiers", 1, "Modifier items per language (distinct types).")
    flags.DEFINE_integer("max_new_tokens", 48, "Generation budget per response.")
    flags.DEFINE_integer("steps", 6, "Training steps (configs/smollm2.py has 12).")
    flags.DEFINE_float("lr", 1e-4, "Learning rate of the LoRA run.")
    flags.DEFINE_bool("base", True, "Also evaluate the untuned base SmolLM2 (--nobase saves ~2 minutes).")
    flags.DEFINE_string(
        "judge", "auto", "auto (openai if $OPENAI_API_KEY is set, else demo) | demo | none | openai:MODEL"
    )
    flags.DEFINE_float("max_cost_usd", 0.5, "Cost cap per scoring run with an OpenAI judge.")
    flags.DEFINE_string("cache_dir", "~/.cache/xlit/judge", "LLM reply cache.")


OPENAI_DEFAULT = "openai:gpt-3.5-turbo-0125"


def options() -> GridOptions:
    judge = FLAGS.judge
    if judge == "auto":
        judge = OPENAI_DEFAULT if os.environ.get("OPENAI_API_KEY") else "demo"
    return GridOptions(
        configs=["configs/smollm2.py"],
        lrs=[FLAGS.lr],
        workdir=FLAGS.workdir,
        judge=judge,
        subset=f"tasks={FLAGS.tasks},modifiers={FLAGS.modifiers}",
        max_new_tokens=FLAGS.max_new_tokens,
        include_base=FLAGS.base,
        overrides=[f"train.steps={FLAGS.steps}", f"checkpoint.save_every={FLAGS.steps}"],
        cache_dir=FLAGS.cache_dir,
        max_cost_usd=FLAGS.max_cost_usd if judge.startswith("openai") else None,
        concurrency=16,
    )


def run_report(workdir: Path, rule: str = "judge") -> tuple[str, float]:
    """evalsuite.report into <workdir>/report if the module exists; (message, seconds).

    With the demo judge the correct-language decision of the exclusion rule is fastText's (`rule`
    "fasttext"): SmolLM2 as a judge rates nearly every answer as being in the wrong language, which under
    the paper's rule would leave every other criterion empty."""
    if importlib.util.find_spec("evalsuite.report") is None:
        return "evalsuite/report.py is not there yet: report skipped (the runs are complete)", 0.0
    out = workdir / "report"
    t0 = time.time()
    cmd = [sys.executable, "-m", "evalsuite.report", f"--runs={workdir}", f"--out={out}", f"--rule={rule}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    dt = time.time() - t0
    if proc.returncode != 0:
        return f"report FAILED (exit {proc.returncode}): {proc.stderr.strip()[-800:]}", dt
    pages = sorted(out.glob("*.html"))
    return f"report: {pages[0] if pages else out}", dt


def load_rows(grid: Grid) -> list[dict[str, Any]]:
    rows = []
    for run in grid.runs:
        path = gp.RunDir(grid.workdir, run.name).scores
        if path.exists():
            rows += read_table(path).to_pylist()
    return rows


def summary_table(rows: list[dict[str, Any]], rule: str = "judge") -> str:
    """Per run × language: n, surface metrics, judge helpfulness and the judge's parse-success rate."""
    paper = [r for r in rows if r.get("eval_set") == "paper"]
    helpful = {
        (r["model"], r["lang"]): r
        for r in agg.criteria_table(paper, ("model", "lang"), rule=rule, n_boot=200)
        if r["criterion"] == "helpfulness"
    }
    head = f"{'run':<20}{'lang':<6}{'n':>3}{'lang_ok':>9}{'spell_ok':>10}{'relevant':>10}{'helpful':>9}{'judged':>8}"
    out = [head, "-" * len(head)]
    for s in agg.surface_table(paper, ("model", "lang"), n_boot=200):
        group = [r for r in paper if r["model"] == s["model"] and r["lang"] == s["lang"]]
        judged = sum(r["judge_status"] == "ok" for r in group)
        h = helpful.get((s["model"], s["lang"]), {}).get("mean")
        out.append(
            f"{s['model']:<20}{s['lang']:<6}{s['n']:>3}{agg.fmt(s['lang_correct']):>9}"
            f"{agg.fmt(s['spell_ok_rate']):>10}{agg.fmt(s['relevance']):>10}{agg.fmt(h):>9}{judged:>5}/{len(group)}"
        )
    mods = [r for r in rows if r.get("modifier_type")]
    if mods:
        ok = [r["modifier_ok"] for r in mods if r.get("modifier_ok") is not None]
        out.append(f"modifiers: {len(mods)} responses, fulfilled {sum(ok)}/{len(ok)} checked")
    return "\n".join(out)


def judge_rates(rows: list[dict[str, Any]]) -> str:
    parts = []
    for col, name in (("judge_status", "judge"), ("relevance_status", "relevance")):
        st = [r[col] for r in rows if r.get(col) in ("ok", "failed")]
        if st:
            parts.append(
                f"{name} replies parsed {st.count('ok')}/{len(st)} ({100 * st.count('ok') / len(st):.0f}%)"
            )
    return "; ".join(parts) or "no judge"


def main(argv: list[str]) -> None:
    del argv
    t0 = time.time()
    try:
        grid = Grid(options())
    except gp.GridError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"xlit demo: {len(grid.runs)} runs, {len(grid.records)} prompts each, judge {grid.judges.spec} -> {grid.workdir}/"
    )
    results = grid.run()
    rule = "fasttext" if grid.judges.kind == "demo" else "judge"
    report_msg, report_s = run_report(grid.workdir, rule)
    results.append(StageResult("(all)", "report", "ran" if report_s else "skipped", report_s))
    rows = load_rows(grid)
    print(f"\n== Summary (paper evaluation subset; judge: {grid.judges.spec}, {grid.judges.kind}) ==")
    print(summary_table(rows, rule))
    print(f"judge: {judge_rates(rows)}")
    if grid.judges.kind == "demo":
        print(
            "note: demo judge (not a real judge) — SmolLM2 judging itself; only the pipeline is shown; "
            "correct language decided by fastText (--rule=fasttext)"
        )
    print(f"\n== Wall time ==\n{'run':<22}{'stage':<10}{'status':<9}{'seconds':>8}")
    for r in results:
        print(f"{r.run:<22}{r.stage:<10}{r.status:<9}{r.seconds:>8.1f}")
    print(f"{'total':<41}{time.time() - t0:>8.1f}")
    print(f"\nruns: {grid.workdir}/   {report_msg}")
    if any(r.status == "failed" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
