"""The OpenAI-compatible server, as a real `python -m infer.serve` process, through the official client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.constraint_helpers import BOOK_SCHEMA, RICH_SCHEMA, check_book, check_rich

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key"
MSG = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(tiny_hf_dir):
    log_path = Path(tiny_hf_dir).parent / "server.log"
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infer.serve",
            f"--model={tiny_hf_dir}",
            "--port=0",
            f"--api_key={KEY}",
            "--served_model_name=tiny",
            "--max_batch=8",
            "--batch_wait_ms=50",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 120
    url = None
    while True:
        try:
            if url is None:  # the announced port, read as study/judge_server.py reads it
                m = re.search(r"model 'tiny' on (http://127\.0\.0\.1:\d+/v1)", log_path.read_text())
                url = m.group(1) if m else None
            if url is not None:
                openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120).models.list()
                break
        except openai.APIConnectionError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=120)


def chat(client, content: str, **kw) -> str:
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)
    return r.choices[0].message.content


def test_models_and_chat(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.role == "assistant"


def test_streaming_equals_non_streaming(client):
    full = chat(client, "Name a colour.", max_tokens=8)
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    comp = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8)
    streamed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == comp.choices[0].text


def test_json_object_always_parses(client):
    def one(i: int) -> str:
        return chat(
            client,
            f"Describe item {i} as a JSON object.",
            max_tokens=12,
            temperature=0.8 * (i % 2),
            seed=i,
            response_format={"type": "json_object"},
        )

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(20)))
    for text in outs:
        assert isinstance(json.loads(text), dict), text


def test_json_schema_integer_object_is_exact(client):
    from evalsuite.judge import PROMPT_KEYS, judge_schema_format, parse_judge_reply

    fmt = judge_schema_format()
    fmt["json_schema"]["schema"]["properties"]["Accuracy"] = {"type": "integer", "minimum": 7, "maximum": 12}

    def one(i: int) -> str:
        return chat(
            client,
            f"Rate answer {i}.",
            max_tokens=150,
            temperature=0.9 * (i % 2),
            seed=i,
            response_format=fmt,
        )

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(12)))
    for text in outs:
        obj = json.loads(text)
        assert list(obj) == list(PROMPT_KEYS), text
        assert all(1 <= v <= 3 for k, v in obj.items() if k != "Accuracy") and 7 <= obj["Accuracy"] <= 12
        assert text == json.dumps(obj)
    judge_text = chat(client, "Rate it.", max_tokens=200, response_format=judge_schema_format())
    assert set(parse_judge_reply(judge_text).values()) <= {0, 1, 2}
    bad = [  # schemas llguidance cannot compile
        {"type": "strng"},
        {"$ref": "#/$defs/missing"},
        {"type": "string", "pattern": "(unclosed"},
    ]
    for schema in bad:
        with pytest.raises(openai.BadRequestError, match="json_schema"):
            chat(
                client,
                "x",
                response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
            )
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(client, "x", max_tokens=20, response_format=judge_schema_format())


def test_json_schema_with_strings_and_nesting_fits_the_schema(client):
    book = {"type": "json_schema", "json_schema": {"name": "book", "schema": BOOK_SCHEMA}}
    with pytest.raises(openai.BadRequestError, match=r"json_schema needs max_tokens >= \d+") as e:
        chat(client, "x", max_tokens=2, response_format=book)
    assert e.value.body["param"] == "max_tokens"
    shortest = int(re.search(r">= (\d+)", e.value.body["message"]).group(1))
    assert 20 < shortest < 100, (
        shortest
    )  # 4 keys + 4 nested keys and their structure, at most ~1 token a byte
    with pytest.raises(openai.BadRequestError, match=f">= {shortest}"):
        chat(client, "x", max_tokens=shortest - 1, response_format=book)

    def one(i: int) -> str:
        return chat(
            client,
            f"Describe book {i} as JSON.",
            max_tokens=(shortest, shortest + 4, 80, 160)[i % 4],
            temperature=(0.0, 1.0)[i % 2],
            seed=i,
            response_format=book
            if i < 8
            else {"type": "json_schema", "json_schema": {"schema": RICH_SCHEMA}},
        )

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(12)))
    for text in outs[:8]:
        check_book(json.loads(text))
    for text in outs[8:]:
        check_rich(json.loads(text))
    streamed = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=shortest + 4, response_format=book, stream=True
    )
    check_book(json.loads("".join(c.choices[0].delta.content or "" for c in streamed)))


def test_concurrent_clients_get_their_own_answers(tiny_hf_dir, client):
    # different prompts and budgets per client, so a mixed-up answer would show
    jobs = [
        (f"Tell me fact number {i} about {w}.", 3 + i)
        for i, w in enumerate("sun sea ice sand oak fox owl elk".split())
    ]
    sequential = [chat(client, p, max_tokens=n) for p, n in jobs]
    log = Path(tiny_hf_dir).parent / "server.log"
    seen = len(log.read_text())
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda job: chat(client, job[0], max_tokens=job[1]), jobs))
    assert concurrent == sequential
    assert len(set(sequential)) == 8
    # the server admitted them together: some of them entered the decode slots in one batch. It logs each
    # admission before answering any of its requests, so every admission before `seen` (the sequential ones
    # included) is logged there, and all of the concurrent ones are in the log now
    sizes = [int(n) for n in re.findall(r"batch of (\d+) requests admitted", log.read_text()[seen:])]
    assert sum(sizes) == 8 and max(sizes) >= 2, sizes


def test_a_request_enters_a_free_slot_while_another_decodes(tiny_hf_dir, client):
    """Continuous batching: a short request that arrives while a long one decodes is admitted into a free
    slot and answered before the long one ends; both answers equal those of each request alone."""
    long_kw = dict(model="tiny", messages=[{"role": "user", "content": "Count the stars."}], max_tokens=200)
    alone = client.chat.completions.create(**long_kw)
    assert alone.choices[0].finish_reason == "length"  # the long request really runs 200 steps (13 segments)
    short_alone = chat(client, "Name a bird.", max_tokens=3)  # 1 segment
    log = Path(tiny_hf_dir).parent / "server.log"
    seen = len(log.read_text())

    def long_streamed() -> tuple[str, float]:
        chunks = list(client.chat.completions.create(**long_kw, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        long_job = pool.submit(long_streamed)
        deadline = time.time() + 60
        while "admitted" not in log.read_text()[seen:]:  # the long request is in its slot
            assert time.time() < deadline and not long_job.done()
            time.sleep(0.01)
        short = chat(client, "Name a bird.", max_tokens=3)
        short_done = time.monotonic()
        long_text, long_done = long_job.result()
    assert short == short_alone and long_text == alone.choices[0].message.content
    assert short_done < long_done, "the short request waited for the long one"
    busy = re.findall(r"batch of 1 requests admitted into free slots \((\d+) of 8", log.read_text()[seen:])
    assert busy == ["1", "2"], busy  # the short one entered while the long one held a slot


def test_errors_400_401_404(server, client):
    cases = [
        (dict(model="nope", messages=MSG), openai.NotFoundError),
        (dict(model="tiny", messages=[]), openai.BadRequestError),
        (dict(model="tiny", messages=[{"role": "wizard", "content": "x"}]), openai.BadRequestError),
        (dict(model="tiny", messages=MSG, n=2), openai.BadRequestError),
        (dict(model="tiny", messages=MSG, temperature=5), openai.BadRequestError),
        (dict(model="tiny", messages=MSG, response_format={"type": "json_schema"}), openai.BadRequestError),
    ]
    for kw, err in cases:
        with pytest.raises(err) as e:
            client.chat.completions.create(**kw)
        assert e.value.body and e.value.body.get("message")
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=server, api_key=key or "x", max_retries=0)
        if not key:
            bad._client.headers.pop("Authorization", None)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    with pytest.raises(openai.NotFoundError):
        client.get("/nowhere", cast_to=object)


def test_validation_errors_are_400_naming_the_field(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    chat_cases = [
        ({"model": "tiny", "messages": MSG, "temperature": "hot"}, "temperature"),
        ({"model": "tiny", "messages": MSG, "temperature": 2.5}, "temperature"),
        ({"model": "tiny", "messages": MSG, "max_tokens": True}, "max_tokens"),  # a boolean is no integer
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        (
            {"model": "tiny", "messages": [MSG[0], {"role": "user", "content": [{"type": "image"}]}]},
            "messages[1].content",
        ),
        ({"model": "tiny", "messages": MSG, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"model": "tiny", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "tiny", "messages": MSG, "response_format": {"type": "xml"}}, "response_format.type"),
        ({"messages": MSG}, "model"),
        ({"model": "tiny"}, "messages"),
    ]
    cases = [("/chat/completions", body, field) for body, field in chat_cases]
    cases += [
        ("/completions", {"model": "tiny", "prompt": ["a", "b"]}, "prompt"),
        ("/completions", {"model": "tiny", "prompt": "a", "logprobs": True}, "logprobs"),
    ]
    for path, body, field in cases:
        r = httpx.post(server + path, json=body, headers=auth, timeout=60)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert err["param"] == field and err["message"].startswith(f"'{field}': "), (body, err)
        assert err["type"] == "invalid_request_error"
    for raw, message in ((b'{"model": "tiny", ', "not valid JSON"), (b"[1, 2]", "must be a JSON object")):
        r = httpx.post(
            server + "/chat/completions", content=raw, headers={**auth, "Content-Type": "application/json"}
        )
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_auth_failures_are_401_before_routing(server):
    bodies = {"/chat/completions": {"model": "tiny", "messages": MSG, "max_tokens": 2}, "/completions": None}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"bearer {KEY}"},
    ):
        for method, path in (
            ("GET", "/models"),
            ("POST", "/chat/completions"),
            ("POST", "/completions"),
            ("GET", "/nowhere"),
        ):
            r = httpx.request(method, server + path, headers=headers, json=bodies.get(path), timeout=60)
            assert r.status_code == 401, (headers, path, r.text)
            err = r.json()["error"]
            assert (err["type"], err["code"]) == ("authentication_error", "invalid_api_key")
            assert err["message"] == ("missing API key" if not headers else "incorrect API key")
    r = httpx.get(server + "/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server + "/models/tiny", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["id"] == "tiny"


def _reference_logprobs(model_dir, messages, content) -> list[tuple[float, list[float], int]]:
    """Per generated token: (log-softmax at the chosen token, sorted top values, chosen id) from transformers'
    logits of the same model over prompt + the tokens generated so far (chosen ids found from their bytes)."""
    import torch
    from transformers import LlamaForCausalLM

    from infer.json_constraint import token_bytes
    from models.tokenizer import ChatTokenizer

    tok = ChatTokenizer(model_dir)
    by_bytes: dict[bytes, list[int]] = {}
    for i, b in enumerate(token_bytes(tok)):
        if b is not None:
            by_bytes.setdefault(b, []).append(i)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids = tok.encode_prompt(messages)
    out = []
    for entry in content:
        with torch.no_grad():
            lsm = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1).numpy()
        cands = by_bytes[bytes(entry.bytes)]
        chosen = min(cands, key=lambda c: abs(lsm[c] - entry.logprob))
        k = len(entry.top_logprobs)
        out.append((float(lsm[chosen]), sorted(lsm, reverse=True)[:k], chosen))
        ids = ids + [chosen]
    return out


@pytest.mark.parametrize("constrained", [False, True])
def test_logprobs_are_the_log_softmax_of_the_model_logits(tiny_hf_dir, client, constrained):
    from evalsuite.judge import judge_schema_format

    kw = {"response_format": judge_schema_format(), "max_tokens": 120} if constrained else {"max_tokens": 12}
    r = client.chat.completions.create(
        model="tiny", messages=MSG, temperature=0, logprobs=True, top_logprobs=5, **kw
    )
    content = r.choices[0].logprobs.content
    assert content and "".join(c.token for c in content) == r.choices[0].message.content
    ref = _reference_logprobs(tiny_hf_dir, MSG, content)
    for entry, (lp, top, _chosen) in zip(content, ref, strict=True):
        assert abs(entry.logprob - lp) < 1e-4
        assert len(entry.top_logprobs) == 5
        assert [a.logprob for a in entry.top_logprobs] == pytest.approx(top, abs=1e-4)
        assert bytes(entry.bytes) == entry.token.encode()
        if not constrained:  # greedy on the raw logits: the chosen token is the top one
            assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-6)
    no = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert no.choices[0].logprobs is None
    comp = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, logprobs=3)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) and all(
        len(t) <= 3 for t in lp.top_logprobs
    )
    for bad in (dict(top_logprobs=3), dict(logprobs=True, top_logprobs=21), dict(logprobs=True, stream=True)):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, **bad)
