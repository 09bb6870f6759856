r"""The grid runner: train → generate → score for every config × learning rate (docs/results.md).

  python -m study.grid --configs=configs/A.py[:args][@LR+LR],configs/B.py [--lrs=1e-6,1e-5,1e-4] --workdir=runs/ \
      [--judge=none|demo|openai:MODEL[@BASE_URL]] [--relevance=same|none|demo|openai:...] \
      [--eval=paper,modifiers] [--langs=en,fr] [--eval_dir=DIR] [--spelling=require|skip] \
      [--subset=tasks=8,modifiers=4] [--max_new_tokens=512] \
      [--include_base] [--set=train.steps=4] [--max_cost_usd=5] [--dry_run]

Every stage writes `<run>/stages/<stage>.json` after its output is committed; a stage whose marker holds
the same key (config hash + the stage's inputs) is skipped, so rerunning the same command after a crash
resumes where it stopped (the trainer from its last checkpoint, generation from the rows already written,
scoring from the judge cache). `--dry_run` prints every stage's status and the LLM call/cost estimate
without loading weights or calling anything. `--judge=demo` starts the embedded SmolLM2 under
`python -m infer.serve` as a demo judge (labelled as such in runs/judge.json); `openai:...` reads the key
from $OPENAI_API_KEY. Exit status: 0 all stages done, 1 a stage failed, 2 bad flags.
"""

from __future__ import annotations

import sys

from absl import app, flags

from chat.client import DEFAULT_CACHE_DIR
from records.cli import expected_errors
from study import grid_plan as gp
from study.grid_run import Grid, GridOptions

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "configs",
    None,
    "Config files, comma-separated, each path[:args][@LR+LR] (e.g. configs/smollm2.py:ft,lima@1e-5+1e-4); "
    "a new config starts at an item naming a .py file, so a config's own arguments may contain commas.",
)
flags.DEFINE_list(
    "lrs",
    None,
    "Learning rates for every config without '@LRS' (default: each config's lr_grid); "
    "the config's lr/min_lr ratio is kept.",
)
flags.DEFINE_string("workdir", "runs", "Runs directory (docs/results.md).")
flags.DEFINE_string("judge", "none", "none | demo[:MODEL_DIR] | openai | openai:MODEL[@BASE_URL].")
flags.DEFINE_string(
    "relevance",
    "paper",
    "paper ($XLIT_RELEVANCE, e.g. LLaMA-2-7B-chat behind infer.server; else the judge's model, noted) | "
    "same (as --judge) | none | demo | openai:MODEL[@BASE_URL].",
)
flags.DEFINE_string("modifier_judge", "same", "Model for style/two-hop modifiers: same | none | spec.")
flags.DEFINE_list("eval", ["paper", "modifiers"], "Evaluation sets: paper and/or modifiers.")
flags.DEFINE_list("langs", [], "Evaluation languages (default: every language of --eval_dir).")
flags.DEFINE_string(
    "eval_dir",
    None,
    "Evaluation folder (default: the shipped data/eval); a translated one adds languages (docs/languages.md).",
)
flags.DEFINE_enum(
    "spelling",
    "require",
    ["require", "skip"],
    "require: a language without a Hunspell dictionary stops the grid before training, naming the Debian "
    "package; skip: its spelling is not scored (null, noted in the scores and the report).",
)
flags.DEFINE_string(
    "subset", "", "all, or tasks=N[,per_task=K][,modifiers=M] (task-balanced, same items per language)."
)
flags.DEFINE_integer(
    "max_new_tokens", None, "Generation budget per response (default: the run's protocol, config decode)."
)
flags.DEFINE_float(
    "repetition_penalty",
    None,
    "Repetition penalty for every run (default: the run's protocol: released 1.2, :paper 1.1).",
)
flags.DEFINE_integer("batch_size", 16, "Generation batch size.")
flags.DEFINE_bool("include_base", False, "Also evaluate each config's untuned base model (run <stem>-base).")
flags.DEFINE_multi_string(
    "set",
    [],
    "Config override KEY=VALUE applied to every config (repeatable); list values join items with '+', "
    "e.g. --set=data.paths=data/a.jsonl+data/b.jsonl or --set=lr_grid=1e-5+1e-4.",
)
flags.DEFINE_string(
    "anchor",
    "",
    "Config (as in --configs) marked anchor in run.json; default: the paper's anchor, else the first.",
)
flags.DEFINE_enum("judge_prompt", "paper", ["paper", "released"], "Judge prompt variant.")
flags.DEFINE_string("cache_dir", DEFAULT_CACHE_DIR, "LLM reply cache (evalsuite.score --cache_dir).")
flags.DEFINE_float("max_cost_usd", None, "Cost cap per scoring run (evalsuite.score --max_cost_usd).")
flags.DEFINE_integer("concurrency", 8, "Concurrent LLM requests per model.")
flags.DEFINE_bool("dry_run", False, "Print stages, statuses and the LLM cost estimate; run nothing.")


def options_from_flags() -> GridOptions:
    if not FLAGS.configs:
        raise gp.GridError("--configs is required (e.g. --configs=configs/smollm2.py)")
    if FLAGS.max_new_tokens is not None and FLAGS.max_new_tokens <= 0:
        raise gp.GridError(f"--max_new_tokens={FLAGS.max_new_tokens} must be positive")
    return GridOptions(
        configs=gp.split_config_list(FLAGS.configs),
        lrs=gp.parse_lrs(FLAGS.lrs) if FLAGS.lrs else None,
        workdir=FLAGS.workdir,
        judge=FLAGS.judge,
        relevance=FLAGS.relevance,
        modifier_judge=FLAGS.modifier_judge,
        eval_sets=FLAGS.eval,
        langs=FLAGS.langs,
        eval_dir=FLAGS.eval_dir,
        spelling=FLAGS.spelling,
        subset=FLAGS.subset,
        max_new_tokens=FLAGS.max_new_tokens,
        repetition_penalty=FLAGS.repetition_penalty,
        batch_size=FLAGS.batch_size,
        include_base=FLAGS.include_base,
        overrides=FLAGS.set,
        anchor=FLAGS.anchor,
        judge_prompt=FLAGS.judge_prompt,
        cache_dir=FLAGS.cache_dir,
        max_cost_usd=FLAGS.max_cost_usd,
        concurrency=FLAGS.concurrency,
        dry_run=FLAGS.dry_run,
    )


def print_results(results: list) -> None:
    """Wall time per run and stage, and in total."""
    print(f"\n{'run':<48}{'stage':<10}{'status':<9}{'seconds':>8}")
    for r in results:
        print(f"{r.run:<48}{r.stage:<10}{r.status:<9}{r.seconds:>8.1f}")
    print(f"{'total':<67}{sum(r.seconds for r in results):>8.1f}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    grid = Grid(options_from_flags())
    if FLAGS.dry_run:
        print(grid.dry_run_text())
        return
    results = grid.run()
    print_results(results)
    failed = [f"{r.run}/{r.stage}" for r in results if r.status == "failed"]
    if failed:
        print(
            f"error: failed stages: {', '.join(failed)} (rerun the same command to resume)", file=sys.stderr
        )
        sys.exit(1)


if __name__ == "__main__":
    app.run(expected_errors(main))
