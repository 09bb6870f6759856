r"""Beam pipelines vs the single-process CLIs on the same input: throughput per stage and pipeline overhead.

    python -m bench.beam [--generate_rows=32 --max_new_tokens=32 --score_rows=452 --translate_records=16
                          --workers=2 --json_out=bench/results/beam.json]

Each command runs as its own process (start-up, model loading and compilation included, as a user sees it),
on the same input, one after the other:
  * generate: `infer.main` vs `beam_pipelines.generate` (DirectRunner in process, and multi_processing with
    --workers processes) on the first --generate_rows evaluation prompts (en/fr/pt/ru interleaved), SmolLM2
    (embedded), greedy, repetition penalty 1.1; the three outputs are checked equal response for response;
  * score: `evalsuite.score` vs `beam_pipelines.score` (surface metrics; the evaluation prompts used as
    responses in their own language), outputs checked equal;
  * translate: `beam_pipelines.translate` in process vs multi_processing, the tiny random M2M100
    (beam_pipelines.tiny_nllb) on the first --translate_records shipped Dolly records, en → fr,pt,ru.
Prints a table (items/s and the pipeline's extra wall seconds over the CLI) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipelines.io import read_outputs
from evalsuite.data import LANGS, instructions_table, load_eval

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def _eval_prompts(n: int) -> pa.Table:
    per_lang = {lang: load_eval(lang) for lang in LANGS}
    records = [per_lang[LANGS[i % 4]][i // 4] for i in range(n)]
    return instructions_table(records)


def _mp(workers: int) -> list[str]:
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def _row(stage: str, mode: str, items: int, wall: float, cli_wall: float | None) -> dict[str, Any]:
    return {
        "stage": stage,
        "mode": mode,
        "items": items,
        "wall_s": round(wall, 2),
        "items_per_s": round(items / wall, 3),
        "overhead_vs_cli_s": None if cli_wall is None else round(wall - cli_wall, 2),
    }


def _check_same(cli_out: Path, prefixes: list[Path], cols: tuple[str, ...], cli: str) -> None:
    """The pipeline outputs hold the CLI's values in `cols` for every id."""

    def by_id(rows: list[dict[str, Any]]) -> dict[str, tuple]:
        return {r["id"]: tuple(r[c] for c in cols) for r in rows}

    ref = by_id(pq.read_table(cli_out).to_pylist())
    for prefix in prefixes:
        if by_id(read_outputs(str(prefix)).to_pylist()) != ref:
            raise AssertionError(f"{prefix.name} differs from {cli}")


def bench_generate(tmp: Path, rows: int, max_new: int, workers: int) -> list[dict[str, Any]]:
    inp = tmp / "prompts.parquet"
    pq.write_table(_eval_prompts(rows), inp)
    dec = [f"--max_new_tokens={max_new}", "--repetition_penalty=1.1", "--batch_size=16"]
    py = sys.executable
    cli = _timed(
        [py, "-m", "infer.main", "--model=embedded", f"--input={inp}", f"--output={tmp / 'g.parquet'}", *dec]
    )
    gen = [py, "-m", "beam_pipelines.generate", "--model=embedded", f"--input={inp}", *dec]
    inproc = _timed([*gen, f"--output={tmp / 'g_beam'}"])
    multi = _timed([*gen, f"--output={tmp / 'g_mp'}", *_mp(workers)])
    _check_same(tmp / "g.parquet", [tmp / "g_beam", tmp / "g_mp"], ("response",), "infer.main")
    return [
        _row("generate", "infer.main (CLI)", rows, cli, None),
        _row("generate", "beam in-process", rows, inproc, cli),
        _row("generate", f"beam multi_processing x{workers}", rows, multi, cli),
    ]


def bench_score(tmp: Path, rows: int, workers: int) -> list[dict[str, Any]]:
    table = _eval_prompts(rows)
    responses = [m[-1]["content"] for m in table.column("messages").to_pylist()]
    gens = tmp / "gens.parquet"
    pq.write_table(table.append_column("response", pa.array(responses, pa.string())), gens)
    py = sys.executable
    cli = _timed([py, "-m", "evalsuite.score", f"--generations={gens}", f"--output={tmp / 's.parquet'}"])
    sc = [py, "-m", "beam_pipelines.score", f"--generations={gens}"]
    inproc = _timed([*sc, f"--output={tmp / 's_beam'}"])
    multi = _timed([*sc, f"--output={tmp / 's_mp'}", *_mp(workers)])
    cols = ("lang_pred", "lang_correct", "spell_ok_rate", "code_switch_rate")
    _check_same(tmp / "s.parquet", [tmp / "s_beam", tmp / "s_mp"], cols, "evalsuite.score")
    return [
        _row("score", "evalsuite.score (CLI)", rows, cli, None),
        _row("score", "beam in-process", rows, inproc, cli),
        _row("score", f"beam multi_processing x{workers}", rows, multi, cli),
    ]


def bench_translate(tmp: Path, records: int, workers: int) -> list[dict[str, Any]]:
    from beam_pipelines.tiny_nllb import make_tiny_nllb

    model = make_tiny_nllb(tmp / "tiny_nllb")
    lines = (REPO / "data/train/dolly_subset.jsonl").read_text(encoding="utf-8").splitlines()[:records]
    inp = tmp / "dolly.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tr = [
        sys.executable,
        "-m",
        "beam_pipelines.translate",
        f"--input={inp}",
        "--tgt=fr,pt,ru",
        f"--model={model}",
        "--num_beams=1",
        "--max_new_tokens=16",
        "--keep_flagged",  # the random model's output is flagged; keep every row so the counts check holds
    ]
    inproc = _timed([*tr, f"--output={tmp / 't_beam'}"])
    multi = _timed([*tr, f"--output={tmp / 't_mp'}", *_mp(workers)])
    n_out = read_outputs(str(tmp / "t_beam")).num_rows
    if n_out != 4 * records or read_outputs(str(tmp / "t_mp")).num_rows != n_out:
        raise AssertionError(f"translate wrote {n_out} rows, expected {4 * records}")
    items = 3 * records  # translated records (one per target language)
    return [
        _row("translate", "beam in-process", items, inproc, None),
        _row("translate", f"beam multi_processing x{workers}", items, multi, None),
    ]


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--generate_rows", type=int, default=32)
    a.add_argument("--max_new_tokens", type=int, default=32)
    a.add_argument("--score_rows", type=int, default=452)
    a.add_argument("--translate_records", type=int, default=16)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--stages", default="generate,score,translate")
    a.add_argument("--json_out", default=str(REPO / "bench/results/beam.json"))
    args = a.parse_args()
    stages = args.stages.split(",")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="xlit-bench-beam-") as d:
        tmp = Path(d)
        if "generate" in stages:
            rows += bench_generate(tmp, args.generate_rows, args.max_new_tokens, args.workers)
        if "score" in stages:
            rows += bench_score(tmp, args.score_rows, args.workers)
        if "translate" in stages:
            rows += bench_translate(tmp, args.translate_records, args.workers)
    print(f"\n{'stage':<10}{'mode':<30}{'items':>6}{'wall s':>9}{'items/s':>9}{'+s vs CLI':>11}")
    for r in rows:
        over = "-" if r["overhead_vs_cli_s"] is None else f"{r['overhead_vs_cli_s']:+.1f}"
        print(
            f"{r['stage']:<10}{r['mode']:<30}{r['items']:>6}{r['wall_s']:>9.1f}{r['items_per_s']:>9.2f}{over:>11}"
        )
    info = {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "args": vars(args), "rows": rows}
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
