"""Relevance to the task (paper Appendix B, Table 3): a 0/1 verdict from any OpenAI-compatible chat model.

The paper prompted LLaMA-2-chat and took "the last 0 or 1 digit" of the output; we take the last 0 or 1
that is not part of a longer number (so "10 steps" or "2021" do not count). No digit -> ParseError, the
runner retries, then records the item as failed with the raw reply.

With token log-probs (asked for by default), `relevance_expected` is P(1) / (P(0) + P(1)) at the token that
carries the last standalone 0/1 digit (null without log-probs).
"""

from __future__ import annotations

import re
from typing import Any

from chat.client import (
    ChatOutcome,
    ChatRequest,
    ParseError,
    expected_value,
    rating_distribution,
)
from evalsuite.prompts import relevance_prompt

_BINARY = re.compile(r"(?<![\d.])[01](?![\d.]*\d)")
_BINARY_TOKEN = re.compile(r'^\s*"?([01])(?![\d.])')
TOP_LOGPROBS = 5


def parse_binary_reply(text: str) -> int:
    """The last standalone 0/1 digit of a reply."""
    digits = _BINARY.findall(text or "")
    if not digits:
        raise ParseError("no 0/1 digit in the reply")
    return int(digits[-1])


def expected_binary(logprobs: list[dict[str, Any]] | None) -> float | None:
    """P(1) / (P(0) + P(1)) at the token of the reply's last standalone 0/1 digit (None if not found)."""
    if not logprobs:
        return None
    text, found = "", None
    for entry in logprobs:
        token = entry["token"]
        m = _BINARY_TOKEN.match(token)
        prev = text + token[: m.start(1)] if m else ""
        if m and not (prev and (prev[-1].isdigit() or prev[-1] == ".")):
            found = entry
        text += token
    return expected_value(rating_distribution(found, _BINARY_TOKEN)) if found is not None else None


def relevance_params(max_tokens: int | None = 32, logprobs: bool = True) -> dict[str, Any]:
    params: dict[str, Any] = {"temperature": 0}
    if max_tokens:
        params["max_tokens"] = max_tokens
    if logprobs:
        params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
    return params


def relevance_request(
    task: str, response: str, max_tokens: int | None = 32, logprobs: bool = True
) -> ChatRequest:
    prompt = relevance_prompt(task, response)
    return ChatRequest(
        [{"role": "user", "content": prompt}], relevance_params(max_tokens, logprobs), parse_binary_reply, 4
    )


def relevance_columns(outcome: ChatOutcome | None) -> dict[str, Any]:
    """relevance (0/1 or None), relevance_status (ok | failed | skipped), relevance_raw, relevance_expected
    (P(relevant) from the log-probs, or None)."""
    if outcome is None:
        return {
            "relevance": None,
            "relevance_status": "skipped",
            "relevance_raw": None,
            "relevance_expected": None,
        }
    ok = outcome.status == "ok"
    return {
        "relevance": outcome.value if ok else None,
        "relevance_status": outcome.status,
        "relevance_raw": outcome.raw,
        "relevance_expected": expected_binary(outcome.logprobs) if ok else None,
    }
