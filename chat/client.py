"""Calls to an OpenAI-compatible chat endpoint for the judge, relevance and modifier prompts.

One engine (`ChatRunner`) provides what every LLM-based metric needs:
  * the official `openai` client against api.openai.com or any base URL (`openai:MODEL@BASE_URL`);
  * the API key only from the environment (OPENAI_API_KEY or the variable named by `api_key_env`); it is
    never logged and is scrubbed from any error text that is recorded;
  * an on-disk cache (`chat.cache.ChatCache`, sqlite) keyed by sha256 of (model, messages, parameters)
    -- not the base URL -- so a rerun makes zero HTTP calls;
  * bounded concurrency (a thread pool), retries (tenacity, `chat.retry`) with exponential backoff and
    jitter on 429, 5xx, timeouts, connection errors and malformed bodies (Retry-After honoured, capped),
    each attempt passing the cost budget, and separate retries when the reply cannot be parsed;
  * a progress bar (tqdm, on stderr) over a batch when stderr is a terminal, else a log line every 100;
  * token and cost accounting, a cost estimate before starting and a hard cap (`max_cost_usd`);
  * token log-probabilities: a request whose params ask for `logprobs` gets the reply's
    `choices[0].logprobs.content` (token, logprob, top_logprobs) in `ChatOutcome.logprobs`, cached with the
    reply; an endpoint that answers 400 to the `logprobs` parameter is asked again without it (and the
    runner stops sending it), the outcome then has no log-probs;
  * `bypass_cache`: replies are neither read from nor written to the cache (repeatability checks).
An item whose reply stays unparseable is returned as failed with the raw reply (and cached as such, so a
rerun reproduces it without calls unless `retry_failed`); an item that exhausts transport retries is
returned as failed and not cached.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
from tqdm import tqdm

from chat.cache import ChatCache, cache_key
from chat.retry import BadReply, LogprobsRejected, retryable_errors, transport_retrying
from records.errors import InputError

DEFAULT_JUDGE_MODEL = "gpt-3.5-turbo-0125"
DEFAULT_CACHE_DIR = "~/.cache/xlit/judge"

# USD per 1M (prompt, completion) tokens; unknown models (local servers) cost 0 unless a price is given.
PRICES_PER_MTOK = {
    "gpt-3.5-turbo-0125": (0.50, 1.50),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}


class ParseError(ValueError):
    """A reply could not be turned into a verdict."""


class LLMConfigError(InputError):
    """A model spec or key setting is unusable."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Parsed `openai:MODEL[@BASE_URL]`."""

    model: str
    base_url: str | None = None

    def __str__(self) -> str:
        return f"openai:{self.model}" + (f"@{self.base_url}" if self.base_url else "")


def parse_model_spec(spec: str | None, default_model: str = DEFAULT_JUDGE_MODEL) -> ModelSpec | None:
    """'none' -> None; 'openai' -> default model; 'openai:MODEL'; 'openai:MODEL@http://host:port/v1'."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    spec = spec.strip()
    if spec == "openai":
        return ModelSpec(default_model)
    if not spec.startswith("openai:"):
        raise LLMConfigError(f"model spec {spec!r}: expected none | openai:MODEL | openai:MODEL@BASE_URL")
    rest = spec[len("openai:") :]
    model, _, base_url = rest.partition("@")
    if not model:
        raise LLMConfigError(f"model spec {spec!r}: empty model name")
    if base_url and not base_url.startswith(("http://", "https://")):
        raise LLMConfigError(f"model spec {spec!r}: base URL must start with http:// or https://")
    return ModelSpec(model, base_url or None)


def estimate_tokens(text: str) -> int:
    """A conservative token estimate without a tokenizer: UTF-8 bytes / 3.5 (Cyrillic counts double)."""
    return math.ceil(len(text.encode("utf-8")) / 3.5)


@dataclasses.dataclass
class ChatRequest:
    """One prompt. `parser` turns the reply text into a value or raises ParseError."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    parser: Callable[[str], Any]
    expected_completion_tokens: int = 60


