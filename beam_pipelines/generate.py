r"""Generation pipeline: `RunInference` around our JAX engine (the Beam version of `python -m infer.main`).

  python -m beam_pipelines.generate --model=DIR --eval=paper|modifiers [--langs=de,en] [--eval_dir=DIR] \
      [--limit=N] --output=out/gen [--max_new_tokens=N --repetition_penalty=P --batch_size=16] [--overwrite]
      (decoding defaults: the run's protocol for a training workdir, else 512 / 1.2; infer.run_settings)
  python -m beam_pipelines.generate --model=DIR --input='prompts/*.parquet' --output=out/gen

Rows: the evaluation set (`--eval`: every language of `--eval_dir`, default the shipped data/eval, or those
of `--langs`; `--limit`: the first N instructions of each) or any Parquet with INSTRUCTION_SCHEMA's id and
messages (`--input`). A translated evaluation folder (docs/languages.md) adds its languages.
Output: `PREFIX-SSSSS-of-NNNNN.parquet` with the input columns + GENERATION_SCHEMA + error, the same
records `infer.main` writes for the same rows and decoding flags; `PREFIX.SUCCESS` when complete.
Unknown flags are Beam pipeline options (`--runner`, `--direct_running_mode`, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from beam_pipelines.io import (
    Output,
    check_files,
    cli_main,
    pipeline_options,
    read_parquet,
    run_and_commit,
)
from records.schemas import GENERATION_SCHEMA, INSTRUCTION_SCHEMA

if TYPE_CHECKING:
    from infer.decode import DecodeKernels

NS = "xlit.generate"
GEN_FIELDS = [*GENERATION_SCHEMA, pa.field("error", pa.string())]


class EngineHandler(ModelHandler[dict, PredictionResult, Any]):
    """`infer.engine.Engine`, loaded once per worker process (RunInference shares it between threads)."""

    def __init__(
        self,
        model: str,
        params: Any,
        *,
        dtype: str = "float32",
        template: str = "model",
        batch_size: int = 16,
        kernels: DecodeKernels | None = None,
    ):
        """kernels: infer.decode.DecodeKernels (None: AUTO, resolved by each worker)."""
        super().__init__()
        self.model_path = model
        self.params = params
        self.dtype = dtype
        self.template = template
        self.batch_size = batch_size
        self.kernels = kernels

    def load_model(self) -> Any:
        from infer.decode import DecodeKernels
        from infer.engine import Engine

        return Engine.from_path(
            self.model_path,
            dtype=self.dtype,
            template=self.template,
            max_batch=self.batch_size,
            kernels=self.kernels or DecodeKernels.AUTO,
        )

    def run_inference(
        self, batch: Sequence[dict], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterator[PredictionResult]:
        results = model.generate([r["messages"] for r in batch], self.params)
        for row, res in zip(batch, results, strict=True):
            # the kernels that ran (auto resolves per worker) go to the `decoding` column
            yield PredictionResult(
                row, {**res.__dict__, "model_name": model.name, "kernels": model.decoder.kernels.value}
            )

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # full batches: every new batch shape is a new XLA compilation
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

    def share_model_across_processes(self) -> bool:
        return False


class ToRecord(beam.DoFn):
    """PredictionResult → the record infer.main writes."""

    def __init__(self, model_name: str | None, decoding_json: str):
        self.model_name = model_name
        self.decoding = json.loads(decoding_json)
        self.items = Metrics.counter(NS, "items")
        self.failures = Metrics.counter(NS, "failures")
        self.tokens = Metrics.counter(NS, "response_tokens")

    def process(self, pred: PredictionResult) -> Iterator[dict[str, Any]]:
        res = pred.inference
        self.items.inc()
        self.tokens.inc(res["response_tokens"])
        if res["error"]:
            self.failures.inc()
        yield {
            **pred.example,
            "response": res["text"],
            "prompt_tokens": res["prompt_tokens"],
            "response_tokens": res["response_tokens"],
            "finish_reason": res["finish_reason"],
            "model": self.model_name or res["model_name"],
            "decoding": json.dumps({**self.decoding, "kernels": res["kernels"]}, sort_keys=True),
            "error": res["error"],
        }


def eval_rows(
    eval_set: str, langs: Sequence[str] | None = None, eval_dir: str | None = None, limit: int = 0
) -> list[dict[str, Any]]:
    """INSTRUCTION_SCHEMA rows of `eval_set` ("paper" | "modifiers") in `langs` (default: every language of
    `eval_dir`, the shipped data/eval by default), the first `limit` of each language (0: all)."""
    from evalsuite import data

    modifiers = eval_set == "modifiers"
    if not langs:
        langs = data.modifier_langs(eval_dir) if modifiers else data.eval_langs(eval_dir)
    data.check_langs(list(langs), eval_dir, modifiers=modifiers)
    load = data.load_modifiers if modifiers else data.load_eval
    out = []
    for lang in langs:
        recs = load(lang, eval_dir)
        out += [r.to_row() for r in (recs[:limit] if limit > 0 else recs)]
    return out


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    names = {f.name for f in GEN_FIELDS}
    return pa.schema([f for f in input_schema if f.name not in names] + GEN_FIELDS)


def decoding_json(params: Any, template: str, dtype: str) -> str:
    decoding = json.loads(params.to_json())
    decoding.update(template=template, dtype=dtype)
    return json.dumps(decoding, sort_keys=True)


def build(
    p: beam.Pipeline,
    out: Output,
    handler: EngineHandler,
    *,
    rows: list[dict[str, Any]] | None = None,
    input_pattern: str | None = None,
    model_name: str | None = None,
) -> beam.PCollection:
    """Adds the generation transforms; rows come from `rows` (in memory) or Parquet `input_pattern`."""
    if input_pattern:
        schema = output_schema(check_files(input_pattern, INSTRUCTION_SCHEMA, ("id", "messages")))
        src = read_parquet(p, "ReadInstructions", input_pattern)
    else:
        schema = output_schema(INSTRUCTION_SCHEMA)
        src = p | "EvalInstructions" >> beam.Create(rows or [])
    gen = (
        src
        | "Generate" >> RunInference(handler)
        | "ToRecords"
        >> beam.ParDo(ToRecord(model_name, decoding_json(handler.params, handler.template, handler.dtype)))
    )
    out.write(gen, "WriteGenerations", schema)
    return gen


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--model", required=True, help="HF directory, training workdir, .gguf or 'embedded'.")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--eval", choices=["paper", "modifiers"])
    src.add_argument("--input", help="Parquet glob with id and messages (INSTRUCTION_SCHEMA).")
    a.add_argument("--langs", default="", help="Comma-separated; default: every language of --eval_dir.")
    a.add_argument("--eval_dir", default=None, help="Evaluation folder (default: the shipped data/eval).")
    a.add_argument(
        "--limit", type=int, default=0, help="--eval: the first N instructions per language (0: all)."
    )
    a.add_argument("--output", required=True)
    a.add_argument("--overwrite", action="store_true")
    # None: the run's protocol for a training workdir, else the released defaults (infer.run_settings)
    a.add_argument("--max_new_tokens", type=int, default=None)
    a.add_argument("--repetition_penalty", type=float, default=None)
    a.add_argument("--temperature", type=float, default=0.0)
    a.add_argument("--top_p", type=float, default=1.0)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--stop", action="append", default=[])
    a.add_argument("--batch_size", type=int, default=16)
    a.add_argument("--template", default=None)
    a.add_argument("--dtype", default=None)
    a.add_argument("--model_name", default=None)
    a.add_argument(
        "--kernels",
        choices=["auto", "native", "xla"],
        default="auto",
        help="Decode kernels (infer.decode.DecodeKernels); the decoding column records which ran.",
    )
    return a.parse_known_args(list(argv))


def run(argv: Sequence[str]) -> dict:
    from infer.decode import DecodeKernels, DecodeParams
    from infer.run_settings import fill_unset

    args, beam_args = parse_args(argv)
    out = Output(args.output)
    if out.skip(args.overwrite):
        return {"skipped": True}
    logging.info("decoding settings from %s", fill_unset(args))
    params = DecodeParams.from_options(args)
    handler = EngineHandler(
        args.model,
        params,
        dtype=args.dtype,
        template=args.template,
        batch_size=args.batch_size,
        kernels=DecodeKernels(args.kernels),
    )
    langs = [x for x in args.langs.split(",") if x]
    rows = eval_rows(args.eval, langs, args.eval_dir, args.limit) if args.eval else None
    t0 = time.perf_counter()
    p = beam.Pipeline(options=pipeline_options(beam_args))
    build(p, out, handler, rows=rows, input_pattern=args.input, model_name=args.model_name)
    return run_and_commit(p, out, NS, t0)


def main() -> None:
    cli_main(run)


if __name__ == "__main__":
    main()
