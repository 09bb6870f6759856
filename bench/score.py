"""Scoring throughput: surface metrics (fastText + Hunspell) and the LLM judge against the local fake server.

  python -m bench.score [--runs=5 --one_core --judge_items=452 --concurrency=8
                         --json_out=bench/results/score.json]

Surface: `evalsuite.surface.SurfaceScorer.score` over the 452 evaluation prompts (113 × en/fr/pt/ru), with two
response sets: "prompt" (each prompt's own text as the response, in its language) and "long" (each prompt
followed by the next four prompts of the same language, ~5× longer). Models are loaded and one pass is run
before timing. Each timed run scores all 452 responses; "warm" keeps the spell checker's word cache from the
previous passes (a long-running worker), "cold" clears it before every run. With `--one_core` the process is
pinned to CPU 0 (the goal is ≥ 5,000 responses/s on one core).

Judge: `evalsuite.judge.judge_all` through `chat.client.ChatRunner` against `tests/fake_openai_server.py`
started in-process on 127.0.0.1 with no faults, for `--judge_items` (task, response) pairs: cache off, and cache
on (a fresh sqlite cache: first pass = misses that fill it, later passes = all hits). Server and client share
this process (and its GIL), so the figure is a lower bound on the client's own overhead. Wall-clock rates
depend on what else runs on the machine; the surface table also gives responses per CPU-second of this process.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 5, "Timed runs per measurement (median reported).")
flags.DEFINE_bool("one_core", True, "Pin this process to one CPU for the surface benchmark.")
flags.DEFINE_integer("judge_items", 452, "Judge calls per pass (0 = skip the judge benchmark).")
flags.DEFINE_integer("concurrency", 8, "Judge client threads.")
flags.DEFINE_string("json_out", "bench/results/score.json", "Write the results as JSON here ('' = no).")


def responses() -> dict[str, list[tuple[str, str]]]:
    """{set name: [(lang, response)]} over the 452 evaluation prompts."""
    from evalsuite.data import eval_langs, load_eval
    from evalsuite.judge import task_text

    short, long = [], []
    for lang in eval_langs():  # the shipped evaluation folder's languages
        texts = [task_text(r.messages) for r in load_eval(lang)]
        for i, t in enumerate(texts):
            short.append((lang, t))
            long.append((lang, "\n\n".join(texts[(i + k) % len(texts)] for k in range(5))))
    return {"prompt": short, "long": long}


def surface_pass(scorer, items: list[tuple[str, str]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one pass."""
    t, c = time.perf_counter(), time.process_time()
    for lang, text in items:
        scorer.score(lang=lang, response=text)
    return time.perf_counter() - t, time.process_time() - c


def clear_word_caches() -> None:
    from evalsuite.data import eval_langs
    from evalsuite.spelling import get_checker

    for lang in eval_langs():
        checker = get_checker(lang)
        if checker is not None:
            checker._cache.clear()


def bench_surface() -> list[dict[str, Any]]:
    from evalsuite.surface import SurfaceScorer

    scorer = SurfaceScorer()
    out = []
    for name, items in responses().items():
        surface_pass(scorer, items)  # warm-up: loads fastText and the dictionaries
        for cache in ("warm", "cold"):
            runs = []
            for _ in range(FLAGS.runs):
                if cache == "cold":
                    clear_word_caches()
                runs.append(surface_pass(scorer, items))
            med = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            chars = sum(len(t) for _, t in items)
            out.append(
                {
                    "set": name,
                    "word_cache": cache,
                    "responses": len(items),
                    "mean_chars": chars / len(items),
                    "median_s": med,
                    "responses_per_s": len(items) / med,
                    "median_cpu_s": cpu,
                    "responses_per_cpu_s": len(items) / cpu,
                    "runs_s": runs,
                }
            )
            print(f"surface {name}/{cache}: {len(items) / med:.0f} responses/s", flush=True)
    return out


def judge_pass(base_url: str, items: list[tuple[str, str]], cache_dir: str | None) -> dict[str, Any]:
    from chat.client import ChatCache, ChatRunner, ModelSpec
    from evalsuite.judge import judge_all

    cache = ChatCache(cache_dir) if cache_dir else None
    runner = ChatRunner(ModelSpec("gpt-3.5-turbo-0125", base_url), cache=cache, concurrency=FLAGS.concurrency)
    t = time.perf_counter()
    cols = judge_all(runner, items)
    dt = time.perf_counter() - t
    ok = sum(c["judge_status"] == "ok" for c in cols)
    if cache:
        cache.close()
    return {"s": dt, "ok": ok, "http_calls": runner.stats.http_calls, "cache_hits": runner.stats.cache_hits}


def bench_judge() -> list[dict[str, Any]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fake_openai_server import FakeOpenAIServer

    items = [(t, t) for _, t in responses()["prompt"]][: FLAGS.judge_items]
    items = (items * (FLAGS.judge_items // max(len(items), 1) + 1))[: FLAGS.judge_items]
    out = []
    with FakeOpenAIServer(seed=0, fault_rate=0.0) as srv, tempfile.TemporaryDirectory() as tmp:
        judge_pass(srv.base_url, items[:16], None)  # warm-up: client import, connections
        cases = [
            ("off", None, FLAGS.runs),
            ("on, first pass (misses)", tmp, 1),
            ("on, all hits", tmp, FLAGS.runs),
        ]
        for name, cache_dir, n in cases:
            passes = [judge_pass(srv.base_url, items, cache_dir) for _ in range(n)]
            med = statistics.median(p["s"] for p in passes)
            out.append(
                {
                    "cache": name,
                    "items": len(items),
                    "median_s": med,
                    "items_per_s": len(items) / med,
                    "passes": passes,
                }
            )
            print(f"judge cache {name}: {len(items) / med:.0f} items/s", flush=True)
    return out


def run(argv_unused: list[str]) -> int:
    if FLAGS.one_core and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    surface = bench_surface()
    if FLAGS.one_core and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    judge = bench_judge() if FLAGS.judge_items else []
    print(f"\nsurface scoring (fastText + Hunspell), median of {FLAGS.runs} runs, one_core={FLAGS.one_core}")
    print(
        f"{'set':>7} {'word cache':>10} {'responses':>9} {'mean chars':>10} {'responses/s':>11} {'per CPU s':>9}"
    )
    for r in surface:
        print(
            f"{r['set']:>7} {r['word_cache']:>10} {r['responses']:>9} {r['mean_chars']:>10.0f} "
            f"{r['responses_per_s']:>11.0f} {r['responses_per_cpu_s']:>9.0f}"
        )
    if judge:
        print(f"\njudge vs local fake server (no faults), concurrency {FLAGS.concurrency}")
        print(f"{'cache':>24} {'items':>6} {'items/s':>8}")
        for r in judge:
            print(f"{r['cache']:>24} {r['items']:>6} {r['items_per_s']:>8.0f}")
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "goal_responses_per_s": 5000,
        "surface": surface,
        "judge": judge,
    }
    if FLAGS.json_out:
        Path(FLAGS.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(FLAGS.json_out).write_text(json.dumps(report, indent=2))
    return 0


def main() -> None:
    app.run(lambda argv: sys.exit(run(argv)))


if __name__ == "__main__":
    main()
