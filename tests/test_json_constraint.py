"""JSON-constrained decoding on llguidance (infer.grammar, infer.json_constraint), without a model: random
walks over the allowed tokens (uniform, so long junk tokens are as likely as sensible ones) must always end in a
reply that parses and fits the schema within the token budget; schema errors name `json_schema`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evalsuite.judge import PROMPT_KEYS, judge_schema_format
from infer.json_constraint import (
    JSON_OBJECT,
    JsonObjectConstraint,
    JsonVocab,
    parse_response_format,
    schema_format,
)
from models.tokenizer import ChatTokenizer
from tests.constraint_helpers import BOOK_SCHEMA, RICH_SCHEMA, check_book, check_rich

PAD = 64  # model vocabularies are often padded past the tokenizer's


@pytest.fixture(scope="module")
def tokenizer(tiny_hf_dir) -> ChatTokenizer:
    return ChatTokenizer(tiny_hf_dir)


@pytest.fixture(scope="module")
def vocab(tokenizer) -> JsonVocab:
    return JsonVocab(tokenizer, len(tokenizer.tok) + PAD, [tokenizer.eos_token_id, 0])


def walk(constraint, budget: int, rng: np.random.Generator, vocab: JsonVocab) -> str:
    """Uniformly random allowed tokens until EOS or the budget; the text (EOS left out)."""
    out = []
    for step in range(budget):
        allowed = constraint.allowed(budget - step)
        assert not allowed[-PAD:].any(), "padding ids are never allowed"
        ids = np.flatnonzero(allowed)
        assert len(ids), f"nothing allowed after {out}"
        tok = int(rng.choice(ids))
        if vocab.eos[tok]:
            assert allowed[vocab.eos].all(), "EOS ids are allowed together"
            break
        constraint.advance(tok)
        out.append(tok)
    return b"".join(vocab.pieces[t] for t in out).decode("utf-8")


def test_json_object_closes_within_any_budget(vocab):
    rng = np.random.default_rng(0)
    for budget in (2, 3, 5, 9, 14, 24):
        for _ in range(4):
            text = walk(JsonObjectConstraint(vocab), budget, rng, vocab)
            assert isinstance(json.loads(text), dict), (budget, text)
    c = JsonObjectConstraint(vocab)
    assert not c.allowed(10)[vocab.eos].any()  # EOS only once the object is complete
    assert c.closing_text() == "{}"
    head = b'{"a": "\xc3'  # a token that leaves a UTF-8 character open: the closing path finishes it
    for b in head:
        c.advance(int(vocab.byte_token[b]))
    tail = b"".join(vocab.pieces[t] for t in c.closing())
    assert json.loads(head + tail) == {"a": (b"\xc3" + tail[:1]).decode()} and len(tail) == 3
    # with too few tokens left, the closing path is forced all the same (the reply ends as "length")
    assert c.allowed(3)[c.closing()[0]] and np.flatnonzero(c.allowed(2)).tolist() == c.closing()[:1]


def test_rich_schema_replies_fit_the_schema_within_the_budget(vocab):
    fmt = parse_response_format({"type": "json_schema", "json_schema": {"name": "r", "schema": RICH_SCHEMA}})
    shortest = vocab.min_tokens(fmt.grammar)
    assert shortest is not None and 10 < shortest < 60
    start = vocab.constraint(fmt.grammar)
    check_rich(json.loads(start.closing_text()))
    rng = np.random.default_rng(1)
    for budget in (shortest, shortest + 3, shortest + 12, 120):
        for _ in range(3):
            text = walk(vocab.constraint(fmt.grammar), budget, rng, vocab)
            check_rich(json.loads(text))


def test_numbers_with_a_lower_bound_close_too(vocab):
    # a number that cannot be 0 followed by more: the closing path ends it (`,`) instead of adding digits
    for schema, closing in (
        ({"type": "array", "items": {"type": "integer", "minimum": 5}, "minItems": 2}, "[10, 10]"),
        (BOOK_SCHEMA, None),
    ):
        fmt = schema_format(schema)
        shortest = vocab.min_tokens(fmt.grammar)
        assert shortest is not None, schema
        assert closing is None or vocab.constraint(fmt.grammar).closing_text() == closing
    rng = np.random.default_rng(3)
    for budget in (shortest, shortest + 5, 80):
        for _ in range(3):
            check_book(json.loads(walk(vocab.constraint(fmt.grammar), budget, rng, vocab)))


def test_judge_schema_is_exact_json_dumps_layout(vocab):
    fmt = judge_schema_format()
    fmt["json_schema"]["schema"]["properties"]["Accuracy"] = {"type": "integer", "minimum": 7, "maximum": 12}
    general = parse_response_format(fmt)
    assert vocab.min_tokens(general.grammar) <= len(json.dumps({k: 1 for k in PROMPT_KEYS}))
    rng = np.random.default_rng(2)
    for _ in range(6):
        text = walk(vocab.constraint(general.grammar), 150, rng, vocab)
        obj = json.loads(text)
        assert list(obj) == list(PROMPT_KEYS) and text == json.dumps(obj), text
        assert all(1 <= v <= 3 for k, v in obj.items() if k != "Accuracy") and 7 <= obj["Accuracy"] <= 12


def test_a_token_outside_the_grammar_is_refused(vocab, tokenizer):
    c = JsonObjectConstraint(vocab)
    bad = tokenizer.tok("hello", add_special_tokens=False)["input_ids"][0]
    assert not c.allowed(10)[bad]
    with pytest.raises(ValueError, match="not allowed by the grammar"):
        c.advance(bad)


def test_schemas_the_library_supports_are_accepted_and_others_name_json_schema():
    ok = [
        {"type": "object", "properties": {"a": {"type": "string"}}},
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}},
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": []},
        {"type": "array", "items": {"type": "number"}, "minItems": 1},
        {"oneOf": [{"type": "string", "format": "date"}, {"const": 3}]},
        RICH_SCHEMA,
    ]
    for schema in ok:
        fmt = parse_response_format({"type": "json_schema", "json_schema": {"schema": schema}})
        assert fmt.kind == "json_schema" and fmt == schema_format(json.dumps(schema))
    bad = [
        {"type": "strng"},
        {"$ref": "#/$defs/missing"},
        {"type": "string", "pattern": "(unclosed"},
        {"type": "string", "format": "no-such-format"},
        3,
        "{not json",
    ]
    for schema in bad:
        with pytest.raises(ValueError, match="json_schema"):
            parse_response_format({"type": "json_schema", "json_schema": {"schema": schema}})
    for rf in ({"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "x"}}):
        with pytest.raises(ValueError, match=r"json_schema\.schema"):
            parse_response_format(rf)
    with pytest.raises(ValueError, match="not supported"):
        parse_response_format({"type": "xml"})
    assert parse_response_format({"type": "text"}) is None and parse_response_format(None) is None
    assert parse_response_format({"type": "json_object"}) is JSON_OBJECT
