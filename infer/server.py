"""OpenAI-compatible HTTP API over one model: /v1/models, /v1/chat/completions, /v1/completions.

`make_app(engine_or_backend, ...)` builds the FastAPI app; `python -m infer.serve` runs it with uvicorn.
Requests are pydantic models (`ChatRequest`, `CompletionRequest`); errors are OpenAI-shaped, `{"error":
{"message", "type", "param", "code"}}`: 400 for a malformed or unsupported request (`param` names a field that
fails validation), 401 for a missing/wrong `Authorization: Bearer KEY` when `api_key` is set, 404 for an
unknown model or route, 500 when generation fails.

An Engine is served through `infer.batcher`: by default continuous batching (`max_batch` decode slots; a
request enters a free slot as soon as the current decode segment ends, a finished row frees its slot and is
answered at once), or static batches (`batching="static"`: the requests that arrive within `batch_wait_ms`,
up to `max_batch`, decoded as one batch); each row has its own parameters. `stream=true` answers with server-sent events; `response_format={"type": "json_object"}`
constrains decoding so the reply always parses as a JSON object, and `{"type": "json_schema", "json_schema":
{"schema": ...}}` so that it fits any JSON Schema llguidance supports (infer.json_constraint; a schema it cannot
compile is a 400 naming `json_schema`), in `json.dumps`'s layout — the judge schema decodes exactly
`{"K1": v1, ...}`. A constrained request whose max_tokens is below the shortest reply in its format (as the
backend's `min_tokens` finds it) is a 400 naming max_tokens. Defaults differ from OpenAI's in one place:
temperature defaults to 0 (greedy), which is what a local judge wants.

Log-probabilities: chat requests with `logprobs=true` (and `top_logprobs=0..20`) get `choices[0].logprobs =
{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}` as OpenAI returns them; legacy
completions with `logprobs=0..20` get `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`. Each value is
the log-softmax of the model's raw logits at that step (before repetition penalty, temperature and any
response_format mask), so it does not depend on the decoding parameters. Not available with `stream=true`.
"""

from __future__ import annotations

import hmac
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from infer.batcher import Batching, EngineBackend, Job
from infer.decode import DecodeParams
from infer.engine import Engine, Prompt, Result
from infer.json_constraint import JsonFormat, parse_response_format

