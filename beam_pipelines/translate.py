r"""Translation pipeline: Dolly (JSONL or TRANSLATION_SCHEMA Parquet) → Dolly-DT (source + target languages).

  python -m beam_pipelines.translate --input=dolly.jsonl --src=en --tgt=fr,pt,ru \
      --model=facebook/nllb-200-3.3B --output=out/dolly_dt [--num_beams=4 --batch_size=16 --device=cuda]
  python -m beam_pipelines.translate ... --model=openai:Unbabel/TowerInstruct-7B-v0.2@http://host:8000/v1

Instruction, context and response are split into sentence groups under --max_input_tokens (NLLB: 512),
translated, and joined back keeping line breaks. Ids (the record's `id`, else `dolly-<sha1 of the record>`)
and categories are kept. Output: one Parquet file `PREFIX-00000-of-00001.parquet` in TRANSLATION_SCHEMA
(what train/data.py reads: `data.train_files: [PREFIX-00000-of-00001.parquet]`), the source rows with
translator "source"; records whose translation failed go to `PREFIX.deadletter-*.parquet`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from beam_pipelines.files import RecordError
from beam_pipelines.io import (
    Output,
    check_files,
    cli_main,
    match,
    pipeline_options,
    read_parquet,
    run_and_commit,
)
from beam_pipelines.schemas import TRANSLATION_SCHEMA
from beam_pipelines.translators import ChatTranslatorHandler, Seq2SeqHandler, split_segments

NS = "xlit.translate"
FIELDS = ("instruction", "context", "response")
DEAD_SCHEMA = pa.schema([("id", pa.string()), ("lang", pa.string()), ("reason", pa.string())])


def record_id(rec: dict[str, Any]) -> str:
    if rec.get("id") is not None:
        return str(rec["id"])
    blob = json.dumps([rec.get(f) for f in (*FIELDS, "category")], ensure_ascii=False)
    return "dolly-" + hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def dolly_problem(rec: Any) -> str | None:
    """Why a parsed Dolly line is not a usable record (None if it is)."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    for f in ("instruction", "response"):
        if not isinstance(rec.get(f), str):
            return f"field {f!r} missing or not a string"
    for f in ("context", "category", "id", "lang"):
        if rec.get(f) is not None and not isinstance(rec[f], str | int):
            return f"field {f!r} must be a string"
    return None


def check_dolly_jsonl(pattern: str) -> int:
    """Reads every matched JSONL file once before the pipeline starts (any Beam filesystem) and raises
    RecordError("file:line: ...") on the first line that is not valid JSON or not a Dolly record, so a
    bad input names its file and line instead of failing inside a worker. Returns the number of records."""
    n = 0
    for path in match(pattern):
        with FileSystems.open(path) as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.decode("utf-8").strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError(
                        f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})"
                    ) from None
                problem = dolly_problem(rec)
                if problem:
                    raise RecordError(f"{path}:{lineno}: {problem}")
                n += 1
    return n


class ParseDolly(beam.DoFn):
    """A JSONL line or Parquet row → a source TRANSLATION record (errors name the field)."""

    def __init__(self, src: str):
        self.src = src

    def process(self, value: str | dict) -> Iterator[dict[str, Any]]:
        rec = json.loads(value) if isinstance(value, str) else value
        problem = dolly_problem(rec)
        if problem:  # JSONL inputs were checked with file:line before the run; Parquet rows name the id
            where = f"record {record_id(rec)}" if isinstance(rec, dict) else f"{str(value)[:80]!r}"
            raise ValueError(f"{where}: {problem}")
        yield {
            "id": record_id(rec),
            "lang": rec.get("lang") or self.src,
            "instruction": rec["instruction"],
            "context": rec.get("context") or "",
            "response": rec["response"],
            "category": rec.get("category"),
            "translator": "source",
        }


class SplitFn(beam.DoFn):
    """Source record × target language → keyed segments under the model's input limit."""

    def __init__(self, tgts: Sequence[str], tokenizer: str | None, max_tokens: int):
        self.tgts = list(tgts)
        self.tokenizer_path = tokenizer
        self.max_tokens = max_tokens
        self.segments = Metrics.counter(NS, "segments")

    def setup(self) -> None:
        if self.tokenizer_path:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.tokenizer_path)
            self.count = lambda s: len(tok(s, add_special_tokens=True)["input_ids"])
        else:
            from evalsuite.llm import estimate_tokens

            self.count = estimate_tokens

    def process(self, rec: dict[str, Any]) -> Iterator[tuple[tuple, dict[str, str]]]:
        for tgt in self.tgts:
            for field in FIELDS:
                for k, (seg, sep) in enumerate(split_segments(rec[field], self.count, self.max_tokens)):
                    self.segments.inc()
                    key = (rec["id"], tgt, field, k, sep)
                    yield key, {"text": seg, "src": rec["lang"], "tgt": tgt}


