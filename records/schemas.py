"""Arrow schemas for every record that crosses a stage boundary, in one place.

Stages (translate → train → generate → score → report) exchange Parquet files. Each schema lists the
columns and their types; a file may carry more columns (they are passed through unchanged). `*_REQUIRED`
names the columns a row must fill (non-null); the others may be missing or null. The row models of
`records.rows` mirror these (tests/test_records.py checks names, types and required columns). `evalsuite`,
`infer`, `reporting` and `beam_pipelines` all import these definitions; this module needs only pyarrow.

Ids are strings, unique within a file. Evaluation records also carry `item` (the 0-based line in the
released files), which aligns the same instruction across languages.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from records.errors import InputError

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

# One instruction to answer (evaluation set, modifier set, or any user file).
INSTRUCTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("eval_set", pa.string()),  # "paper" | "modifiers" | free text for user files
        ("item", pa.int32()),  # line index in the released files (aligned across languages)
        ("lang", pa.string()),  # ISO 639-1 of the instruction: en, fr, pt, ru, ...
        ("task", pa.string()),  # one of the 25 task labels (data/eval/tasks.json), or null
        ("messages", MESSAGES),
        ("modifier_type", pa.string()),  # short, long, num_items, lang, markdown_template, ... or null
        ("modifier_arg", pa.string()),  # N for num_items, target language for lang, else null
        ("base_instruction", pa.string()),  # the instruction without its modifier, or null
    ]
)
INSTRUCTION_REQUIRED = ("id", "messages")

# A Dolly-style training record, in one language (output of the translation pipeline).
TRANSLATION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("lang", pa.string()),
        ("instruction", pa.string()),
        ("context", pa.string()),
        ("response", pa.string()),
        ("category", pa.string()),
        ("translator", pa.string()),  # model that produced it; "source" for the original language
        # provenance and quality (beam_pipelines.translate; null in files written before them):
        ("source_id", pa.string()),  # id of the source record it was translated from (its own id for sources)
        ("decoding", pa.string()),  # JSON: translator model and decoding settings; null for sources
        # quality flags (beam_pipelines.quality.FLAGS): [] = clean; train/data.py skips a record with any
        ("flags", pa.list_(pa.string())),
    ]
)
TRANSLATION_REQUIRED = ("instruction", "response")

# One model response. Any input column not listed here is passed through.
GENERATION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", MESSAGES),
        ("response", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("response_tokens", pa.int32()),
        ("finish_reason", pa.string()),  # "stop" (EOS or stop string) | "length"
        ("model", pa.string()),
        ("decoding", pa.string()),  # JSON of the decoding parameters
    ]
)
GENERATION_REQUIRED = ("id", "messages")  # response is null on a row whose generation failed (see `error`)
# What infer writes: GENERATION_SCHEMA plus `error` (why a row has no response; null when it has one).
GENERATION_OUTPUT_SCHEMA = pa.schema([*GENERATION_SCHEMA, pa.field("error", pa.string())])

JUDGE_CRITERIA = ("language", "helpfulness", "fluency", "factuality", "logic", "harmlessness")

# Scores of one response. Null means "not measured" (e.g. no judge configured), never "failed":
# failures are recorded in judge_status / judge_raw.
# Columns are documented in docs/evalsuite.md (written by evalsuite.score).
SCORE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("lang", pa.string()),  # language of the instruction (passed through from the input)
        (
            "expected_lang",
            pa.string(),
        ),  # expected language of the response: lang, or XX for lang_XX modifiers
        ("lang_pred", pa.string()),  # fastText top label of the whole response (null if empty)
        ("lang_prob", pa.float32()),
        ("lang_correct", pa.bool_()),  # lang_pred == expected_lang
        ("code_switch_rate", pa.float32()),  # share of sentences in another language (null: no long sentence)
        ("spell_ok_rate", pa.float32()),  # share of words passing Hunspell (null: no word or no dictionary)
        ("relevance", pa.int8()),  # 0/1 (Table 3 prompt)
        ("relevance_status", pa.string()),  # "ok" | "failed" | "skipped"
        ("relevance_raw", pa.string()),
        *[(f"judge_{c}", pa.int8()) for c in JUDGE_CRITERIA],  # 0..2 (stars - 1)
        ("judge_status", pa.string()),  # "ok" | "failed" | "skipped"
        ("judge_raw", pa.string()),
        ("judge_error", pa.string()),  # why a failed item failed (parse error, HTTP error, cost cap)
        ("modifier_ok", pa.bool_()),  # modifier fulfilled (null: no modifier, or not checked)
        ("modifier_status", pa.string()),  # "ok" | "failed" | "skipped" | null (no modifier)
        ("modifier_detail", pa.string()),  # what the check found, or the LLM's raw reply
        ("judge_helpfulness_mod", pa.int8()),  # helpfulness capped at 1 if the modifier is not fulfilled
        # probability-weighted scores (G-Eval style) when the endpoint returned token log-probs, else null:
        # expected score 0..2 over the rating tokens of each criterion, P(relevant) for relevance
        *[(f"judge_{c}_expected", pa.float32()) for c in JUDGE_CRITERIA],
        ("relevance_expected", pa.float32()),
    ]
)
SCORE_REQUIRED = ("id", "lang")

# Human ratings (docs/results.md "Human ratings", written by `reporting.annotate import`): one row per
# (annotator, rated response); one int8 column per judge criterion (0/1/2, null = not rated); uid and
# packet trace the row back to the annotation packet.
HUMAN_SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("id", pa.string()),
        ("item", pa.int32()),
        ("lang", pa.string()),
        ("task", pa.string()),
        ("annotator", pa.string()),
        *[(c, pa.int8()) for c in JUDGE_CRITERIA],
        ("uid", pa.string()),
        ("packet", pa.string()),
    ]
)
HUMAN_REQUIRED = ("run", "id", "lang", "annotator")

# A record a pipeline could not process (beam_pipelines: `PREFIX.deadletter-*.parquet`): its id, the stage
# that failed, why, and the record itself as JSON.
DEAD_LETTER_SCHEMA = pa.schema(
    [("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("record", pa.string())]
)
DEAD_LETTER_REQUIRED = ("id", "stage", "reason")


class SchemaError(InputError):
    """A file does not match the schema a stage expects."""


def validate(table: pa.Table, schema: pa.Schema, source: str, required: Iterable[str] | None = None) -> None:
    """Checks that `table` has every required column of `schema` with a compatible type.

    Args:
      table: the table read from `source`.
      schema: the expected schema.
      source: file name used in the error message.
      required: column names that must be present (default: all of `schema`).

    Raises:
      SchemaError naming the file, the column and the expected type.
    """
    names = set(table.column_names)
    wanted = list(required) if required is not None else schema.names
    for name in wanted:
        expected = schema.field(name).type
        if name not in names:
            raise SchemaError(f"{source}: missing column {name!r} (expected type {expected})")
        got = table.schema.field(name).type
        if got != expected and not (pa.types.is_null(got) or _castable(got, expected)):
            raise SchemaError(f"{source}: column {name!r} has type {got}, expected {expected}")


def _castable(got: pa.DataType, expected: pa.DataType) -> bool:
    """Integer widths and string/large_string differ between writers; anything else is a mismatch."""
    if pa.types.is_integer(got) and pa.types.is_integer(expected):
        return True
    if pa.types.is_floating(got) and pa.types.is_floating(expected):
        return True
    if (pa.types.is_string(got) or pa.types.is_large_string(got)) and pa.types.is_string(expected):
        return True
    if pa.types.is_list(got) and pa.types.is_list(expected):
        return got.value_type == expected.value_type
    return False
