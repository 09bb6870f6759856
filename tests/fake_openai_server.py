"""A real HTTP server on 127.0.0.1 that answers like OpenAI's chat completions API and injects faults.

The HTTP layer is the production one: `infer.server.make_app` (validation, errors, auth, SSE, log-probs
format) on uvicorn, over `FakeBackend` instead of a model. Used by the evaluation-suite tests and the Beam
score-pipeline tests. Run it in a thread:

    with FakeOpenAIServer(seed=0, fault_rate=0.35) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")

or as a process: `python tests/fake_openai_server.py --port 8765 --fault_rate 0.35` (prints the base URL).

Answers are deterministic functions of the prompt (`answer_for`):
  * judge prompts (contain "[Aspects to evaluate"): a JSON object with the six criteria, stars derived from a
    hash of the prompt, written in one of several formats a real judge uses (`judge_stars` gives the stars);
  * relevance/modifier prompts (contain "[Criterion]:"): "0" or "1", sometimes inside a sentence
    (`binary_verdict` gives the digit; a submission containing XLIT_IRRELEVANT / XLIT_RELEVANT forces 0 / 1).
  A submission containing "XLIT_GARBAGE_ALWAYS" always gets an unparseable reply (to test failure recording).

Judge modes (`judge_mode`, for calibration tests): "hash" (the default above); "random": every judge and
relevance request gets fresh random stars / digit (per request, so a rescoring disagrees too); "oracle":
answers from hidden labels (`labels`: (task, submission) -> an object with language_ok, helpful, relevant,
e.g. evalsuite.controls.Control): language 3 stars unless language_ok is False (1), helpfulness 3 if
helpful, 1 if not helpful, 2 if unknown, other criteria 3; relevance = relevant (1 if unknown).

Log-probs: a request with `logprobs=true` gets `choices[0].logprobs.content`: the text cut into tokens
(`fake_tokens`), each with log-prob log(0.9); a star or 0/1 digit token has `top_logprobs` with its own
value at 0.8 and the other values sharing 0.2 (so the expected stars of a "3" are 2.7, of a "1" 1.3).

Faults are decided per request from (seed, prompt, how many times this prompt was received), so they do
not depend on thread scheduling: with probability `fault_rate` the request gets one of 429 (Retry-After: 0),
500, 503, a hang longer than the client timeout, a garbage HTTP body, or a garbage completion text. The
backend injects them (it raises `ApiError` for 429/500/503, `GarbageBody` for the body, which this module's
exception handler answers); the app itself has no fault switch. Any model id is accepted (and echoed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from infer.batcher import Job
from infer.engine import Prompt, Result
from infer.server import ApiError, bind, make_app

CRITERIA_KEYS = ("Language", "Fluency", "Helpfulness", "Accuracy", "Logical coherence", "Harmlessness")
FAULT_KINDS = ("429", "500", "503", "hang", "garbage_body", "garbage_text")


def _h(*parts: Any) -> int:
    return int(hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()[:12], 16)


def submission_of(prompt: str) -> str:
    m = re.search(r"\[Submission\]: (.*?)\n(?:\*\*\*\n)?\[(?:Aspects|Criterion)", prompt, re.S)
    return m.group(1) if m else prompt


def judge_stars(prompt: str) -> dict[str, int]:
    """Stars 1..3 per criterion key (CRITERIA_KEYS) the server gives to this judge prompt.

    A submission starting with "XLIT_WRONG_LANG" gets Language 1 star; "XLIT_STARS=abcdef" sets all six.
    """
    sub = submission_of(prompt)
    m = re.search(r"XLIT_STARS=([1-3]{6})", sub)
    if m:
        return dict(zip(CRITERIA_KEYS, map(int, m.group(1))))
    stars = {k: 1 + _h("stars", k, prompt) % 3 for k in CRITERIA_KEYS}
    if sub.startswith("XLIT_WRONG_LANG"):
        stars["Language"] = 1
    return stars


def binary_verdict(prompt: str) -> int:
    sub = submission_of(prompt)
    if "XLIT_IRRELEVANT" in sub:
        return 0
    if "XLIT_RELEVANT" in sub:
        return 1
    return 0 if _h("bin", prompt) % 4 == 0 else 1


def task_of(prompt: str) -> str:
    m = re.search(r"\[Task\]: (.*?)\n(?:\*\*\*\n)?\[Submission\]", prompt, re.S)
    return m.group(1) if m else ""


def fake_tokens(text: str) -> list[str]:
    """Text cut into tokens: single digits, words, spaces and punctuation runs ("".join gives the text)."""
    return re.findall(r"\d|[^\W\d_]+|\s+|[^\w\s]+|_", text)


class FakeVocab:
    """Token ids for fake tokens, assigned as they first appear (thread-safe)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.texts: list[str] = []
        self.lock = threading.Lock()

    def id(self, token: str) -> int:
        with self.lock:
            if token not in self.ids:
                self.ids[token] = len(self.texts)
                self.texts.append(token)
            return self.ids[token]


