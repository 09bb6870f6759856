"""Judge calibration: run the judge and the relevance model on built-in controls and write a card.

    python -m study.calibrate --judge=SPEC [--relevance=same|none|SPEC] --out=DIR
                                  [--per_kind=8 --repeat=8 --seed=0] [--dry_run] [--force]
                                  [--cache_dir=~/.cache/xlit/judge --max_cost_usd=1.0 --concurrency=8]

SPEC is `demo` (the demo judge `make demo` uses: SmolLM2 behind infer.server, decoding under the judge's
JSON schema), `demo:MODEL_DIR`, or `openai[:MODEL[@BASE_URL]]`. The controls (evalsuite.controls: good, null,
wrong-language and mismatched answers, in en/fr/pt/ru) are judged once through the reply cache; a sample of
`--repeat` controls is judged again with the cache bypassed (repeatability). `DIR/card.json` (top-level
`"verdict": "pass" | "fail"`), `DIR/card.md` and `DIR/controls.jsonl` (every control with its scores) are
written; the thresholds and the card format are in docs/evalsuite.md ("Judge calibration"). A card whose
identity (judge, relevance model, prompt, controls, thresholds) matches is reused without any call unless
--force. `--dry_run` prints the calls still needed and their estimated cost, and calls nothing.
Exit status: 0 when the verdict is pass, 3 when it is fail, 2 on a usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

from evalsuite.calibration import DEMO_PER_KIND, DEMO_REPEAT, verdict_line
from evalsuite.controls import GROUPS
from study.calibration_run import Setup, dry_run, run_calibration

flags.DEFINE_string("judge", None, "demo | demo:MODEL_DIR | openai[:MODEL[@BASE_URL]]")
flags.DEFINE_string("relevance", "same", "same (as the judge) | none | demo | openai:...")
flags.DEFINE_string("out", None, "Output directory (card.json, card.md, controls.jsonl).")
flags.DEFINE_integer("per_kind", None, f"Controls per group {GROUPS} (default 8; {DEMO_PER_KIND} for demo).")
flags.DEFINE_integer(
    "repeat", None, f"Controls rescored with the cache bypassed (default 8; {DEMO_REPEAT} for demo)."
)
flags.DEFINE_integer("seed", 0, "Seed of the control selection.")
flags.DEFINE_string("judge_prompt", "paper", "paper | released")
flags.DEFINE_string("cache_dir", "~/.cache/xlit/judge", "LLM reply cache.")
flags.DEFINE_float("max_cost_usd", 1.0, "Cost cap of the whole calibration (USD).")
flags.DEFINE_integer("concurrency", 8, "Concurrent requests per model.")
flags.DEFINE_bool("dry_run", False, "Print the calls still needed and their estimated cost; call nothing.")
flags.DEFINE_bool("force", False, "Recompute even if DIR/card.json matches.")
flags.mark_flags_as_required(["judge", "out"])


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    demo = f.judge.strip().startswith("demo")
    setup = Setup(
        judge=f.judge,
        relevance=f.relevance,
        per_kind=f.per_kind if f.per_kind is not None else (DEMO_PER_KIND if demo else 8),
        repeat=f.repeat if f.repeat is not None else (DEMO_REPEAT if demo else 8),
        seed=f.seed,
        judge_prompt=f.judge_prompt,
        cache_dir=f.cache_dir,
        max_cost_usd=f.max_cost_usd,
        concurrency=16 if demo else f.concurrency,
    )
    try:
        if f.dry_run:
            est = dry_run(setup)
            t = est["total"]
            print(
                f"calibration dry run: {est['controls']} controls (+ {setup.repeat} rescored); "
                f"{int(t['calls'])} calls still needed, ~{int(t['prompt_tokens'])} prompt + "
                f"{int(t['completion_tokens'])} completion tokens, ~${t['cost_usd']:.2f}"
            )
            print(json.dumps(est, default=float))
            return
        card = run_calibration(setup, f.out, force=f.force)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(verdict_line(card))
    print(f"card: {Path(f.out) / 'card.json'} ({Path(f.out) / 'card.md'})")
    sys.exit(0 if card["verdict"] == "pass" else 3)


if __name__ == "__main__":
    app.run(main)
