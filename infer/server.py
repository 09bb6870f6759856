"""OpenAI-compatible HTTP server over one Engine: /v1/models, /v1/chat/completions, /v1/completions.

  python -m infer.server --model=DIR [--host=127.0.0.1 --port=8000 --api_key=KEY --max_batch=16]

Concurrent requests are batched dynamically: a worker thread takes the first waiting request, gathers
whatever else arrives within `--batch_wait_ms` (up to `--max_batch`), and decodes them as one batch, each
row with its own parameters. `stream=true` answers with server-sent events; `response_format=
{"type": "json_object"}` constrains decoding so the reply always parses as a JSON object, and
`{"type": "json_schema", ...}` with a flat object of required integer properties (minimum/maximum) decodes
exactly `{"K1": v1, ...}` with each value in range (what a small local judge needs to give usable scores). Defaults differ
from OpenAI's in one place: temperature defaults to 0 (greedy), which is what a local judge wants.

Log-probabilities: chat requests with `logprobs=true` (and `top_logprobs=0..20`) get `choices[0].logprobs =
{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}` as OpenAI returns them; legacy
completions with `logprobs=0..20` get `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`. Each value is
the log-softmax of the model's raw logits at that step (before repetition penalty, temperature and any
response_format mask), so it does not depend on the decoding parameters. Not available with `stream=true`.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from absl import app, flags, logging

from infer.decode import DecodeParams, bucket
from infer.engine import MIN_PROMPT_BUCKET, Constraint, Engine, Result
from infer.json_constraint import (
    IntObjectConstraint,
    IntObjectDFA,
    JsonVocab,
    parse_int_object_schema,
    token_bytes,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "embedded", "HF directory, training workdir, .gguf, or 'embedded'.")
flags.DEFINE_string("served_model_name", None, "Model id clients use (default: the model directory name).")
flags.DEFINE_string("host", "127.0.0.1", "Bind address.")
flags.DEFINE_integer("port", 8000, "Port (0 = any free port; the chosen one is printed).")
flags.DEFINE_string("api_key", None, "If set, requests need `Authorization: Bearer <key>`.")
flags.DEFINE_integer("max_batch", 16, "Most requests decoded together.")
flags.DEFINE_integer("batch_wait_ms", 10, "How long the batcher waits for more requests after the first.")
flags.DEFINE_integer("max_tokens_default", 512, "max_tokens when a request gives none.")
flags.DEFINE_string("template", "model", "Chat template: model, llama-2, or Jinja text.")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
flags.DEFINE_integer("mesh_data", 1, "Devices on the mesh's data axis (batch); -1 = all remaining devices.")
flags.DEFINE_integer("mesh_fsdp", 1, "Devices on the fsdp axis (weights' embed dim, batch); -1 = remaining.")
flags.DEFINE_integer("mesh_tensor", 1, "Devices on the tensor axis (heads, MLP, vocab); -1 = remaining.")


MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(self.status, "invalid_request_error")
        if self.status >= 500:
            kind = "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Job:
    ids: list[int]
    params: DecodeParams
    fmt: str | tuple | None  # None, "json_object", or json_schema fields (key, min, max)
    stream: bool
    logprobs: int | None = None  # None: no log-probs; k: the chosen token's and the top k per step
    events: queue.Queue = dataclasses.field(
        default_factory=queue.Queue
    )  # ("delta", str) | ("done", Result|Exception)


class Batcher:
    """Collects concurrent jobs into batches for the engine (one worker thread)."""

    def __init__(self, engine: Engine, max_batch: int, wait_s: float):
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_s
        self.queue: queue.Queue[Job] = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches run (observability, tests)
        self._vocab: JsonVocab | None = None
        self._dfas: dict[tuple, IntObjectDFA] = {}
        threading.Thread(target=self._loop, daemon=True, name="batcher").start()

    def submit(self, job: Job) -> Job:
        self.queue.put(job)
        return job

    def _loop(self) -> None:
        while True:
            jobs = [self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batches.append(len(jobs))
            t0 = time.perf_counter()
            self._run(jobs)
            logging.info("batch of %d requests in %.1fs", len(jobs), time.perf_counter() - t0)

    def constraint(self, fmt: str | tuple | None) -> Constraint | None:
        if fmt is None:
            return None
        if fmt == "json_object":
            return self.engine.json_constraint()
        if self._vocab is None:
            e = self.engine
            self._vocab = JsonVocab(e.tokenizer, e.cfg.vocab_size, e.eos_ids)
        if fmt not in self._dfas:
            if len(self._dfas) > 64:
                self._dfas.clear()
            self._dfas[fmt] = IntObjectDFA(fmt, self._vocab)  # type: ignore[arg-type]
        return IntObjectConstraint(self._dfas[fmt])

    def _run(self, jobs: list[Job]) -> None:
        def on_delta(i: int, text: str, finished: bool) -> None:
            if jobs[i].stream and text:
                jobs[i].events.put(("delta", text))

        # one engine batch per prompt-length bucket: a long prompt does not pad every other row to its length
        groups: dict[int, list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault(bucket(len(j.ids), MIN_PROMPT_BUCKET), []).append(i)
        results: list[Result | Exception] = [RuntimeError("not run")] * len(jobs)
        for idx in groups.values():

            def delta(k: int, text: str, finished: bool, idx: list[int] = idx) -> None:
                on_delta(idx[k], text, finished)

            try:
                out = self.engine.generate_ids(
                    [jobs[i].ids for i in idx],
                    [jobs[i].params for i in idx],
                    constraints=[self.constraint(jobs[i].fmt) for i in idx],
                    on_delta=delta if any(jobs[i].stream for i in idx) else None,
                    logprobs=[jobs[i].logprobs for i in idx],
                )
            except Exception as e:  # report to every waiting client, keep serving
                logging.exception("batch failed")
                out = [e] * len(idx)
            for i, r in zip(idx, out, strict=True):
                results[i] = r
        for j, r in zip(jobs, results, strict=True):
            j.events.put(("done", r))


# ---------------------------------------------------------------------------------------------- requests


def _get(body: dict[str, Any], name: str, types: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = "/".join(t.__name__ for t in types)
        raise ApiError(400, f"'{name}' must be of type {names}, got {json.dumps(value)[:80]}", param=name)
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for p in value:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise ApiError(400, f"{where}: only text content parts are supported", param=where)
            parts.append(p["text"])
        return "".join(parts)
    raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)


def parse_params(body: dict[str, Any], default_max: int) -> tuple[DecodeParams, str | tuple | None]:
    """Decoding parameters and the output format of a request: None, "json_object", or json_schema
    fields (key, minimum, maximum) — 400 on anything malformed or unsupported."""
    n = _get(body, "n", (int,), 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    max_tokens = _get(body, "max_completion_tokens", (int,), None) or _get(
        body, "max_tokens", (int,), default_max
    )
    temperature = float(_get(body, "temperature", (int, float), 0.0))
    top_p = float(_get(body, "top_p", (int, float), 1.0))
    seed = _get(body, "seed", (int,), 0)
    penalty = float(_get(body, "repetition_penalty", (int, float), 1.0))
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 4):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    fmt = _get(body, "response_format", (dict,), {"type": "text"})
    if fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(
            400, f"response_format type {fmt.get('type')!r} is not supported", param="response_format"
        )
    out_fmt: str | tuple | None = "json_object" if fmt.get("type") == "json_object" else None
    if out_fmt and max_tokens < 2:
        raise ApiError(400, "json_object needs max_tokens >= 2", param="max_tokens")
    if fmt.get("type") == "json_schema":
        try:
            out_fmt = parse_int_object_schema(fmt)
        except ValueError as e:
            raise ApiError(400, f"response_format: {e}", param="response_format") from None
        shortest = len(json.dumps({k: lo for k, lo, _ in out_fmt}))
        if max_tokens < shortest:
            raise ApiError(400, f"json_schema needs max_tokens >= {shortest}", param="max_tokens")
    if not 0 <= temperature <= 2:
        raise ApiError(400, "'temperature' must be between 0 and 2", param="temperature")
    try:
        params = DecodeParams(max_tokens, penalty, temperature, top_p, seed, tuple(stop))
    except ValueError as e:
        raise ApiError(400, str(e).replace("DecodeParams: ", "")) from None
    return params, out_fmt


def parse_logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many top log-probs a request wants per token (None: no log-probs) — 400 if malformed.

    Chat: `logprobs` (bool) and `top_logprobs` (0..20, needs logprobs=true); completions: `logprobs` (0..20).
    """
    if chat:
        want = _get(body, "logprobs", (bool,), False)
        top = _get(body, "top_logprobs", (int,), None)
        if top is not None and not want:
            raise ApiError(400, "'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
        k = (top or 0) if want else None
    else:
        k = _get(body, "logprobs", (int,), None)
    if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:
        name = "top_logprobs" if chat else "logprobs"
        raise ApiError(400, f"'{name}' must be between 0 and {MAX_TOP_LOGPROBS}", param=name)
    if k is not None and _get(body, "stream", (bool,), False):
        raise ApiError(400, "log-probabilities are not available with stream=true", param="logprobs")
    return k


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xlit-infer"
    engine: Engine
    batcher: Batcher
    model_id: str
    api_key: str | None
    default_max: int
    _token_bytes: list[bytes | None] | None = None

    def log_message(self, fmt: str, *args: Any) -> None:
        logging.info("%s %s", self.address_string(), fmt % args)

    # -------------------------------------------------------------------------------------------- io

    def _send_json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def _auth(self) -> None:
        if self.api_key is None:
            return
        header = self.headers.get("Authorization", "")
        if header != f"Bearer {self.api_key}":
            what = "missing" if not header else "incorrect"
            raise ApiError(401, f"{what} API key", code="invalid_api_key")

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required", param="model")
        if model != self.model_id:
            raise ApiError(
                404,
                f"the model '{model}' does not exist; this server serves '{self.model_id}'",
                param="model",
                code="model_not_found",
            )

    def _dispatch(self, method: str) -> None:
        try:
            self._auth()
            path = self.path.split("?")[0].rstrip("/")
            if method == "GET" and path == "/v1/models":
                return self._send_json(200, {"object": "list", "data": [self._model_card()]})
            if method == "GET" and path == f"/v1/models/{self.model_id}":
                return self._send_json(200, self._model_card())
            if method == "POST" and path == "/v1/chat/completions":
                return self._completion(self._body(), chat=True)
            if method == "POST" and path == "/v1/completions":
                return self._completion(self._body(), chat=False)
            raise ApiError(404, f"no route {method} {self.path}", code="not_found")
        except ApiError as e:
            self._send_json(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": 0, "owned_by": "xlit"}

    # ------------------------------------------------------------------------------------ completions

    def _prompt_ids(self, body: dict[str, Any], chat: bool) -> list[int]:
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise ApiError(400, "'messages' must be a non-empty list", param="messages")
            clean = []
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in (
                    "system",
                    "user",
                    "assistant",
                    "developer",
                ):
                    raise ApiError(
                        400, f"messages[{i}] needs a role of system/user/assistant", param=f"messages[{i}]"
                    )
                role = "system" if m["role"] == "developer" else m["role"]
                clean.append({"role": role, "content": _content(m.get("content"), f"messages[{i}].content")})
            try:
                return self.engine.encode(clean)
            except Exception as e:
                raise ApiError(400, f"cannot apply the chat template: {e}", param="messages") from None
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
        return self.engine.encode(prompt)

    def _completion(self, body: dict[str, Any], chat: bool) -> None:
        self._check_model(body)
        params, fmt = parse_params(body, self.default_max)
        ids = self._prompt_ids(body, chat)
        limit = self.engine.cfg.max_position_embeddings
        if len(ids) + params.max_new_tokens > limit:
            raise ApiError(
                400,
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_new_tokens}) exceeds the "
                f"context of {limit} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        stream = bool(_get(body, "stream", (bool,), False))
        top_k = parse_logprobs(body, chat)
        job = self.batcher.submit(Job(ids, params, fmt, stream, top_k))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if stream:
            return self._stream(job, rid, created, chat)
        kind, result = job.events.get()
        while kind != "done":
            kind, result = job.events.get()
        result = self._check_result(result)
        choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason, "logprobs": None}
        if top_k is not None:
            choice["logprobs"] = self._logprobs(result, chat)
        if chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        self._send_json(
            200,
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": self.model_id,
                "choices": [choice],
                "usage": _usage(result),
            },
        )

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        """A token's text and UTF-8 bytes as OpenAI reports them (special tokens: their name, no bytes)."""
        cls = type(self)
        if cls._token_bytes is None:
            cls._token_bytes = token_bytes(self.engine.tokenizer)
        table = cls._token_bytes
        b = table[token_id] if 0 <= token_id < len(table) else None
        if b is None:
            name = self.engine.tokenizer.tok.convert_ids_to_tokens(token_id)
            return str(name), []
        return b.decode("utf-8", errors="replace"), list(b)

    def _logprobs(self, result: Result, chat: bool) -> dict[str, Any]:
        """Result.logprobs in OpenAI's format (a trailing EOS token, not part of the text, is left out)."""
        ids, steps = list(result.ids), list(result.logprobs or [])
        n = min(len(ids), len(steps))
        if n and result.finish_reason == "stop" and ids[n - 1] in self.engine.eos_ids:
            n -= 1
        if chat:
            content = []
            for t, (lp, top) in zip(ids[:n], steps[:n], strict=True):
                text, raw = self._token(t)
                alts = []
                for a, alp in top:
                    at, ab = self._token(a)
                    alts.append({"token": at, "logprob": alp, "bytes": ab})
                content.append({"token": text, "logprob": lp, "bytes": raw, "top_logprobs": alts})
            return {"content": content, "refusal": None}
        tokens, offsets, pos = [], [], 0
        for t in ids[:n]:
            text = self._token(t)[0]
            tokens.append(text)
            offsets.append(pos)
            pos += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [lp for lp, _ in steps[:n]],
            "top_logprobs": [{self._token(a)[0]: alp for a, alp in top} for _, top in steps[:n]],
            "text_offset": offsets,
        }

    @staticmethod
    def _check_result(result: Result | Exception) -> Result:
        if isinstance(result, Exception):
            raise ApiError(500, f"generation failed: {result}")
        if result.finish_reason == "error":
            raise ApiError(400, result.error or "generation failed")
        return result

    def _stream(self, job: Job, rid: str, created: int, chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        obj = "chat.completion.chunk" if chat else "text_completion"

        def send(delta: str | None, finish: str | None, first: bool = False) -> None:
            if chat:
                d: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if delta:
                    d["content"] = delta
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            chunk = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": self.model_id,
                "choices": [choice],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        if chat:
            send(None, None, first=True)
        while True:
            kind, value = job.events.get()
            if kind == "delta":
                send(value, None)
                continue
            if isinstance(value, Exception) or value.finish_reason == "error":
                msg = str(value) if isinstance(value, Exception) else value.error
                self.wfile.write(
                    f"data: {json.dumps({'error': {'message': msg, 'type': 'server_error'}})}\n\n".encode()
                )
            else:
                send(None, value.finish_reason)
            break
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _usage(r: Result) -> dict[str, int]:
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.response_tokens,
        "total_tokens": r.prompt_tokens + r.response_tokens,
    }


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # listen backlog: the default 5 resets bursts of concurrent clients