def fake_logprobs(
    text: str, top: int, vocab: FakeVocab
) -> tuple[list[int], list[tuple[float, list[tuple[int, float]]]]]:
    """Token ids of `text` and per token (log-prob, [(alternative id, log-prob)]), as an engine's Result
    holds them (see the module docstring for the values)."""
    ids, steps = [], []
    prev = ""
    for tok in fake_tokens(text):
        lp, alts = math.log(0.9), []
        digits = "123" if re.search(r'"\s*:\s*$|:\s*$', prev) else "01"
        if re.fullmatch(r"\d", tok) and tok in digits:
            others = [d for d in digits if d != tok]
            lp = math.log(0.8)
            probs = [(tok, 0.8)] + [(d, 0.2 / len(others)) for d in others]
            alts = [(vocab.id(t), math.log(p)) for t, p in probs[: max(top, 1)]]
        ids.append(vocab.id(tok))
        steps.append((lp, alts))
        prev += tok
    return ids, steps


def answer_for(
    prompt: str, mode: str = "hash", labels: dict | None = None, rng: random.Random | None = None
) -> str:
    """The completion text for a prompt (no faults); see the module docstring for `mode`."""
    if mode == "random" and ("[Aspects to evaluate" in prompt or "[Criterion]:" in prompt):
        rng = rng or random.Random()
        if "[Aspects to evaluate" in prompt:
            return json.dumps({k: rng.randint(1, 3) for k in CRITERIA_KEYS})
        return str(rng.randint(0, 1))
    label = (labels or {}).get((task_of(prompt), submission_of(prompt))) if mode == "oracle" else None
    if label is not None:
        if "[Aspects to evaluate" in prompt:
            stars = dict.fromkeys(CRITERIA_KEYS, 3)
            stars["Language"] = 1 if label.language_ok is False else 3
            stars["Helpfulness"] = {True: 3, False: 1, None: 2}[label.helpful]
            return json.dumps(stars)
        if "[Criterion]:" in prompt:
            return str(1 if label.relevant is None else int(label.relevant))
    sub = submission_of(prompt)
    if "XLIT_GARBAGE_ALWAYS" in sub:
        return "I am sorry, I cannot evaluate this."
    if "[Aspects to evaluate" in prompt:
        stars = judge_stars(prompt)
        style = _h("style", prompt) % 4
        if style == 0:
            return json.dumps(stars)
        if style == 1:
            return json.dumps({k.lower(): f"{v} stars" for k, v in stars.items()})
        if style == 2:
            return (
                "Here is my evaluation:\n```json\n"
                + json.dumps({k: str(v) for k, v in stars.items()})
                + "\n```"
            )
        return json.dumps({"scores": {k.upper().replace(" ", "_"): {"score": v} for k, v in stars.items()}})
    if "[Criterion]:" in prompt:
        v = binary_verdict(prompt)
        return str(v) if _h("bstyle", prompt) % 2 else f"The submission meets the criterion: {v}"
    return "Hello from the fake server."


class GarbageBody(Exception):
    """Raised by FakeBackend for a "garbage_body" fault; answered with a 200 that is not JSON."""