MAX_TOP_LOGPROBS = 20
_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """An OpenAI-shaped error response; a backend may raise it from `submit` to refuse a request."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers: dict[str, str] | None = headers  # e.g. Retry-After of a 429

    def body(self) -> dict[str, Any]:
        default = "server_error" if self.status >= 500 else "invalid_request_error"
        kind = _ERROR_TYPES.get(self.status, default)
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class Backend(Protocol):
    """What the app serves from: `EngineBackend` (an Engine behind the batcher) or a test double."""

    name: str  # the model id served when make_app is given no served_model_name
    context_length: int  # prompt + max_tokens must fit
    eos_ids: Sequence[int]  # a trailing EOS token is left out of the reported log-probs

    def encode(self, prompt: Prompt) -> list[int]: ...

    def submit(self, job: Job) -> None: ...  # answers through job.put; may raise ApiError

    def token(self, token_id: int) -> tuple[str, list[int]]: ...  # text and UTF-8 bytes of a token

    # optional: `min_tokens(fmt: JsonFormat) -> int | None`, the shortest reply in a response format (tokens);
    # when present, a request with a smaller max_tokens is refused (400)


# ---------------------------------------------------------------------------------------------- requests

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # a JSON integer is accepted, a boolean or a string is not
TopK = Annotated[int, Strict(), Field(ge=0, le=MAX_TOP_LOGPROBS)]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]  # developer is read as system
    content: str  # a list of {"type": "text", "text": ...} parts is joined

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        return "system" if value == "developer" else value

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in value) or not all(
                isinstance(p.get("text"), str) for p in value
            ):
                raise ValueError("only text content parts are supported")
            return "".join(p["text"] for p in value)
        if not isinstance(value, str):
            raise ValueError("must be a string or a list of text parts")
        return value


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")  # json_schema is checked by parse_response_format
    type: Literal["text", "json_object", "json_schema"]


class _Request(BaseModel):
    """Fields both endpoints take; unknown fields are ignored. None means the default."""

    model_config = ConfigDict(extra="ignore")
    model: Annotated[str, Strict(), Field(min_length=1)]
    n: Int | None = None
    max_tokens: Int | None = None
    max_completion_tokens: Int | None = None
    temperature: Annotated[float, Strict(), Field(ge=0, le=2)] | None = None
    top_p: Float | None = None
    seed: Int | None = None
    repetition_penalty: Float | None = None  # extension (HF semantics)
    stop: list[str] | None = None  # a string or a list of up to 4 non-empty strings
    response_format: ResponseFormat | None = None
    stream: Annotated[bool, Strict()] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if value is not None and not (
            isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) and s for s in value)
        ):
            raise ValueError("must be a string or a list of up to 4 non-empty strings")
        return value


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    logprobs: Annotated[bool, Strict()] | None = None
    top_logprobs: TopK | None = None


class CompletionRequest(_Request):
    prompt: Annotated[str, Field(min_length=1)]  # or a list of one string
    logprobs: TopK | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if not isinstance(value, str):
            raise ValueError("must be a non-empty string (or a list of one)")
        return value


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def decode_params(req: _Request, default_max: int) -> tuple[DecodeParams, JsonFormat | None]:
    """Decoding parameters and the output format of a request (None: free text) — ApiError 400 on anything
    unsupported."""
    if _or(req.n, 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    max_tokens = req.max_completion_tokens or _or(req.max_tokens, default_max)
    try:
        out_fmt = parse_response_format(req.response_format.model_dump() if req.response_format else None)
    except ValueError as e:
        raise ApiError(400, f"response_format: {e}", param="response_format") from None
    if out_fmt is not None and max_tokens < 2:
        raise ApiError(400, f"{out_fmt.kind} needs max_tokens >= 2", param="max_tokens")
    try:
        params = DecodeParams(
            max_tokens,
            float(_or(req.repetition_penalty, 1.0)),
            float(_or(req.temperature, 0.0)),
            float(_or(req.top_p, 1.0)),
            _or(req.seed, 0),
            tuple(req.stop or ()),
        )
    except ValueError as e:
        raise ApiError(400, str(e).replace("DecodeParams: ", "")) from None
    return params, out_fmt


def requested_logprobs(req: ChatRequest | CompletionRequest) -> int | None:
    """How many top log-probs a request wants per token (None: no log-probs) — ApiError 400 if inconsistent.

    Chat: `logprobs` (bool) and `top_logprobs` (0..20, needs logprobs=true); completions: `logprobs` (0..20).
    """
    if isinstance(req, ChatRequest):
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
        k = _or(req.top_logprobs, 0) if req.logprobs else None
    else:
        k = req.logprobs
    if k is not None and req.stream:
        raise ApiError(400, "log-probabilities are not available with stream=true", param="logprobs")
    return k


# --------------------------------------------------------------------------------------------- responses


def _usage(r: Result) -> dict[str, int]:
    total = r.prompt_tokens + r.response_tokens
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.response_tokens, "total_tokens": total}


def format_logprobs(backend: Backend, result: Result, chat: bool) -> dict[str, Any]:
    """Result.logprobs in OpenAI's format (a trailing EOS token, not part of the text, is left out)."""
    ids, steps = list(result.ids), list(result.logprobs or [])
    n = min(len(ids), len(steps))
    if n and result.finish_reason == "stop" and ids[n - 1] in backend.eos_ids:
        n -= 1
    if chat:
        content = []
        for t, (lp, top) in zip(ids[:n], steps[:n], strict=True):
            text, raw = backend.token(t)
            alts = []
            for a, alp in top:
                at, ab = backend.token(a)
                alts.append({"token": at, "logprob": alp, "bytes": ab})
            content.append({"token": text, "logprob": lp, "bytes": raw, "top_logprobs": alts})
        return {"content": content, "refusal": None}
    tokens, offsets, pos = [], [], 0
    for t in ids[:n]:
        text = backend.token(t)[0]
        tokens.append(text)
        offsets.append(pos)
        pos += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp for lp, _ in steps[:n]],
        "top_logprobs": [{backend.token(a)[0]: alp for a, alp in top} for _, top in steps[:n]],
        "text_offset": offsets,
    }


def _check_result(result: Result | Exception) -> Result:
    if isinstance(result, ApiError):
        raise result
    if isinstance(result, Exception):
        raise ApiError(500, f"generation failed: {result}")
    if result.finish_reason == "error":
        raise ApiError(400, result.error or "generation failed")
    return result


