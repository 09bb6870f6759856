"""The 6-criterion LLM judge (paper Section 3, Appendix B, Table 2): prompts, reply parsing, batch scoring.

Parsing (`parse_judge_reply`) accepts what judges actually write: the JSON object alone, inside a ```json
fence or surrounded by text; keys in any case/spacing/spelling close to a criterion name or one of its
aliases (Accuracy = factuality, Logical coherence = logic, Correct language = language, ...); values as
numbers, numeric strings, "3 stars", "3/3", "three", star glyphs, or an object with a score/rating/stars
field; the scores may also be nested under one key ("scores": {...}) or given as a list of
{"criterion": ..., "score": ...}. If there is no JSON object, lines "Criterion: N stars" are accepted.
Every one of the six criteria must be present exactly once with a value 1..3 (stars); the score is
stars - 1 (0..2). Anything else raises ParseError and the runner retries, then records the item as failed
with its raw reply.

Probability-weighted scores (G-Eval style, `expected_scores`): the judge is asked for token log-probs
(`logprobs=true, top_logprobs=5`); at the token that carries a criterion's star digit (the first digit 1-3
after that criterion's key), the probabilities of the alternatives "1", "2", "3" among the top log-probs are
renormalised and the expected stars minus 1 is stored in judge_<criterion>_expected (0..2, float). A reply
without log-probs, or a criterion whose digit is not found, gives null.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

from chat.client import (
    ChatOutcome,
    ChatRequest,
    ChatRunner,
    ParseError,
    expected_value,
    rating_distribution,
)
from evalsuite.prompts import judge_prompt
from records.schemas import JUDGE_CRITERIA

ALIASES = {
    "language": ("language", "correctlanguage", "languagecorrectness", "lang", "correctlang"),
    "helpfulness": ("helpfulness", "helpful", "helpfullness"),
    "fluency": ("fluency", "fluent"),
    "factuality": ("accuracy", "factuality", "factualaccuracy", "factual", "factualcorrectness"),
    "logic": ("logicalcoherence", "logic", "logical", "coherence", "logicality", "logicalconsistency"),
    "harmlessness": ("harmlessness", "harmless", "harmlesness", "safety"),
}
_ALIAS_TO_CRITERION = {a: c for c, aliases in ALIASES.items() for a in aliases}
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "un": 1, "deux": 2, "trois": 3}
_SCORE_FIELDS = ("score", "stars", "rating", "value", "grade", "star")
_NAME_FIELDS = ("criterion", "criteria", "name", "aspect", "category")


# The criteria as Table 2 names them, in the prompt's order (the keys of the demo judge's JSON schema).
PROMPT_KEYS = ("Language", "Fluency", "Helpfulness", "Accuracy", "Logical coherence", "Harmlessness")


def judge_schema_format() -> dict[str, Any]:
    """OpenAI `response_format` with a JSON schema: exactly the six Table 2 keys, integers 1..3.

    Only for small local demo judges (infer.server decodes under this schema); real judges get JSON mode.
    """
    props = {k: {"type": "integer", "minimum": 1, "maximum": 3} for k in PROMPT_KEYS}
    schema = {
        "type": "object",
        "properties": props,
        "required": list(PROMPT_KEYS),
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "judge_scores", "strict": True, "schema": schema}}


def binary_schema_format() -> dict[str, Any]:
    """The demo judge's schema for the 0/1 prompts (relevance, modifiers): {"verdict": 0 | 1}."""
    schema = {
        "type": "object",
        "properties": {"verdict": {"type": "integer", "minimum": 0, "maximum": 1}},
        "required": ["verdict"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": schema}}


TOP_LOGPROBS = 5  # alternatives per token asked for with logprobs (the three star digits fit easily)


def judge_params(max_tokens: int | None = 200, schema: bool = False, logprobs: bool = True) -> dict[str, Any]:
    """Request parameters for the judge (paper: JSON mode, temperature 0; `schema`: the demo judge's;
    `logprobs`: also ask for token log-probs, for the probability-weighted scores)."""
    fmt = judge_schema_format() if schema else {"type": "json_object"}
    params: dict[str, Any] = {"temperature": 0, "response_format": fmt}
    if max_tokens:
        params["max_tokens"] = max_tokens
    if logprobs:
        params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
    return params


def _norm_key(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


def criterion_of(key: str) -> str | None:
    """The criterion a reply key names, tolerating case, spacing and small misspellings."""
    k = _norm_key(key)
    if not k:
        return None
    if k in _ALIAS_TO_CRITERION:
        return _ALIAS_TO_CRITERION[k]
    close = difflib.get_close_matches(k, list(_ALIAS_TO_CRITERION), n=1, cutoff=0.8)
    return _ALIAS_TO_CRITERION[close[0]] if close else None


def stars_of(value: Any) -> int:
    """Star count 1..3 from a reply value; ParseError otherwise."""
    if isinstance(value, bool):
        raise ParseError(f"boolean is not a score: {value!r}")
    if isinstance(value, int | float):
        if float(value).is_integer() and 1 <= value <= 3:
            return int(value)
        raise ParseError(f"score {value!r} is not 1, 2 or 3 stars")
    if isinstance(value, dict):
        for f in _SCORE_FIELDS:
            for k, v in value.items():
                if _norm_key(k) == f:
                    return stars_of(v)
        raise ParseError(f"no score field in {value!r}")
    if isinstance(value, str):
        s = value.strip().lower()
        if s and set(s) <= set("★☆⭐ ") and s.count("☆") == 0:
            return stars_of(len(s.replace(" ", "")))
        m = re.fullmatch(r"(\d+(?:\.0+)?)\s*(?:/\s*3|out of 3)?\s*(?:stars?|starts?)?\.?", s)
        if m:
            return stars_of(float(m.group(1)))
        m = re.fullmatch(r"(one|two|three|un|deux|trois)\s*(?:stars?)?\.?", s)
        if m:
            return _NUMBER_WORDS[m.group(1)]
        raise ParseError(f"cannot read a score from {value!r}")
    raise ParseError(f"cannot read a score from {value!r}")


def _json_objects(text: str) -> list[Any]:
    """Every top-level JSON object found in `text`, first to last."""
    found, decoder, i = [], json.JSONDecoder(), 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return found
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = end


def _collect(obj: Any, out: dict[str, list[Any]]) -> None:
    """Criterion -> values found in a reply object (one level of nesting, or a list of named entries)."""
    if isinstance(obj, list):
        for entry in obj:
            if isinstance(entry, dict):
                name = next((v for k, v in entry.items() if _norm_key(k) in _NAME_FIELDS), None)
                c = criterion_of(name) if isinstance(name, str) else None
                if c:
                    out.setdefault(c, []).append(entry)
        return
    if not isinstance(obj, dict):
        return
    for key, value in obj.items():
        c = criterion_of(key)
        if c:
            out.setdefault(c, []).append(value)
        elif isinstance(value, dict | list):
            _collect(value, out)


def _from_lines(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for m in re.finditer(
        r"^[\s*\-#]*([A-Za-z][A-Za-z ]{1,30}?)\s*[:=-]\s*\**\s*([1-3][^\n]*?)\s*$", text, re.M
    ):
        c = criterion_of(m.group(1))
        if c:
            out.setdefault(c, []).append(m.group(2).strip(" *."))
    return out


def parse_judge_reply(text: str) -> dict[str, int]:
    """Scores 0..2 for the six criteria of JUDGE_CRITERIA; ParseError if the reply is not complete."""
    if not text or not text.strip():
        raise ParseError("empty reply")
    found: dict[str, list[Any]] = {}
    for obj in _json_objects(text):
        _collect(obj, found)
    if not found:
        found = _from_lines(text)
    if not found:
        raise ParseError("no JSON object and no 'criterion: score' lines")
    scores = {}
    for c in JUDGE_CRITERIA:
        values = found.get(c)
        if not values:
            raise ParseError(f"criterion {c!r} missing")
        stars = {stars_of(v) for v in values}
        if len(stars) > 1:
            raise ParseError(f"criterion {c!r} has conflicting scores {sorted(stars)}")
        scores[c] = stars.pop() - 1
    return scores


_STAR_TOKEN = re.compile(r'^\s*"?([1-3])(?![\d.])')
_KEY_BEFORE = re.compile(r'"([^"\n]{1,60})"\s*:\s*"?\s*$|([A-Za-z][A-Za-z _-]{0,40}?)\s*[:=]\s*"?\s*\**\s*$')
_QUOTED_KEY = re.compile(r'"([^"\n]{1,60})"\s*:')


def _criterion_before(text: str) -> str | None:
    """The criterion whose value starts right after `text` (a key then ':' at its end), or None."""
    m = _KEY_BEFORE.search(text)
    if not m:
        return None
    key = m.group(1) or m.group(2)
    c = criterion_of(key)
    if c is not None:
        return c
    if _norm_key(key) in _SCORE_FIELDS:  # {"Language": {"score": 3}}: the key of the enclosing object
        for k in reversed(_QUOTED_KEY.findall(text[: m.start()])):
            c = criterion_of(k)
            if c is not None:
                return c
    return None


def expected_scores(logprobs: Sequence[dict[str, Any]] | None) -> dict[str, float | None]:
    """Expected score 0..2 per criterion from a judge reply's token log-probs (None where not found)."""
    out: dict[str, float | None] = dict.fromkeys(JUDGE_CRITERIA)
    if not logprobs:
        return out
    text = ""
    for entry in logprobs:
        token = entry["token"]
        m = _STAR_TOKEN.match(token)
        if m:
            c = _criterion_before(text + token[: m.start(1)])
            if c is not None and out[c] is None:
                ev = expected_value(rating_distribution(entry, _STAR_TOKEN))
                out[c] = None if ev is None else ev - 1
        text += token
    return out


def task_text(messages: Sequence[dict[str, str]]) -> str:
    """The instruction shown to the judge: the last user message."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return m.get("content") or ""
    raise ValueError("no user message in messages")


def judge_request(
    task: str,
    response: str,
    variant: str = "paper",
    max_tokens: int | None = 200,
    schema: bool = False,
    logprobs: bool = True,
) -> ChatRequest:
    """The ChatRequest for one response (JSON mode, temperature 0; `schema`: see judge_schema_format;
    `logprobs`: ask for token log-probs, see expected_scores)."""
    prompt = judge_prompt(task, response, variant)
    params = judge_params(max_tokens, schema, logprobs)
    return ChatRequest([{"role": "user", "content": prompt}], params, parse_judge_reply, 80)


def judge_columns(outcome: ChatOutcome | None) -> dict[str, Any]:
    """Score columns for one item: judge_<criterion> (0..2 or None), judge_status, judge_raw, judge_error,
    judge_<criterion>_expected (probability-weighted 0..2, or None without log-probs)."""
    if outcome is None:
        return {
            **{f"judge_{c}": None for c in JUDGE_CRITERIA},
            "judge_status": "skipped",
            "judge_raw": None,
            "judge_error": None,
            **{f"judge_{c}_expected": None for c in JUDGE_CRITERIA},
        }
    ok = outcome.status == "ok"
    values = outcome.value if ok else {}
    cols: dict[str, Any] = {f"judge_{c}": values.get(c) for c in JUDGE_CRITERIA}
    cols.update(judge_status=outcome.status, judge_raw=outcome.raw, judge_error=outcome.error)
    expected = expected_scores(outcome.logprobs if ok else None)
    cols.update({f"judge_{c}_expected": expected[c] for c in JUDGE_CRITERIA})
    return cols


def judge_all(
    runner: ChatRunner, items: Sequence[tuple[str, str]], variant: str = "paper"
) -> list[dict[str, Any]]:
    """Judges (task, response) pairs; returns judge columns per item, in order."""
    outcomes = runner.run([judge_request(t, r, variant) for t, r in items], desc="judge")
    return [judge_columns(o) for o in outcomes]