def make_server(
    engine: Engine,
    host: str,
    port: int,
    api_key: str | None = None,
    model_id: str | None = None,
    max_batch: int = 16,
    batch_wait_ms: int = 10,
    default_max: int = 512,
) -> ThreadingHTTPServer:
    """A ready-to-serve HTTP server (call `.serve_forever()`)."""
    batcher = Batcher(engine, max_batch, batch_wait_ms / 1000)
    handler = type(
        "BoundHandler",
        (Handler,),
        {
            "engine": engine,
            "batcher": batcher,
            "model_id": model_id or engine.name,
            "api_key": api_key,
            "default_max": default_max,
        },
    )
    server = _Server((host, port), handler)
    server.daemon_threads = True
    server.batcher = batcher  # type: ignore[attr-defined]
    return server


def run(argv_unused: list[str]) -> None:
    from models.sharding import make_mesh

    sizes = (FLAGS.mesh_data, FLAGS.mesh_fsdp, FLAGS.mesh_tensor)
    mesh = None if sizes == (1, 1, 1) else make_mesh(*sizes)  # weights streamed onto it, KV cache sharded
    engine = Engine.from_path(
        FLAGS.model, dtype=FLAGS.dtype, template=FLAGS.template, max_batch=FLAGS.max_batch, mesh=mesh
    )
    server = make_server(
        engine,
        FLAGS.host,
        FLAGS.port,
        FLAGS.api_key,
        FLAGS.served_model_name,
        FLAGS.max_batch,
        FLAGS.batch_wait_ms,
        FLAGS.max_tokens_default,
    )
    host, port = server.server_address[:2]
    print(
        f"xlit infer server: model {server.RequestHandlerClass.model_id!r} on http://{host}:{port}/v1",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> None:
    app.run(run)


if __name__ == "__main__":
    sys.exit(main())