async def _events(job: Job, head: dict[str, Any], chat: bool) -> AsyncIterator[str]:
    """Server-sent events of a streamed job: chunks, a last chunk with finish_reason (or an error), [DONE]."""

    def chunk(delta: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if delta:
                d["content"] = delta
            choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

    if chat:
        yield chunk(None, None, first=True)
    while True:
        kind, value = await job.next()
        if kind == "delta":
            yield chunk(value, None)
            continue
        if isinstance(value, Exception) or value.finish_reason == "error":
            msg = str(value) if isinstance(value, Exception) else value.error
            yield f"data: {json.dumps({'error': {'message': msg, 'type': 'server_error'}})}\n\n"
        else:
            yield chunk(None, value.finish_reason)
        break
    yield "data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------------- app


class BearerAuth:
    """ASGI middleware: every request needs `Authorization: Bearer <key>` (before routing, as OpenAI)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(header, self.expected):
                what = "missing" if not header else "incorrect"
                await ApiError(401, f"{what} API key", code="invalid_api_key").response()(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


def _validation_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's validation error as a 400 naming the first bad field (messages[0].role, temperature...)."""
    err = exc.errors()[0]
    loc = [p for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return ApiError(400, f"request body is not valid JSON: {err.get('ctx', {}).get('error', '')}")
    if not loc and isinstance(err.get("input"), bytes):
        return ApiError(400, "request body must be JSON with Content-Type: application/json")
    if not loc:
        return ApiError(400, "request body must be a JSON object")
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") != "missing":
        msg += f" (got {json.dumps(err.get('input'), default=str)[:80]})"
    return ApiError(400, f"'{param}': {msg}", param=param)


def make_app(
    engine_or_backend: Engine | Backend,
    *,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_batch: int = 16,
    batch_wait_ms: int = 10,
    batching: Batching = "continuous",
    slot_cache_len: int = 2048,
    max_tokens_default: int = 512,
    any_model: bool = False,
) -> FastAPI:
    """The API over an Engine (scheduled by `infer.batcher.EngineBackend`: max_batch, batching, and
    batch_wait_ms for static batches or slot_cache_len for continuous ones apply) or a Backend.

    served_model_name: the model id clients use (default: the engine's / backend's name); any_model: answer
    requests for any model id (echoed back) instead of 404, for a test double standing in for several models.
    """
    backend: Backend = (
        EngineBackend(engine_or_backend, max_batch, batch_wait_ms, batching, slot_cache_len)
        if isinstance(engine_or_backend, Engine)
        else engine_or_backend
    )
    model_id = served_model_name or backend.name
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, strict_content_type=False)
    app.state.backend, app.state.model_id = backend, model_id
    if api_key is not None:
        app.add_middleware(BearerAuth, key=api_key)

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestValidationError):
            exc = _validation_error(exc)
        elif isinstance(exc, HTTPException):
            code = "not_found" if exc.status_code == 404 else None
            exc = ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code)
        elif not isinstance(exc, ApiError):  # a bug: uvicorn logs the traceback, the client gets a 500
            exc = ApiError(500, f"internal server error ({type(exc).__name__})")
        return exc.response()

    for exc_class in (ApiError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_class, api_error)
    card = {"id": model_id, "object": "model", "created": 0, "owned_by": "xlit"}

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> JSONResponse:
        if name != model_id:
            raise ApiError(404, f"the model '{name}' does not exist", param="model", code="model_not_found")
        return JSONResponse(card)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatRequest) -> JSONResponse | StreamingResponse:
        return await complete(req)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> JSONResponse | StreamingResponse:
        return await complete(req)

    async def complete(req: ChatRequest | CompletionRequest) -> JSONResponse | StreamingResponse:
        chat = isinstance(req, ChatRequest)
        if req.model != model_id and not any_model:
            msg = f"the model '{req.model}' does not exist; this server serves '{model_id}'"
            raise ApiError(404, msg, param="model", code="model_not_found")
        params, fmt = decode_params(req, max_tokens_default)
        min_tokens = getattr(backend, "min_tokens", None)
        if fmt is not None and min_tokens is not None:
            try:
                shortest = await run_in_threadpool(min_tokens, fmt)
            except ValueError as e:  # compiles on its own, not with this tokenizer
                raise ApiError(400, f"response_format: json_schema: {e}", param="response_format") from None
            if shortest is not None and params.max_new_tokens < shortest:
                msg = f"{fmt.kind} needs max_tokens >= {shortest} (its shortest reply)"
                raise ApiError(400, msg, param="max_tokens")
        prompt: Prompt = req.prompt if isinstance(req, CompletionRequest) else [dict(m) for m in req.messages]
        try:
            ids = await run_in_threadpool(backend.encode, prompt)
        except Exception as e:
            what, param = ("apply the chat template", "messages") if chat else ("encode the prompt", "prompt")
            raise ApiError(400, f"cannot {what}: {e}", param=param) from None
        limit = backend.context_length
        if len(ids) + params.max_new_tokens > limit:
            raise ApiError(
                400,
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_new_tokens}) exceeds the "
                f"context of {limit} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        top_k = requested_logprobs(req)
        job = Job(prompt, ids, params, fmt, bool(req.stream), top_k)
        backend.submit(job)
        head = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": ("chat.completion" if chat else "text_completion"),
            "created": int(time.time()),
            "model": req.model,
        }
        if req.stream:
            head["object"] = "chat.completion.chunk" if chat else "text_completion"
            sse = _events(job, head, chat)
            return StreamingResponse(
                sse, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        result = _check_result(await job.result())
        choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason, "logprobs": None}
        if top_k is not None:
            choice["logprobs"] = format_logprobs(backend, result, chat)
        if chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        return JSONResponse({**head, "choices": [choice], "usage": _usage(result)})

    return app


def bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn (port 0: any free port, read it from getsockname())."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
