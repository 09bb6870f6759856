"""The LLM runner against a real local HTTP server: retries, failures, cache, key handling, cost cap."""

from __future__ import annotations

import io
import math

import httpx
import openai
import pytest
import tenacity
from fake_openai_server import CRITERIA_KEYS, FakeOpenAIServer, judge_stars

from chat.client import (
    Budget,
    ChatCache,
    ChatRunner,
    LLMConfigError,
    ModelSpec,
    cache_key,
    parse_model_spec,
)
from chat.retry import Backoff
from evalsuite.judge import judge_request

FAST = dict(timeout_s=0.5, backoff_s=0.005, backoff_max_s=0.02)
KEY_ORDER = dict(
    zip(CRITERIA_KEYS, ("language", "fluency", "helpfulness", "factuality", "logic", "harmlessness"))
)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("none", None),
        ("", None),
        ("openai", ModelSpec("gpt-3.5-turbo-0125")),
        ("openai:gpt-4o-mini", ModelSpec("gpt-4o-mini")),
        (
            "openai:llama-2-7b-chat@http://127.0.0.1:8000/v1",
            ModelSpec("llama-2-7b-chat", "http://127.0.0.1:8000/v1"),
        ),
    ],
)
def test_parse_model_spec(spec, expected):
    assert parse_model_spec(spec) == expected


@pytest.mark.parametrize("spec", ["gpt-4", "openai:", "anthropic:claude", "openai:m@localhost:8000"])
def test_parse_model_spec_rejects(spec):
    with pytest.raises(LLMConfigError):
        parse_model_spec(spec)


def test_cache_key_ignores_base_url_but_not_model_prompt_or_params():
    msgs = [{"role": "user", "content": "x"}]
    k = cache_key("m", msgs, {"temperature": 0})
    assert k == cache_key("m", [{"content": "x", "role": "user"}], {"temperature": 0})
    assert k != cache_key("m2", msgs, {"temperature": 0})
    assert k != cache_key("m", [{"role": "user", "content": "y"}], {"temperature": 0})
    assert k != cache_key("m", msgs, {"temperature": 0.7})


def expected_scores(req):
    stars = judge_stars(req.messages[0]["content"])
    return {KEY_ORDER[k]: v - 1 for k, v in stars.items()}


def test_faults_are_retried_until_every_item_is_scored(tmp_path):
    reqs = [judge_request(f"Task {i}", f"Response {i}") for i in range(40)]
    with FakeOpenAIServer(seed=11, fault_rate=0.5, hang_s=0.8) as srv:
        runner = ChatRunner(
            ModelSpec("judge", srv.base_url), max_retries=12, parse_retries=4, concurrency=16, **FAST
        )
        outs = runner.run(reqs)
        assert all(srv.stats[k] > 0 for k in ("429", "500", "503", "hang", "garbage_body", "garbage_text"))
        # a request can time out on the client before the server reads it (under load), so <=
        assert 40 < srv.stats["requests"] <= runner.stats.http_calls
    assert [o.status for o in outs] == ["ok"] * 40
    assert [o.value for o in outs] == [expected_scores(r) for r in reqs]
    assert runner.stats.transport_errors > 0 and runner.stats.parse_errors > 0


def test_unparseable_reply_is_recorded_failed_with_raw_and_cached(tmp_path):
    cache = ChatCache(tmp_path)
    req = judge_request("Task", "XLIT_GARBAGE_ALWAYS")
    with FakeOpenAIServer(seed=0, fault_rate=0.0) as srv:
        out = ChatRunner(ModelSpec("judge", srv.base_url), cache=cache, parse_retries=2, **FAST).run_one(req)
        assert (out.status, out.raw, out.calls, out.value) == (
            "failed",
            "I am sorry, I cannot evaluate this.",
            3,
            None,
        )
        assert out.error.startswith("unparseable reply")
        again = ChatRunner(ModelSpec("judge", srv.base_url), cache=cache, **FAST).run_one(req)
        assert (again.status, again.raw, again.calls, again.cached) == ("failed", out.raw, 0, True)
        assert srv.stats["requests"] == 3
        retried = ChatRunner(
            ModelSpec("judge", srv.base_url), cache=cache, retry_failed=True, parse_retries=0, **FAST
        )
        assert retried.run_one(req).calls == 1 and srv.stats["requests"] == 4


def test_exhausted_transport_retries_fail_without_caching(tmp_path):
    cache = ChatCache(tmp_path)
    req = judge_request("Task", "Response")
    with FakeOpenAIServer(seed=0, fault_rate=1.0, fault_kinds=("500",)) as srv:
        runner = ChatRunner(ModelSpec("judge", srv.base_url), cache=cache, max_retries=3, **FAST)
        out = runner.run_one(req)
        assert (out.status, out.calls, out.raw) == ("failed", 4, None)
        assert out.error.startswith("InternalServerError")
        assert len(cache) == 0 and srv.stats["500"] == 4


