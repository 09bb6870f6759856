"""The main job on the embedded default (what `make demo` runs): the paper's LR finding, small, scored and reported.

    python -m study.demo [--workdir=runs/demo] [--judge=auto|none|openai:MODEL] [--max_cost_usd=0.5]

What it runs: the `demo` preset of `python -m study.replicate` (docs/replication.md), one study.grid in the
layout of docs/results.md, stage by stage:
  train     SmolLM2-135M-Instruct, full fine-tuning on the shipped English Dolly subset at a moderate and a
            high LR (1e-4, 1e-3; released protocol: clip 1.0, linear decay, length-sorted padded batches),
            6 steps of 1024 tokens each;
  generate  for both runs and the untuned SmolLM2 (`smollm2-ft-base`), one item of each of 8 of the 25 tasks
            in en/fr/pt/ru (32 prompts, one batch), greedy, repetition penalty 1.2 (the protocol's), 32 new
            tokens;
  score     surface metrics (fastText language and code-switching, Hunspell spelling); with $OPENAI_API_KEY
            set also the paper's judge (gpt-3.5-turbo-0125, cost capped by --max_cost_usd);
  calibrate the judge a user without a key would get (SmolLM2 behind `python -m infer.serve`, the "demo
            judge") is run on study.calibrate's controls; its verdict is printed, and a judge without a
            passing card never has its scores shown as results;
  report    `python -m reporting.report --runs=runs/demo --out=runs/demo/report`; then one screen here:
            language correctness per language against LR with 95% CIs (the paper's Sec. 5.3 question).
Rerunning skips every finished stage (a crash resumes); --workdir elsewhere starts afresh.

Measured from a fresh clone on a 2-core AVX2 machine, quiet (2026-12-03, at fe66fcd): 5m00s wall (train
88 + 84 s, generate 27-28 s per run, calibration 39 s); at 6874d63 on the same machine, 5m27s (train 90 +
86 s, generate 31-33 s, calibration 45 s). Expected result: language correctness outside
English falls at lr 1e-3 (e.g. fr 0.62 untuned, 0.50 at 1e-4, 0.12 at 1e-3; n = 8 per cell) while English
stays at 1.00, and "judge calibration: FAIL" for the demo judge, whose scores are therefore not shown.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

from evalsuite import calibration
from records.cli import expected_errors
from study import replicate
from study.demo_steps import calibrate_judge, judge_rates, load_rows, options, run_report, summary_table
from study.grid_run import Grid, StageResult

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Runs directory of the demo grid.")
flags.DEFINE_string(
    "judge", "auto", "auto (openai if $OPENAI_API_KEY is set, else none) | none | openai:MODEL"
)
flags.DEFINE_float("max_cost_usd", 0.5, "Cost cap per scoring run with an OpenAI judge.")
flags.DEFINE_string("cache_dir", "~/.cache/xlit/judge", "LLM reply cache.")


def main(argv: list[str]) -> None:
    del argv
    t0 = time.time()
    grid = Grid(options(FLAGS.workdir, FLAGS.judge, FLAGS.cache_dir, FLAGS.max_cost_usd))
    print(
        f"xlit demo: {len(grid.runs)} runs, {len(grid.records)} prompts each, judge {grid.judges.spec} -> {grid.workdir}/"
    )
    results = grid.run()
    results.append(calibrate_judge(grid.workdir, grid.judges.kind, grid.judges.spec, grid.opts.cache_dir))
    card = calibration.load_card(grid.workdir)
    judge_trusted = calibration.card_status(grid.workdir, grid.judges.spec)[0] and grid.judges.kind != "none"
    rule = "fasttext" if grid.judges.kind in ("demo", "none") else "judge"
    report_msg, report_s = run_report(grid.workdir, rule)
    results.append(StageResult("(all)", "report", "ran" if report_s else "skipped", report_s))
    rows = load_rows(grid)
    print("\n== The paper's LR finding, small: SmolLM2 full FT on English Dolly, untuned vs two LRs ==")
    try:
        entries = replicate.table(replicate.load_scores(grid.workdir, grid.runs), n_boot=1000)
        print("\n".join(replicate.summary_lines(entries)))
    except FileNotFoundError as e:
        print(f"(no table: {e})")
    print(f"\n== Per run and language (judge: {grid.judges.spec}, {grid.judges.kind}) ==")
    print(summary_table(rows, rule, judge_trusted))
    print(f"judge: {judge_rates(rows)}")
    print("\n== Judge calibration (study.calibrate; docs/evalsuite.md) ==")
    if card is None:
        print("no calibration card: judge scores are not results")
    else:
        print(calibration.verdict_line(card))
        print(f"card: {grid.workdir / 'calibration' / 'card.md'}")
        if not judge_trusted:
            print("judge scores are not shown as results: no judge with a passing calibration card")
    print(f"\n== Wall time ==\n{'run':<22}{'stage':<10}{'status':<9}{'seconds':>8}")
    for r in results:
        print(f"{r.run:<22}{r.stage:<10}{r.status:<9}{r.seconds:>8.1f}")
    print(f"{'total':<41}{time.time() - t0:>8.1f}")
    print(f"\nruns: {grid.workdir}/   {report_msg}")
    if any(r.status == "failed" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    app.run(expected_errors(main))
