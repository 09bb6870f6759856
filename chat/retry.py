"""Transport retries of one chat call (tenacity): which failures are retried and how long to wait.

Retried: 429, 5xx, timeouts, connection errors and 200 responses whose body is not a chat completion, with
exponential backoff and jitter (`Backoff`); a rejected `logprobs` parameter (`LogprobsRejected`) is retried
at once. Anything else (401, other 4xx, a refused budget reservation) ends the call at the first attempt.
The openai client's own retries stay off, so that every attempt passes the runner's cost budget.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import tenacity


class BadReply(Exception):
    """A 200 response whose body is not a chat completion."""


class LogprobsRejected(Exception):
    """The endpoint answered 400 to the `logprobs` parameter; the next attempt goes without it."""


def retryable_errors() -> tuple[type[BaseException], ...]:
    """Transport failures worth another attempt after a backoff."""
    import openai  # imported lazily: it takes seconds, and surface-only scoring never needs it

    return (
        BadReply,
        openai.RateLimitError,
        openai.InternalServerError,
        openai.APITimeoutError,
        openai.APIConnectionError,
        openai.APIResponseValidationError,
        json.JSONDecodeError,
    )


class Backoff(tenacity.wait.wait_base):
    """Wait before attempt n+1: min(max_s, first_s * 2**(n-1)) * U(0.5, 1), raised to the server's
    Retry-After header (both capped at max_s); no wait after a LogprobsRejected."""

    def __init__(self, first_s: float, max_s: float, uniform: Callable[[], float] = random.random):
        self.first_s = first_s
        self.max_s = max_s
        self.uniform = uniform

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        err = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(err, LogprobsRejected):
            return 0.0
        n = retry_state.attempt_number  # attempts made so far (1 after the first)
        delay = min(self.max_s, self.first_s * 2 ** (n - 1)) * (0.5 + self.uniform() / 2)
        resp = getattr(err, "response", None)
        if resp is not None:
            try:
                delay = min(self.max_s, max(delay, float(resp.headers.get("retry-after", 0))))
            except (TypeError, ValueError):
                pass
        return delay


def transport_retrying(
    max_retries: int, backoff_s: float, backoff_max_s: float, retryable: tuple[type[BaseException], ...]
) -> tenacity.Retrying:
    """Up to 1 + max_retries attempts; after the last, the last attempt's exception is raised as is."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max_retries + 1),
        wait=Backoff(backoff_s, backoff_max_s),
        retry=tenacity.retry_if_exception_type((*retryable, LogprobsRejected)),
        reraise=True,
    )