def test_api_key_from_environment_is_sent_but_never_recorded(monkeypatch, tmp_path):
    secret = "sk-xlit-test-SECRET-0123456789"
    monkeypatch.setenv("XLIT_TEST_KEY", secret)
    req = judge_request("Task", "Response")
    with FakeOpenAIServer(seed=0, fault_rate=0.0, require_key=secret) as srv:
        ok = ChatRunner(ModelSpec("judge", srv.base_url), api_key_env="XLIT_TEST_KEY", **FAST).run_one(req)
        assert ok.status == "ok" and srv.requests_log[-1]["auth"] == f"Bearer {secret}"
        monkeypatch.setenv("XLIT_TEST_KEY", secret + "-wrong")
        bad = ChatRunner(ModelSpec("judge", srv.base_url), api_key_env="XLIT_TEST_KEY", max_retries=5, **FAST)
        out = bad.run_one(req)
        assert (out.status, out.calls) == ("failed", 1)  # 401 is not retried
        assert "AuthenticationError" in out.error and secret not in out.error and secret not in repr(bad)


def test_missing_key_for_openai_is_a_config_error(monkeypatch):
    monkeypatch.delenv("XLIT_ABSENT_KEY", raising=False)
    with pytest.raises(LLMConfigError, match="XLIT_ABSENT_KEY"):
        ChatRunner(ModelSpec("gpt-3.5-turbo-0125"), api_key_env="XLIT_ABSENT_KEY")


def test_cost_estimate_and_cap(tmp_path):
    reqs = [judge_request(f"Task {i}", f"Response {i}") for i in range(20)]
    with FakeOpenAIServer(seed=0, fault_rate=0.0) as srv:
        price = (1000.0, 1000.0)  # USD per 1M tokens, so that a call costs ~0.5 USD
        budget = Budget(max_cost_usd=3.0)
        runner = ChatRunner(
            ModelSpec("judge", srv.base_url), budget=budget, price_per_mtok=price, concurrency=4, **FAST
        )
        est = runner.estimate(reqs)
        assert est["calls"] == 20 and est["cost_usd"] == pytest.approx(
            (est["prompt_tokens"] + est["completion_tokens"]) / 1000
        )
        outs = runner.run(reqs)
    done = [o for o in outs if o.status == "ok"]
    capped = [o for o in outs if o.status == "failed"]
    assert len(done) + len(capped) == 20 and 0 < len(done) < 20
    assert all(o.error.startswith("cost cap $3.0 reached") and o.calls == 0 for o in capped)
    assert budget.spent_usd <= 3.0 and runner.stats.http_calls == len(done)


def test_concurrency_is_bounded():
    reqs = [judge_request(f"Task {i}", "R") for i in range(12)]
    with FakeOpenAIServer(seed=0, fault_rate=1.0, fault_kinds=("hang",), hang_s=0.2) as srv:
        outs = ChatRunner(ModelSpec("judge", srv.base_url), concurrency=3, timeout_s=5).run(reqs)
        assert 2 <= srv.stats["max_inflight"] <= 3
    assert all(o.status == "ok" for o in outs)


class RecordingBudget(Budget):
    """A real Budget that also records each reservation and settlement (the per-attempt hook)."""

    def __init__(self, max_cost_usd=None):
        super().__init__(max_cost_usd)
        self.log = []

    def try_reserve(self, usd):
        ok = super().try_reserve(usd)
        self.log.append(("reserve", usd, ok))
        return ok

    def settle(self, reserved, actual):
        super().settle(reserved, actual)
        self.log.append(("settle", reserved, actual))


PRICE = (1e6, 2e6)  # USD per 1M tokens: a call costs prompt_tokens + 2 * completion_tokens USD, exactly


def estimated_usd(req):
    """The runner's pre-call estimate, computed here from its documented formula (bytes / 3.5)."""
    return math.ceil(len(str(req.messages).encode("utf-8")) / 3.5) + 2 * req.expected_completion_tokens