@dataclasses.dataclass
class ChatOutcome:
    status: str  # "ok" | "failed"
    value: Any = None
    raw: str | None = None
    error: str | None = None
    cached: bool = False
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # choices[0].logprobs.content when asked for and returned: [{"token", "logprob", "top_logprobs":
    # [{"token", "logprob"}, ...]}, ...]; None otherwise
    logprobs: list[dict[str, Any]] | None = None


class Budget:
    """A cost cap shared by several runners (judge, relevance, modifier judge) of one scoring run.

    Before each call the runner reserves the call's estimated cost; a call whose reservation would pass the
    cap is not made. After the call the reservation is replaced by the cost the server reported.
    """

    def __init__(self, max_cost_usd: float | None = None):
        self.max_cost_usd = max_cost_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self._lock = threading.Lock()

    def try_reserve(self, usd: float) -> bool:
        with self._lock:
            if self.max_cost_usd is not None and self.spent_usd + self.reserved_usd + usd > self.max_cost_usd:
                return False
            self.reserved_usd += usd
            return True

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self.reserved_usd -= reserved
            self.spent_usd += actual


@dataclasses.dataclass
class RunStats:
    http_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    transport_errors: int = 0
    parse_errors: int = 0
    failed: int = 0


class _GiveUp(Exception):
    """An attempt that is not retried (budget refused, 401/4xx, a bad parameter); out.error says why."""


LOGPROB_PARAMS = ("logprobs", "top_logprobs")


def logprobs_content(choice: Any) -> list[dict[str, Any]] | None:
    """`choice.logprobs.content` of a chat completion as plain dicts (token, logprob, top_logprobs)."""
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    if not content:
        return None
    out = []
    for c in content:
        tops = getattr(c, "top_logprobs", None) or []
        out.append(
            {
                "token": c.token,
                "logprob": float(c.logprob),
                "top_logprobs": [{"token": t.token, "logprob": float(t.logprob)} for t in tops],
            }
        )
    return out


