"""JSON-constrained decoding: the former hand-written automaton vs llguidance (infer.grammar).

  python -m bench.constraint [--model=embedded --batch=8 --max_new_tokens=48 --runs=3 --json_out=FILE]

1. Mask time per token: a fixed reply (the judge schema's `{"Language": 2, ...}`, and a JSON object for
   json_object mode) is fed token by token; each step times `allowed(remaining)` + `advance(token)`. Cold =
   the first row on fresh tables (empty per-state mask caches), warm = a second row of the same format.
2. End to end: `Engine.generate` on `--batch` judge prompts with the judge schema (greedy), old vs new vs no
   constraint, interleaved, one warm-up each (compile), median of `--runs`; every constrained reply must parse
   with the judge's keys and values 1..3.

The automaton is read from git (`OLD_COMMIT:infer/json_constraint.py`), not kept in the tree. Load average is
printed with the figures (2 shared cores: figures under load are not comparable across runs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "embedded", "Model directory or 'embedded' (SmolLM2-135M-Instruct).")
flags.DEFINE_integer("batch", 8, "Rows decoded together.")
flags.DEFINE_integer("max_new_tokens", 48, "Token budget per row (the judge reply is ~43 tokens).")
flags.DEFINE_integer("runs", 3, "Timed end-to-end runs per side (median reported).")
flags.DEFINE_string("json_out", None, "Write the results as JSON here.")

OLD_COMMIT = "f0c3e6a"  # the last commit with the hand-written automaton
ROOT = Path(__file__).resolve().parents[1]


def load_old() -> ModuleType | None:
    """The automaton's module from git, or None (not a git checkout / commit missing)."""
    try:
        src = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:infer/json_constraint.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"old automaton not available ({e}); measuring the library only", file=sys.stderr)
        return None
    path = Path(tempfile.mkdtemp()) / "old_json_constraint.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_json_constraint", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def judge_rows(mod: ModuleType, vocab):
    """A row factory for the judge schema on `vocab` (compiled now): the automaton's IntObjectDFA, or the
    library's grammar (infer.json_constraint has no integer-object API any more)."""
    from evalsuite.judge import judge_schema_format

    if hasattr(mod, "IntObjectDFA"):
        dfa = mod.IntObjectDFA(mod.parse_int_object_schema(judge_schema_format()), vocab)
        return lambda: mod.IntObjectConstraint(dfa)
    grammar = mod.parse_response_format(judge_schema_format()).grammar
    vocab.matcher(grammar)
    return lambda: vocab.constraint(grammar)


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def mask_times(make, tokens: list[int], budget: int) -> list[float]:
    """Seconds per step of allowed() + advance() over `tokens` for a fresh row from `make()`."""
    c = make()
    out = []
    for i, t in enumerate(tokens):
        t0 = time.perf_counter()
        allowed = c.allowed(budget - i)
        assert allowed[t], f"step {i}: token {t} not allowed"
        c.advance(t)
        out.append(time.perf_counter() - t0)
    return out


def per_token(label: str, make_vocab, make_rows, tokens: list[int], budget: int) -> dict:
    """make_rows(vocab) -> a row factory (what a server keeps per format); cold = its first row, warm = the
    second."""
    t0 = time.perf_counter()
    vocab = make_vocab()
    rows = make_rows(vocab)
    setup = time.perf_counter() - t0
    cold = mask_times(rows, tokens, budget)
    warm = mask_times(rows, tokens, budget)
    r = {
        "label": label,
        "tables_s": setup,
        "tokens": len(tokens),
        "cold_us": 1e6 * statistics.mean(cold),
        "warm_us": 1e6 * statistics.mean(warm),
        "warm_max_us": 1e6 * max(warm),
    }
    print(
        f"  {label:<28} tables {setup:5.2f}s  cold {r['cold_us']:8.0f} us/token  warm {r['warm_us']:7.0f} "
        f"us/token (max {r['warm_max_us']:.0f})"
    )
    return r