class FakeBackend:
    """Answers `answer_for(prompt)` at once (no model), injecting the server's faults per request."""

    name = "fake"
    context_length = 1 << 30
    eos_ids: tuple[int, ...] = ()

    def __init__(self, server: FakeOpenAIServer):
        self.server = server
        self.vocab = FakeVocab()

    def encode(self, prompt: Prompt) -> list[int]:
        text = prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)
        return list(text.encode("utf-8"))

    def token(self, token_id: int) -> tuple[str, list[int]]:
        text = self.vocab.texts[token_id]
        return text, list(text.encode("utf-8"))

    def submit(self, job: Job) -> None:
        srv = self.server
        prompt = job.prompt if isinstance(job.prompt, str) else job.prompt[-1]["content"]
        with srv.lock:
            srv.seen[prompt] += 1
            n = srv.seen[prompt]
        if srv.reject_logprobs and job.logprobs is not None:
            with srv.lock:
                srv.stats["400_logprobs"] += 1
            raise ApiError(400, "logprobs is not supported", param="logprobs")
        fault = srv.fault_for(prompt, n)
        with srv.lock:
            srv.stats[fault or "ok"] += 1
        if fault in ("429", "500", "503"):
            raise ApiError(
                int(fault), f"injected {fault}", headers={"Retry-After": "0"} if fault == "429" else None
            )
        if fault == "garbage_body":
            raise GarbageBody()
        with srv.lock:  # one draw per request, in arrival order
            rng = random.Random(srv._rng.random())
        text = (
            "\x00garbage\x00 ]]}{"
            if fault == "garbage_text"
            else answer_for(prompt, srv.judge_mode, srv.labels, rng)
        )
        ids, steps = fake_logprobs(text, job.logprobs or 0, self.vocab)
        result = Result(
            ids,
            text,
            "stop",
            prompt_tokens=len(prompt) // 4,
            response_tokens=max(1, len(text) // 4),
            logprobs=steps if job.logprobs is not None else None,
        )
        if fault == "hang":  # answer later, from another thread; the request waits without holding one
            timer = threading.Timer(srv.hang_s, self._answer, (job, result))
            timer.daemon = True
            timer.start()
        else:
            self._answer(job, result)

    @staticmethod
    def _answer(job: Job, result: Result) -> None:
        if job.stream:
            job.put("delta", result.text)
        job.put("done", result)


class FakeOpenAIServer:
    """Threaded fake server; use as a context manager. Counters are in `stats` (thread-safe)."""

    def __init__(
        self,
        seed: int = 0,
        fault_rate: float = 0.35,
        hang_s: float = 1.5,
        port: int = 0,
        require_key: str | None = None,
        fault_kinds: tuple[str, ...] = FAULT_KINDS,
        judge_mode: str = "hash",
        labels: dict | None = None,
        reject_logprobs: bool = False,
    ):
        self.reject_logprobs = reject_logprobs  # answer 400 to a request with logprobs (an older endpoint)
        self.judge_mode = judge_mode
        self.labels = labels
        self._rng = random.Random(seed)
        self.seed = seed
        self.fault_rate = fault_rate
        self.hang_s = hang_s
        self.require_key = require_key
        self.fault_kinds = fault_kinds
        self.stats: Counter[str] = Counter()  # requests, ok, one count per fault kind, 401, max_inflight
        self._inflight = 0
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.requests_log: list[dict[str, Any]] = []
        self.backend = FakeBackend(self)
        self.app = self._app()
        self._sock = bind("127.0.0.1", port)
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def fault_for(self, prompt: str, n: int) -> str | None:
        """The fault injected on the n-th (1-based) receipt of `prompt`, or None."""
        if (_h("fault", self.seed, prompt, n) % 10_000) / 10_000 >= self.fault_rate:
            return None
        return self.fault_kinds[_h("kind", self.seed, prompt, n) % len(self.fault_kinds)]

    def _app(self) -> FastAPI:
        app = make_app(self.backend, api_key=self.require_key, any_model=True)

        @app.exception_handler(GarbageBody)
        async def garbage(request: Request, exc: GarbageBody) -> Response:
            return Response(b"<html>502 Bad Gateway</html>{not json", media_type="application/json")

        @app.middleware("http")  # outermost: sees every request, before authentication
        async def record(request: Request, call_next: Any) -> Response:
            if request.method != "POST":
                return await call_next(request)
            raw = await request.body()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with self.lock:
                self.stats["requests"] += 1
                self._inflight += 1
                self.stats["max_inflight"] = max(self.stats["max_inflight"], self._inflight)
                self.requests_log.append(
                    {"path": request.url.path, "auth": request.headers.get("Authorization"), "body": body}
                )
            try:
                response = await call_next(request)
            finally:
                with self.lock:
                    self._inflight -= 1
            if response.status_code == 401:
                with self.lock:
                    self.stats["401"] += 1
            return response

        return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fault_rate", type=float, default=0.35)
    ap.add_argument("--hang_s", type=float, default=1.5)
    args = ap.parse_args()
    with FakeOpenAIServer(args.seed, args.fault_rate, args.hang_s, args.port) as srv:
        print(srv.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