class Estimator:
    """Price, cache lookup and the call/cost estimate of one model -- no client, no API key needed.

    ChatRunner extends it; `study.grid --dry_run` uses it alone to estimate without a key or network.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        cache: ChatCache | None = None,
        price_per_mtok: tuple[float, float] | None = None,
        retry_failed: bool = False,
    ):
        self.spec = spec
        self.cache = cache
        self.price = price_per_mtok or PRICES_PER_MTOK.get(spec.model, (0.0, 0.0))
        self.retry_failed = retry_failed

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6

    def _key(self, req: ChatRequest) -> str:
        return cache_key(self.spec.model, req.messages, req.params)

    def _cached(self, req: ChatRequest) -> tuple[str, str, int, int] | None:
        if self.cache is None:
            return None
        hit = self.cache.get(self._key(req))
        if hit is None or (hit[0] == "failed" and self.retry_failed):
            return None
        return hit

    def estimate(self, requests: Sequence[ChatRequest]) -> dict[str, float]:
        """Calls still needed (not cached), their estimated tokens and cost in USD (one attempt each)."""
        todo = [r for r in requests if self._cached(r) is None]
        pt = sum(estimate_tokens("".join(m["content"] for m in r.messages)) + 8 for r in todo)
        ct = sum(r.expected_completion_tokens for r in todo)
        return {
            "calls": len(todo),
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "cost_usd": self.cost(pt, ct),
        }


class ChatRunner(Estimator):
    """Runs ChatRequests against one model with cache, retries, bounded concurrency and a cost cap."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        cache: ChatCache | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 6,
        parse_retries: int = 2,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        concurrency: int = 8,
        max_cost_usd: float | None = None,
        budget: Budget | None = None,
        price_per_mtok: tuple[float, float] | None = None,
        retry_failed: bool = False,
        bypass_cache: bool = False,
    ):
        super().__init__(spec, cache=cache, price_per_mtok=price_per_mtok, retry_failed=retry_failed)
        self.bypass_cache = bypass_cache
        self.logprobs_supported = True  # False after the endpoint rejected the logprobs parameter
        self.parse_retries = parse_retries
        self.concurrency = max(1, concurrency)
        self.budget = budget or Budget(max_cost_usd)
        self.stats = RunStats()
        self._lock = threading.Lock()
        key = os.environ.get(api_key_env)
        if not key:
            if spec.base_url is None:
                raise LLMConfigError(f"set the API key in the environment variable {api_key_env}")
            key = "EMPTY"  # local OpenAI-compatible servers usually ignore the key
        self._secret = key
        import openai

        self._openai = openai
        self._retryable = retryable_errors()
        self._retrying = transport_retrying(max_retries, backoff_s, backoff_max_s, self._retryable)
        # the client's own retries stay off: each attempt must pass the budget and be counted
        self._client = openai.OpenAI(api_key=key, base_url=spec.base_url, timeout=timeout_s, max_retries=0)

    def __repr__(self) -> str:
        return f"ChatRunner({self.spec}, concurrency={self.concurrency})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret != "EMPTY" else text

    def _attempt(self, req: ChatRequest, out: ChatOutcome) -> str:
        """One HTTP call within the cost budget: the reply text, or an exception with out.error set.

        The reply's log-probs (when asked for and returned) go to out.logprobs."""
        params = req.params
        if not self.logprobs_supported:
            params = {k: v for k, v in params.items() if k not in LOGPROB_PARAMS}
        est = self.cost(estimate_tokens(str(req.messages)), req.expected_completion_tokens)
        if not self.budget.try_reserve(est):
            cap, spent = self.budget.max_cost_usd, self.budget.spent_usd
            out.error = f"cost cap ${cap} reached (${spent:.4f} spent); not called"
            raise _GiveUp(out.error)
        with self._lock:
            self.stats.http_calls += 1
        out.calls += 1
        try:
            resp = self._client.chat.completions.create(
                model=self.spec.model, messages=req.messages, **params
            )
            if not getattr(resp, "choices", None) or resp.choices[0].message is None:
                raise BadReply(f"reply without choices: {str(resp)[:200]}")
        except self._retryable as e:  # a timed-out call may still be billed: keep its estimate
            self.budget.settle(est, est if isinstance(e, self._openai.APITimeoutError) else 0.0)
            with self._lock:
                self.stats.transport_errors += 1
            out.error = self._scrub(f"{type(e).__name__}: {e}")[:500]
            raise
        except (self._openai.APIStatusError, TypeError, AttributeError) as e:
            self.budget.settle(est, 0.0)
            out.error = self._scrub(f"{type(e).__name__}: {e}")[:500]
            rejected = isinstance(e, self._openai.BadRequestError) and "logprobs" in str(e)
            if rejected and any(k in params for k in LOGPROB_PARAMS):
                logging.warning("%s rejects the logprobs parameter; asking without it", self.spec)
                self.logprobs_supported = False
                raise LogprobsRejected(out.error) from e
            raise _GiveUp(out.error) from e
        usage = getattr(resp, "usage", None)
        text = resp.choices[0].message.content or ""
        out.logprobs = logprobs_content(resp.choices[0]) if "logprobs" in params else None
        pt = getattr(usage, "prompt_tokens", None) or estimate_tokens(str(req.messages))
        ct = getattr(usage, "completion_tokens", None) or estimate_tokens(text)
        out.prompt_tokens += pt
        out.completion_tokens += ct
        with self._lock:
            self.stats.prompt_tokens += pt
            self.stats.completion_tokens += ct
            self.stats.cost_usd += self.cost(pt, ct)
        self.budget.settle(est, self.cost(pt, ct))
        return text

    def _call(self, req: ChatRequest, out: ChatOutcome) -> str | None:
        """One reply text with transport retries; None (and out.error set) if every attempt failed."""
        try:
            return self._retrying(self._attempt, req, out)
        except (_GiveUp, LogprobsRejected, *self._retryable):
            return None

    def run_one(self, req: ChatRequest) -> ChatOutcome:
        """Cache lookup, then up to 1 + parse_retries replies until one parses."""
        hit = None if self.bypass_cache else self._cached(req)
        if hit is not None:
            status, raw, pt, ct = hit
            try:
                value = req.parser(raw)
            except ParseError as e:
                if status == "failed":  # reproduce the recorded failure without calling
                    with self._lock:
                        self.stats.cache_hits += 1
                        self.stats.failed += 1
                    return ChatOutcome("failed", None, raw, f"unparseable reply: {e}", True, 0, pt, ct)
            else:  # also a cached failure that today's parser understands
                with self._lock:
                    self.stats.cache_hits += 1
                lp = self.cache.get_logprobs(self._key(req)) if self.cache is not None else None
                return ChatOutcome("ok", value, raw, None, True, 0, pt, ct, lp)
        out = ChatOutcome("failed")
        for _ in range(self.parse_retries + 1):
            text = self._call(req, out)
            if text is None:
                break
            out.raw = text
            try:
                out.value = req.parser(text)
            except ParseError as e:
                with self._lock:
                    self.stats.parse_errors += 1
                out.error = f"unparseable reply: {e}"
                continue
            out.status, out.error = "ok", None
            break
        unparseable = out.error is not None and out.error.startswith("unparseable")
        if (
            self.cache is not None
            and not self.bypass_cache
            and out.raw is not None
            and (out.status == "ok" or unparseable)
        ):
            self.cache.put(
                self._key(req),
                self.spec.model,
                out.status,
                out.raw,
                out.prompt_tokens,
                out.completion_tokens,
                out.logprobs,
            )
        if out.status != "ok":
            with self._lock:
                self.stats.failed += 1
        return out

    def run(
        self, requests: Sequence[ChatRequest], desc: str = "llm", progress: bool = True
    ) -> list[ChatOutcome]:
        """Outcomes in request order; never raises for a single item.

        Progress: a bar on stderr when `progress` and stderr is a terminal, else a log line every 100."""
        results: list[ChatOutcome | None] = [None] * len(requests)
        show_bar = progress and sys.stderr is not None and sys.stderr.isatty()
        bar = tqdm(total=len(requests), desc=desc, unit="req", file=sys.stderr, disable=not show_bar)
        done = 0
        with bar, concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self.run_one, r): i for i, r in enumerate(requests)}
            for fut in concurrent.futures.as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as e:  # a bug in a parser must not lose the item
                    results[i] = ChatOutcome(
                        "failed", error=self._scrub(f"internal error: {type(e).__name__}: {e}")
                    )
                done += 1
                s = self.stats
                if show_bar:
                    bar.set_postfix(
                        calls=s.http_calls, cached=s.cache_hits, usd=f"{s.cost_usd:.4f}", refresh=False
                    )
                    bar.update(1)
                elif done % 100 == 0 or done == len(requests):
                    logging.info(
                        "%s: %d/%d done, %d HTTP calls, %d cache hits, $%.4f",
                        desc,
                        done,
                        len(requests),
                        s.http_calls,
                        s.cache_hits,
                        s.cost_usd,
                    )
        return [r for r in results if r is not None]


def rating_distribution(entry: dict[str, Any], pattern: re.Pattern[str]) -> dict[int, float]:
    """Probability of each rating value at one generated token, from its top log-probs.

    Candidates are the chosen token and its top_logprobs alternatives; a candidate counts when `pattern`
    matches it (group 1: the value), and spellings of the same value (" 3", "3") are summed. The result is
    not normalised (values outside the top-k are missing)."""
    seen: dict[str, float] = {}
    for cand in [entry, *entry.get("top_logprobs", [])]:
        seen.setdefault(cand["token"], float(cand["logprob"]))
    dist: dict[int, float] = {}
    for token, lp in seen.items():
        m = pattern.match(token)
        if m:
            dist[int(m.group(1))] = dist.get(int(m.group(1)), 0.0) + math.exp(lp)
    return dist


def expected_value(dist: dict[int, float]) -> float | None:
    """Mean of a (not normalised) rating distribution; None if empty."""
    total = sum(dist.values())
    return sum(v * p for v, p in dist.items()) / total if total > 0 else None