def main(argv: list[str]) -> None:
    del argv
    from evalsuite.judge import PROMPT_KEYS
    from infer import json_constraint as new
    from infer.decode import DecodeParams
    from infer.engine import Engine

    old = load_old()
    print(load())
    eng = Engine.from_path(FLAGS.model, max_batch=FLAGS.batch)
    tok, vsize, eos = eng.tokenizer, eng.cfg.vocab_size, eng.eos_ids
    reply = json.dumps({k: 1 + i % 3 for i, k in enumerate(PROMPT_KEYS)})
    obj_reply = json.dumps({"answer": "Paris is the capital of France.", "scores": [1, 2, 3], "ok": True})
    ids = tok.tok(reply, add_special_tokens=False)["input_ids"]
    obj_ids = tok.tok(obj_reply, add_special_tokens=False)["input_ids"]
    results: dict = {"load_start": os.getloadavg(), "per_token": [], "end_to_end": []}

    print(f"Mask time per token (judge reply: {len(ids)} tokens, JSON object: {len(obj_ids)} tokens)")
    sides = [("llguidance", new)] + ([("automaton", old)] if old else [])
    for name, mod in sides:
        results["per_token"].append(
            per_token(
                f"{name} judge schema",
                lambda m=mod: m.JsonVocab(tok, vsize, eos),
                lambda v, m=mod: judge_rows(m, v),
                ids,
                FLAGS.max_new_tokens,
            )
        )
        results["per_token"].append(
            per_token(
                f"{name} json_object",
                lambda m=mod: m.JsonVocab(tok, vsize, eos),
                lambda v, m=mod: lambda: m.JsonObjectConstraint(v),
                obj_ids,
                FLAGS.max_new_tokens,
            )
        )

    print(f"End to end: batch {FLAGS.batch}, judge schema, greedy, max_new_tokens {FLAGS.max_new_tokens}")
    msgs = [
        [
            {
                "role": "user",
                "content": f"Rate answer {i} from 1 to 3 on {', '.join(PROMPT_KEYS)}. Reply in JSON.",
            }
        ]
        for i in range(FLAGS.batch)
    ]
    params = DecodeParams(max_new_tokens=FLAGS.max_new_tokens)
    factories = {"none": None}
    for name, mod in sides:
        factories[name] = judge_rows(mod, mod.JsonVocab(tok, vsize, eos))
    times: dict[str, list[float]] = {k: [] for k in factories}
    texts: dict[str, list[str]] = {}
    for run in range(FLAGS.runs + 1):  # run 0 = warm-up (compile)
        for name, make in factories.items():
            cons = [make() for _ in msgs] if make else None
            t0 = time.perf_counter()
            res = eng.generate(msgs, params, constraints=cons)
            dt = time.perf_counter() - t0
            if run:
                times[name].append(dt)
            texts[name] = [r.text for r in res]
            n_tok = sum(r.response_tokens for r in res)
            if make:
                for r in res:
                    obj = json.loads(r.text)
                    assert list(obj) == list(PROMPT_KEYS) and set(obj.values()) <= {1, 2, 3}, r.text
            print(f"  run {run} {name:<11} {dt:6.2f}s  {n_tok} tokens  ({load()})")
    for name, ts in times.items():
        med = statistics.median(ts)
        results["end_to_end"].append({"side": name, "median_s": med, "runs_s": ts})
        print(f"  {name:<11} median {med:6.2f}s  over {len(ts)} runs")
    if old:
        same = texts["llguidance"] == texts["automaton"]
        ratio = statistics.median(times["llguidance"]) / statistics.median(times["automaton"])
        results["same_replies"], results["ratio_llguidance_over_automaton"] = same, ratio
        print(f"  llguidance / automaton time: {ratio:.2f}x; identical replies: {same}")
    results["load_end"] = os.getloadavg()
    print(load())
    if FLAGS.json_out:
        Path(FLAGS.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
