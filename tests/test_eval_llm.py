"""The LLM runner against a real local HTTP server: retries, failures, cache, key handling, cost cap."""

from __future__ import annotations

import pytest
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
