"""A real HTTP server on 127.0.0.1 that answers like OpenAI's chat completions API and injects faults.

Used by the evaluation-suite tests and the Beam score-pipeline tests. Run it in a thread:

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
500, 503, a hang longer than the client timeout, a garbage HTTP body, or a garbage completion text.
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


def fake_logprobs(text: str, top: int) -> dict[str, Any]:
    """choices[0].logprobs for `text` (see the module docstring)."""
    content = []
    prev = ""
    for tok in fake_tokens(text):
        entry: dict[str, Any] = {
            "token": tok,
            "logprob": math.log(0.9),
            "bytes": list(tok.encode()),
            "top_logprobs": [],
        }
        digits = "123" if re.search(r'"\s*:\s*$|:\s*$', prev) else "01"
        if re.fullmatch(r"\d", tok) and tok in digits:
            others = [d for d in digits if d != tok]
            entry["logprob"] = math.log(0.8)
            alts = [(tok, 0.8)] + [(d, 0.2 / len(others)) for d in others]
            entry["top_logprobs"] = [
                {"token": t, "logprob": math.log(p), "bytes": list(t.encode())}
                for t, p in alts[: max(top, 1)]
            ]
        content.append(entry)
        prev += tok
    return {"content": content, "refusal": None}


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
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fault_for(self, prompt: str, n: int) -> str | None:
        """The fault injected on the n-th (1-based) receipt of `prompt`, or None."""
        if (_h("fault", self.seed, prompt, n) % 10_000) / 10_000 >= self.fault_rate:
            return None
        return self.fault_kinds[_h("kind", self.seed, prompt, n) % len(self.fault_kinds)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(
                self, code: int, body: bytes, ctype: str = "application/json", headers: dict | None = None
            ):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self) -> None:
                with server.lock:
                    server._inflight += 1
                    server.stats["max_inflight"] = max(server.stats["max_inflight"], server._inflight)
                try:
                    self._post()
                finally:
                    with server.lock:
                        server._inflight -= 1

            def _post(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length))
                    prompt = body["messages"][-1]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    self._send(400, b'{"error": {"message": "bad request"}}')
                    return
                with server.lock:
                    server.stats["requests"] += 1
                    server.seen[prompt] += 1
                    n = server.seen[prompt]
                    server.requests_log.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                    )
                if server.require_key and self.headers.get("Authorization") != f"Bearer {server.require_key}":
                    with server.lock:
                        server.stats["401"] += 1
                    self._send(401, b'{"error": {"message": "invalid api key", "code": "invalid_api_key"}}')
                    return
                if server.reject_logprobs and "logprobs" in body:
                    with server.lock:
                        server.stats["400_logprobs"] += 1
                    msg = {"error": {"message": "logprobs is not supported", "param": "logprobs"}}
                    self._send(400, json.dumps(msg).encode())
                    return
                fault = server.fault_for(prompt, n)
                with server.lock:
                    server.stats[fault or "ok"] += 1
                if fault in ("429", "500", "503"):
                    msg = json.dumps(
                        {"error": {"message": f"injected {fault}", "type": "server_error"}}
                    ).encode()
                    self._send(int(fault), msg, headers={"Retry-After": "0"} if fault == "429" else None)
                    return
                if fault == "hang":
                    time.sleep(server.hang_s)
                if fault == "garbage_body":
                    self._send(200, b"<html>502 Bad Gateway</html>{not json", ctype="application/json")
                    return
                with server.lock:  # one draw per request, in arrival order
                    rng = random.Random(server._rng.random())
                text = (
                    "\x00garbage\x00 ]]}{"
                    if fault == "garbage_text"
                    else answer_for(prompt, server.judge_mode, server.labels, rng)
                )
                reply = {
                    "id": f"chatcmpl-{_h('id', prompt, n):x}",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                            "logprobs": fake_logprobs(text, int(body.get("top_logprobs") or 0))
                            if body.get("logprobs")
                            else None,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(prompt) // 4,
                        "completion_tokens": max(1, len(text) // 4),
                        "total_tokens": len(prompt) // 4 + max(1, len(text) // 4),
                    },
                }
                self._send(200, json.dumps(reply).encode())

        return Handler


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