def test_429_then_success_costs_one_retry_and_passes_the_budget_per_attempt():
    seed = 5
    with FakeOpenAIServer(seed=seed, fault_rate=0.5, fault_kinds=("429",)) as probe_srv:
        probe = ChatRunner(ModelSpec("judge", probe_srv.base_url), max_retries=0, parse_retries=0, **FAST)
        for i in range(64):  # a prompt whose 1st receipt gets a 429 and whose 2nd is answered
            req = judge_request(f"Task {i}", "Response")
            first = probe.run_one(req)
            if first.status == "failed" and first.error.startswith("RateLimitError"):
                if probe.run_one(req).status == "ok":
                    break
        else:
            pytest.fail("no prompt with a 429 then an answer")
    # faults depend only on (seed, prompt, receipt count): a fresh server replays the same sequence
    with FakeOpenAIServer(seed=seed, fault_rate=0.5, fault_kinds=("429",)) as srv:
        budget = RecordingBudget(max_cost_usd=1e9)
        runner = ChatRunner(
            ModelSpec("judge", srv.base_url), budget=budget, price_per_mtok=PRICE, max_retries=6, **FAST
        )
        out = runner.run_one(req)
        assert (srv.stats["requests"], srv.stats["429"], srv.stats["ok"]) == (2, 1, 1)
    assert (out.status, out.calls, out.value) == ("ok", 2, expected_scores(req))
    assert (runner.stats.http_calls, runner.stats.transport_errors) == (2, 1)
    est, actual = estimated_usd(req), out.prompt_tokens + 2 * out.completion_tokens
    assert budget.log == [
        ("reserve", est, True),
        ("settle", est, 0.0),  # the 429 is not billed
        ("reserve", est, True),
        ("settle", est, actual),
    ]
    assert (budget.spent_usd, budget.reserved_usd, runner.stats.cost_usd) == (actual, 0.0, actual)


def test_budget_stops_retries_once_a_timed_out_attempt_has_spent_it():
    req = judge_request("Task", "Response")
    est = estimated_usd(req)
    budget = RecordingBudget(max_cost_usd=1.5 * est)  # room for one attempt's estimate, not two
    with FakeOpenAIServer(seed=0, fault_rate=1.0, fault_kinds=("hang",), hang_s=0.8) as srv:
        runner = ChatRunner(
            ModelSpec("judge", srv.base_url), budget=budget, price_per_mtok=PRICE, max_retries=6, **FAST
        )
        out = runner.run_one(req)
        assert srv.stats["requests"] == 1
    # a timed-out call may be billed: its estimate stays spent, so the retry is refused before calling
    assert (out.status, out.calls, runner.stats.http_calls) == ("failed", 1, 1)
    assert out.error == f"cost cap ${1.5 * est} reached (${est:.4f} spent); not called"
    assert budget.log == [("reserve", est, True), ("settle", est, est), ("reserve", est, False)]


def _state_after(attempt_number, err):
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt_number
    state.set_exception((type(err), err, None))
    return state


def _status_error(cls, code, headers):
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return cls(f"{code}", response=httpx.Response(code, headers=headers, request=request), body=None)


def test_backoff_doubles_from_backoff_s_is_jittered_and_capped_and_honours_retry_after():
    err = _status_error(openai.InternalServerError, 500, {})
    top, low = Backoff(1.0, 5.0, uniform=lambda: 1.0), Backoff(1.0, 5.0, uniform=lambda: 0.0)
    assert [top(_state_after(n, err)) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [low(_state_after(n, err)) for n in range(1, 6)] == [0.5, 1.0, 2.0, 2.5, 2.5]
    slow = _status_error(openai.RateLimitError, 429, {"retry-after": "3"})
    assert low(_state_after(1, slow)) == 3.0  # the server's Retry-After wins over a shorter delay
    assert low(_state_after(1, _status_error(openai.RateLimitError, 429, {"retry-after": "60"}))) == 5.0
    assert top(_state_after(4, slow)) == 5.0
    assert low(_state_after(1, _status_error(openai.RateLimitError, 429, {"retry-after": "soon"}))) == 0.5


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    "tty, progress, bar", [(True, True, True), (True, False, False), (False, True, False)]
)
def test_progress_bar_only_on_a_terminal_and_when_asked(monkeypatch, caplog, tty, progress, bar):
    reqs = [judge_request(f"Task {i}", "Response") for i in range(3)]
    err = _Tty() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    caplog.set_level("INFO", logger="absl")
    with FakeOpenAIServer(seed=0, fault_rate=0.0) as srv:
        outs = ChatRunner(ModelSpec("judge", srv.base_url), **FAST).run(
            reqs, desc="judgeX", progress=progress
        )
    assert [o.status for o in outs] == ["ok"] * 3
    assert ("judgeX: 100%" in err.getvalue() and "3/3" in err.getvalue()) == bar
    assert bar or err.getvalue() == ""
    assert ("judgeX: 3/3 done, 3 HTTP calls" in caplog.text) == (not bar)  # the log line instead of a bar
