"""JSON response formats (OpenAI `response_format`) as llguidance grammars, decoded with infer.grammar.

* `{"type": "json_object"}`: the reply is one JSON object (schema `{"type": "object"}`, free whitespace).
* `{"type": "json_schema", "json_schema": {"schema": {...}}}`: any JSON Schema llguidance supports (types,
  properties/required/additionalProperties, enum/const, anyOf/oneOf/allOf, $ref/$defs, minimum/maximum,
  minLength/maxLength/pattern/format, items/prefixItems/minItems/maxItems, ...). An invalid schema or an
  unsupported keyword raises ValueError naming `json_schema` (the server answers 400). Layout: `json.dumps`'s —
  `", "` between items, `": "` after keys, no other whitespace — unless the schema's own `"x-guidance"` options
  say otherwise; properties come in schema order.

`parse_response_format(body["response_format"])` gives a hashable `JsonFormat` (None for text);
`JsonVocab(tokenizer, vocab_size, eos_ids).constraint(fmt.grammar)` one row's constraint (the table is built once
per tokenizer, grammars are compiled once per table); `JsonObjectConstraint(vocab)` one json_object row
(what `Engine.json_constraint()` hands out).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from llguidance import LLMatcher

from infer.grammar import GrammarConstraint, TokenTable, token_bytes, validate

__all__ = [
    "JSON_OBJECT",
    "JsonObjectConstraint",
    "JsonVocab",
    "JsonFormat",
    "parse_response_format",
    "schema_format",
    "token_bytes",
]

# json.dumps's layout for json_schema replies (a schema's "x-guidance" options override it)
SCHEMA_LAYOUT = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


@dataclasses.dataclass(frozen=True)
class JsonFormat:
    """A constrained reply format: its kind and its llguidance grammar (JSON text; the cache key)."""

    kind: str  # "json_object" | "json_schema"
    grammar: str
    name: str = ""


JSON_OBJECT = JsonFormat("json_object", LLMatcher.grammar_from_json_schema({"type": "object"}))


def schema_format(schema: Any, name: str = "") -> JsonFormat:
    """A JSON Schema (dict or JSON text) as a JsonFormat; ValueError if llguidance cannot compile it."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"json_schema.schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict | bool):
        raise ValueError(f"json_schema.schema must be an object, got {type(schema).__name__}")
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=SCHEMA_LAYOUT)  # type: ignore[arg-type]
    except ValueError as e:
        raise ValueError(f"json_schema.schema: {e}") from None
    err = validate(grammar)
    if err:
        raise ValueError(f"json_schema.schema is not supported: {err.strip()}")
    return JsonFormat("json_schema", grammar, name)


def parse_response_format(response_format: Any) -> JsonFormat | None:
    """An OpenAI `response_format` → None (text), JSON_OBJECT, or a json_schema JsonFormat.

    ValueError (message names the field) for a malformed object, an unknown type or an unsupported schema.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind != "json_schema":
        raise ValueError(f"response_format type {kind!r} is not supported (text, json_object, json_schema)")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise ValueError("response_format.json_schema.schema is required (an object)")
    name = spec.get("name", "")
    return schema_format(spec["schema"], name if isinstance(name, str) else "")


class JsonVocab(TokenTable):
    """Per-tokenizer tables shared by all constraints (a TokenTable; the former automaton's name)."""


class JsonObjectConstraint(GrammarConstraint):
    """One row whose reply must be a JSON object."""

    def __init__(self, vocab: TokenTable):
        super().__init__(vocab, vocab.matcher(JSON_OBJECT.grammar))