class Assemble(beam.DoFn):
    """(id, tgt) with the source record and the translated segments → one TRANSLATION record."""

    def __init__(self, translator: str):
        self.translator = translator
        self.items = Metrics.counter(NS, "items")
        self.failures = Metrics.counter(NS, "failures")

    def process(self, kv: tuple[tuple[str, str], dict[str, list]]) -> Iterator[Any]:
        (rid, tgt), parts = kv
        (src,) = parts["source"]
        segs = sorted(parts["segments"], key=lambda s: (FIELDS.index(s[0]), s[1]))
        self.items.inc()
        failed = [f"{f}[{k}]" for f, k, _, text in segs if text is None]
        if failed:
            self.failures.inc()
            reason = f"no translation for segment(s) {', '.join(failed)} after retries"
            yield beam.pvalue.TaggedOutput("dead", {"id": rid, "lang": tgt, "reason": reason})
            return
        out = {f: "" for f in FIELDS}
        for field, _, sep, text in segs:
            out[field] += text + sep
        yield {"id": rid, "lang": tgt, **out, "category": src["category"], "translator": self.translator}


def build(
    p: beam.Pipeline,
    input_pattern: str,
    out: Output,
    handler: ModelHandler,
    *,
    src: str,
    tgts: Sequence[str],
    tokenizer: str | None,
    max_input_tokens: int,
) -> dict[str, beam.PCollection]:
    if input_pattern.endswith(".parquet"):
        check_files(input_pattern, TRANSLATION_SCHEMA, ("instruction", "response"))
        raw = read_parquet(p, "ReadDolly", input_pattern)
    else:
        check_dolly_jsonl(input_pattern)
        raw = p | "ReadDolly" >> beam.io.ReadFromText(input_pattern)
    source = raw | "ParseDolly" >> beam.ParDo(ParseDolly(src))
    translated = (
        source
        | "SplitSentences" >> beam.ParDo(SplitFn(tgts, tokenizer, max_input_tokens))
        | "Translate" >> RunInference(KeyedModelHandler(handler))
        | "KeyByRecord"
        >> beam.Map(lambda kv: ((kv[0][0], kv[0][1]), (kv[0][2], kv[0][3], kv[0][4], kv[1].inference)))
    )
    keyed_src = source | "SourceByTarget" >> beam.FlatMap(lambda r: [((r["id"], t), r) for t in tgts])
    assembled = (
        {"source": keyed_src, "segments": translated}
        | "JoinSegments" >> beam.CoGroupByKey()
        | "Assemble"
        >> beam.ParDo(Assemble(getattr(handler, "name", "model"))).with_outputs("dead", main="ok")
    )
    dt = (source, assembled.ok) | "DollyDT" >> beam.Flatten()
    out.write(dt, "WriteDollyDT", TRANSLATION_SCHEMA, num_shards=1)
    out.write(assembled.dead, "WriteDeadLetters", DEAD_SCHEMA, ".deadletter", num_shards=1)
    return {"dt": dt, "dead": assembled.dead}


def make_handler(args: argparse.Namespace) -> tuple[ModelHandler, str | None]:
    if args.model.startswith("openai:"):
        h = ChatTranslatorHandler(
            args.model, batch_size=args.batch_size, cache_dir=args.cache_dir, max_retries=args.max_retries
        )
        return h, None
    h = Seq2SeqHandler(
        args.model,
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        max_input_tokens=args.max_input_tokens,
        device=args.device,
        max_new_tokens=args.max_new_tokens,
    )
    return h, args.model


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    from evalsuite.llm import DEFAULT_CACHE_DIR

    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--input", required=True, help="Dolly JSONL glob, or TRANSLATION_SCHEMA Parquet glob.")
    a.add_argument("--src", default="en")
    a.add_argument("--tgt", default="fr,pt,ru")
    a.add_argument("--model", required=True, help="NLLB/M2M100 dir or hub name, or openai:MODEL[@URL].")
    a.add_argument("--output", required=True)
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--batch_size", type=int, default=16)
    a.add_argument("--num_beams", type=int, default=4)
    a.add_argument("--max_input_tokens", type=int, default=512)
    a.add_argument("--max_new_tokens", type=int, default=None)
    a.add_argument("--device", default="cpu")
    a.add_argument("--cache_dir", default=DEFAULT_CACHE_DIR, help="Reply cache of the chat translator.")
    a.add_argument("--max_retries", type=int, default=6)
    return a.parse_known_args(list(argv))


def run(argv: Sequence[str]) -> dict:
    args, beam_args = parse_args(argv)
    out = Output(args.output)
    if out.skip(args.overwrite):
        return {"skipped": True}
    handler, tokenizer = make_handler(args)
    t0 = time.perf_counter()
    p = beam.Pipeline(options=pipeline_options(beam_args))
    build(
        p,
        args.input,
        out,
        handler,
        src=args.src,
        tgts=args.tgt.split(","),
        tokenizer=tokenizer,
        max_input_tokens=args.max_input_tokens,
    )
    return run_and_commit(p, out, NS, t0)


def main() -> None:
    cli_main(run)


if __name__ == "__main__":
    main()
