r"""Scoring pipeline: the Beam version of `python -m evalsuite.score` (same columns, same values).

  python -m beam_pipelines.score --generations='gens/*.parquet' --output=out/scores \
      [--judge=openai:MODEL@URL] [--relevance=...] [--max_cost_usd=5] [--overwrite] \
      [--direct_running_mode=multi_processing --direct_num_workers=4 | --runner=DataflowRunner ...]

Writes `PREFIX-SSSSS-of-NNNNN.parquet` (input columns + SCORE_SCHEMA), `PREFIX.deadletter-*.parquet`
(id, stage, reason, record as JSON) for items that failed after retries, and `PREFIX.SUCCESS`.
Unknown flags are Beam pipeline options.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa

from beam_pipelines.io import (
    Output,
    check_files,
    cli_main,
    pipeline_options,
    read_parquet,
    run_and_commit,
)
from beam_pipelines.score_fns import DEAD, NS, LLMConfig, LLMScoreFn, SurfaceFn
from records.schemas import GENERATION_SCHEMA, SCORE_SCHEMA, SchemaError

REQUIRED = ("id", "messages", "response")
DEAD_LETTER_SCHEMA = pa.schema(
    [("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("record", pa.string())]
)
COUNTERS = ("items", "failures", "judge_calls", "cache_hits")


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    """Input columns (score columns it had are replaced) + SCORE_SCHEMA columns, typed."""
    score_names = [n for n in SCORE_SCHEMA.names if n not in ("id", "lang")]
    fields = [f for f in input_schema if f.name not in score_names]
    return pa.schema(fields + [SCORE_SCHEMA.field(n) for n in score_names])


def input_schema(pattern: str) -> pa.Schema:
    schema = check_files(pattern, GENERATION_SCHEMA, REQUIRED)
    if "lang" not in schema.names:
        raise SchemaError(f"{pattern}: missing column 'lang' (expected type string)")
    check = pa.schema([SCORE_SCHEMA.field("lang")])
    from records.schemas import validate

    validate(schema.empty_table(), check, pattern)
    return schema


def build(
    p: beam.Pipeline,
    generations: str,
    out: Output,
    cfg: LLMConfig,
    *,
    lid_model: str | None = None,
    dict_dirs: Sequence[str] | None = None,
    code_switch_min_chars: int = 20,
    batch_size: int = 64,
    eval_dir: str | None = None,
    spelling: str = "require",
) -> dict[str, beam.PCollection]:
    """Adds the scoring transforms to `p`; returns the scored and dead-letter PCollections."""
    from evalsuite.spelling import DEFAULT_DICT_DIRS

    schema = output_schema(input_schema(generations))
    rows = read_parquet(p, "ReadGenerations", generations)
    surf = rows | "SurfaceMetrics" >> beam.ParDo(
        SurfaceFn(lid_model, tuple(dict_dirs or DEFAULT_DICT_DIRS), code_switch_min_chars, eval_dir, spelling)
    ).with_outputs(DEAD, main="ok")
    batches = surf.ok | "BatchForLLM" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
    llm = batches | "LLMMetrics" >> beam.ParDo(LLMScoreFn(cfg)).with_outputs(DEAD, main="ok")
    dead = (surf[DEAD], llm[DEAD]) | "MergeDeadLetters" >> beam.Flatten()
    out.write(llm.ok, "WriteScores", schema)
    out.write(dead, "WriteDeadLetters", DEAD_LETTER_SCHEMA, ".deadletter")
    return {"scores": llm.ok, "dead": dead}


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    from chat.client import DEFAULT_CACHE_DIR

    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--generations", required=True, help="Parquet glob (GENERATION_SCHEMA + lang).")
    a.add_argument("--output", required=True, help="Output prefix.")
    a.add_argument("--overwrite", action="store_true", help="Recompute a complete output.")
    a.add_argument("--judge", default="none")
    a.add_argument("--relevance", default="none")
    a.add_argument("--modifier_judge", default="same")
    a.add_argument("--judge_prompt", default="paper", choices=["paper", "released"])
    a.add_argument("--lid_model", default=None)
    a.add_argument("--dict_dir", default=None, help="Comma-separated Hunspell folders.")
    a.add_argument("--code_switch_min_chars", type=int, default=20)
    a.add_argument("--eval_dir", default=None, help="Evaluation folder of the rows' languages (thresholds).")
    a.add_argument(
        "--spelling",
        default="require",
        choices=["require", "skip"],
        help="skip: languages without a Hunspell dictionary get a null spell_ok_rate (docs/languages.md).",
    )
    a.add_argument("--cache_dir", default=DEFAULT_CACHE_DIR)
    a.add_argument("--nocache", action="store_true")
    a.add_argument("--retry_failed", action="store_true")
    a.add_argument("--concurrency", type=int, default=8)
    a.add_argument("--max_retries", type=int, default=6)
    a.add_argument("--parse_retries", type=int, default=2)
    a.add_argument("--timeout_s", type=float, default=60.0)
    a.add_argument("--backoff_s", type=float, default=1.0)
    a.add_argument("--backoff_max_s", type=float, default=30.0)
    a.add_argument("--max_cost_usd", type=float, default=None, help="Cost cap per worker process.")
    a.add_argument("--price_per_mtok", default=None, help="prompt,completion USD per 1M tokens.")
    a.add_argument("--api_key_env", default="OPENAI_API_KEY")
    a.add_argument("--batch_size", type=int, default=64, help="Rows per LLM batch.")
    return a.parse_known_args(list(argv))


def config(args: argparse.Namespace) -> LLMConfig:
    price = tuple(float(x) for x in args.price_per_mtok.split(",")) if args.price_per_mtok else None
    if price is not None and len(price) != 2:
        raise ValueError("--price_per_mtok takes two numbers: prompt,completion")
    return LLMConfig(
        judge=args.judge,
        relevance=args.relevance,
        modifier_judge=args.modifier_judge,
        judge_prompt=args.judge_prompt,
        cache_dir=None if args.nocache else args.cache_dir,
        api_key_env=args.api_key_env,
        timeout_s=args.timeout_s,
        max_retries=args.max_retries,
        parse_retries=args.parse_retries,
        backoff_s=args.backoff_s,
        backoff_max_s=args.backoff_max_s,
        concurrency=args.concurrency,
        max_cost_usd=args.max_cost_usd,
        price_per_mtok=price,  # type: ignore[arg-type]
        retry_failed=args.retry_failed,
    )


def run(argv: Sequence[str]) -> dict:
    args, beam_args = parse_args(argv)
    out = Output(args.output)
    if out.skip(args.overwrite):
        return {"skipped": True}
    cfg = config(args)
    t0 = time.perf_counter()
    p = beam.Pipeline(options=pipeline_options(beam_args))
    dirs = args.dict_dir.split(",") if args.dict_dir else None
    scorer = check_languages(args.generations, args, dirs)
    build(
        p,
        args.generations,
        out,
        cfg,
        lid_model=args.lid_model,
        dict_dirs=dirs,
        code_switch_min_chars=args.code_switch_min_chars,
        batch_size=args.batch_size,
        eval_dir=args.eval_dir,
        spelling=args.spelling,
    )
    summary = run_and_commit(p, out, NS, t0, COUNTERS)
    if scorer.spelling_note():
        summary["spelling_skipped"] = scorer.spelling_note()
    return summary


def check_languages(pattern: str, args: argparse.Namespace, dirs: Sequence[str] | None) -> Any:
    """Fails before the pipeline starts when a language of the generations cannot be scored (no fastText
    label; no Hunspell dictionary unless --spelling=skip); returns the SurfaceScorer that checked them."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    from beam_pipelines.io import match
    from evalsuite.spelling import DEFAULT_DICT_DIRS
    from evalsuite.surface import SurfaceScorer

    scorer = SurfaceScorer(
        args.lid_model,
        tuple(dirs or DEFAULT_DICT_DIRS),
        args.code_switch_min_chars,
        eval_dir=args.eval_dir,
        spelling=args.spelling,
    )
    for path in match(pattern):
        with FileSystems.open(path) as f:
            names = pq.read_schema(f).names
        with FileSystems.open(path) as f:
            cols = [c for c in ("lang", "modifier_type", "modifier_arg") if c in names]
            scorer.check_rows(pq.read_table(f, columns=cols).to_pylist())
    return scorer


def main() -> None:
    cli_main(run)


if __name__ == "__main__":
    main()
