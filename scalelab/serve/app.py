"""The OpenAI-compatible HTTP API and the web chat page (FastAPI), on top of the batching engine.

    scalelab serve --run runs/demo                      # http://127.0.0.1:8000 : chat page; /v1/... : the API
    SCALELAB_API_KEY=secret scalelab serve --run runs/demo --host 0.0.0.0

Routes: ``GET /`` (chat page), ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (both streamed as server-sent events with ``stream: true``). Every 4xx, FastAPI's
validation errors and 404s included, is answered in OpenAI's format ``{"error": {"message", "type", "param",
"code"}}``. Concurrent requests are batched by ``lm.inference.engine.Engine``; a full queue answers 429; a client
that disconnects cancels its generation.

In Python: ``app = build_app(ServeConfig(run="runs/demo"))`` then ``uvicorn.run(app, ...)``; tests wrap an engine of
their own with ``create_app``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from scalelab.common import UsageError
from scalelab.lm.inference.loading import DTYPE_HELP
from scalelab.lm.special_tokens import BOS, END
from scalelab.serve import schemas
from scalelab.serve.schemas import APIError, ChatCompletionRequest, CompletionRequest

STATIC_DIR = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "SCALELAB_API_KEY"


@dataclass
class ServeConfig:
    """Serve a run's model over an OpenAI-compatible HTTP API, with a web chat page at /."""

    run: str = field(default="", metadata={"help": "run folder holding tokenizer/ and the checkpoint (required)"})
    stage: str = field(default="chat", metadata={"help": "checkpoint stage to serve (chat, base, or a step folder)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 0.0.0.0 exposes the server to the "
                                                             "network (set an API key then)"})
    port: int = field(default=8000, metadata={"help": "TCP port; 0 = any free port"})
    api_key: str = field(default="", metadata={"help": f"require 'Authorization: Bearer KEY' on /v1 routes; "
                                                       f"empty = the {API_KEY_ENV} variable, or no key"})
    model_name: str = field(default="", metadata={"help": "model id shown by /v1/models; empty = the run's name"})
    max_tokens_limit: int = field(default=512, metadata={"help": "largest max_tokens a request may ask for (tokens)"})
    max_batch: int = field(default=16, metadata={"help": "sequences decoded together in one batch"})
    max_queue: int = field(default=64, metadata={"help": "requests waiting for a batch slot; more answer 429"})
    stream_interval: str = field(default="auto", metadata={
        "help": "tokens per streamed event after the first: auto = the streams decoding (every token for one "
                "stream, 8 at 8: about one event per decode step at any load, so the HTTP work stays small on a busy "
                "CPU server), but text held back 20 ms at most; 1 = every token; K = every K tokens"})
    max_request_bytes: int = field(default=1_000_000, metadata={"help": "largest request body (bytes); more is 413"})
    cors_origin: list[str] = field(default_factory=list, metadata={
        "help": "origins allowed to call the API from a browser (e.g. http://localhost:3000); none = no CORS"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level (warning hides request lines)"})

    def engine_stream_interval(self) -> int | str:
        """``stream_interval`` as the engine takes it: "auto" or an integer >= 1 (else a UsageError)."""
        value = str(self.stream_interval).strip().lower()
        if value == "auto":
            return value
        if not value.isdigit() or int(value) < 1:
            raise UsageError("--stream-interval must be 'auto' or an integer of at least 1, "
                             f"got {self.stream_interval!r}")
        return int(value)

    def resolved_api_key(self) -> str:
        return self.api_key or os.environ.get(API_KEY_ENV, "")

    def check(self) -> None:
        if not self.run:
            raise UsageError("--run is required (a run folder with tokenizer/ and a checkpoint)")
        for name in ("max_tokens_limit", "max_batch", "max_queue", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        self.engine_stream_interval()
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be in 0..65535, got {self.port}")


# ----------------------------------------------------------------------------------------------- errors

def _error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line from pydantic's error list, and the OpenAI ``param`` (dotted path inside the body)."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first.get('msg'))})", None
    if first.get("type") == "missing":
        return f"missing required parameter '{param}'", param
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return (f"invalid value for '{param}': {msg}{more}" if param else f"invalid request: {msg}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(list(exc.errors()))
        return _error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"unknown route {request.method} {request.url.path} (see GET /v1/models, POST /v1/chat/" \
                      "completions, POST /v1/completions)"
        else:
            message = str(exc.detail)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(APIError(exc.status_code, message, type_, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before anything parses it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        too_big = APIError(413, f"request body exceeds the server limit of {self.max_bytes} bytes "
                                "(--max-request-bytes)", code="request_too_large")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _error_response(too_big)(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # chunked upload without a Content-Length
                    raise too_big
            return message

        await self.app(scope, counted, send)


# ----------------------------------------------------------------------------------------------- the server state

@dataclass
class Served:
    """What the routes need: the engine, the tokenizer, the model id and the limits."""

    engine: Any
    tokenizer: Any
    model_id: str
    context_length: int
    max_tokens_limit: int
    api_key: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def token_id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise UsageError(f"the tokenizer has no special token {token!r}")
        return idx

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "scalelab",
                "context_length": self.context_length, "max_tokens_limit": self.max_tokens_limit}


def _served(request: Request) -> Served:
    return request.app.state.served


async def require_api_key(request: Request) -> None:
    """Bearer-token check on the /v1 routes (a no-op when the server has no key). ``async``: FastAPI runs a plain
    ``def`` dependency in a worker thread, a thread hop per request for a check that never blocks."""
    key = _served(request).api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send 'Authorization: Bearer YOUR_KEY' (the server was started with "
                            "--api-key)", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "incorrect API key provided", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


# ----------------------------------------------------------------------------------------------- generation

def _check_model(served: Served, model: str | None) -> None:
    if model is not None and model != served.model_id:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{served.model_id}'",
                       param="model", code="model_not_found")


def _limit_tokens(served: Served, body: schemas._Request, n_prompt: int, prompt_param: str) -> int:
    """max_tokens for this request, or a 400 saying which limit (server limit or context length) was hit."""
    ctx = served.context_length
    if n_prompt >= ctx:
        raise APIError(400, f"the prompt is {n_prompt} tokens but the model's context length is {ctx} tokens "
                            "(leave room for at least one generated token): shorten it", param=prompt_param,
                       code="context_length_exceeded")
    asked = body.requested_max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if asked is None:
        return min(served.max_tokens_limit, ctx - n_prompt)
    if asked > served.max_tokens_limit:
        raise APIError(400, f"{param}={asked} exceeds this server's limit of {served.max_tokens_limit} "
                            "(--max-tokens-limit)", param=param, code="max_tokens_exceeded")
    if n_prompt + asked > ctx:
        raise APIError(400, f"the prompt ({n_prompt} tokens) plus {param}={asked} exceeds the model's context "
                            f"length of {ctx} tokens: lower {param} to at most {ctx - n_prompt} or shorten the "
                            "prompt", param=param, code="context_length_exceeded")
    return asked


def _submit(served: Served, body: schemas._Request, prompt_ids: list[int], prompt_param: str) -> Any:
    from scalelab.lm.inference.engine import QueueFull

    max_tokens = _limit_tokens(served, body, len(prompt_ids), prompt_param)
    stop_ids = [] if body.ignore_eos else [served.token_id(END)]
    try:
        return served.engine.submit(prompt_ids, max_tokens=max_tokens, temperature=body.temperature,
                                    top_p=body.top_p, top_k=body.top_k, seed=body.seed, stop_ids=stop_ids,
                                    stop_strings=body.stops)
    except QueueFull:
        raise APIError(429, "the server is busy (its request queue is full): retry in a moment",
                       "rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
    except RuntimeError as e:  # the engine is closed: the server is shutting down
        raise APIError(503, f"the server is shutting down ({e})", "server_error", code="shutting_down") from None
    except ValueError as e:  # the engine's own checks (prompt length, token ids, sampling values)
        context = "context length" in str(e)
        raise APIError(400, str(e), param=prompt_param if context else None,
                       code="context_length_exceeded" if context else None) from None


async def _deltas(req: Any) -> AsyncIterator[str]:
    """The engine request's text deltas (``async for`` on the request: no thread per reader); cancels if abandoned."""
    try:
        async for delta in req:
            if delta:
                yield delta
    finally:
        req.cancel()


async def _collect(request: Request, req: Any) -> str:
    """The whole text of a non-streamed answer; a client that disconnects meanwhile cancels the generation."""
    parts: list[str] = []

    async def read() -> None:
        async for delta in _deltas(req):
            parts.append(delta)

    async def watch(scope: anyio.CancelScope) -> None:
        while not await request.is_disconnected():
            await anyio.sleep(0.1)
        req.cancel()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        await read()
        tg.cancel_scope.cancel()
    return "".join(parts)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _finish(req: Any) -> str:
    """OpenAI's finish_reason: "stop" or "length" (an engine shut down mid-answer reads as "stop")."""
    reason = getattr(req, "finish_reason", None) or "stop"
    return reason if reason in ("stop", "length") else "stop"


async def _stream(req: Any, first: Callable[[], dict | None],
                  piece: Callable[[str], dict], last: Callable[[str], dict], usage: Callable[[], dict] | None,
                  ) -> AsyncIterator[str]:
    """Server-sent events: optional opening chunk, one chunk per delta, the finishing chunk, usage, [DONE].

    Each yield is a socket write (a syscall, and a wake-up of the client), so the opening chunk goes out with the
    first delta and the finishing chunk, usage and [DONE] go out together: 3 writes fewer per answer, events
    unchanged.
    """
    head = ""
    try:
        opening = first()
        head = _sse(opening) if opening is not None else ""
        async for delta in _deltas(req):
            yield head + _sse(piece(delta))
            head = ""
        tail = head + _sse(last(_finish(req))) + (_sse(usage()) if usage is not None else "")
    except Exception as e:  # the status line is already sent: report in-band, as OpenAI does
        tail = head + _sse(schemas.error_body(f"generation failed: {type(e).__name__}: {e}", "server_error"))
    finally:
        req.cancel()
    yield tail + "data: [DONE]\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _counts(req: Any, n_prompt: int) -> tuple[int, int]:
    return int(getattr(req, "prompt_tokens", n_prompt)), int(getattr(req, "completion_tokens", 0))


# ----------------------------------------------------------------------------------------------- the app

def create_app(served: Served, cors_origins: list[str] | None = None, max_request_bytes: int = 1_000_000,
               on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app around an engine (anything with ``submit(...)``) and its tokenizer."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="scalelab", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.served = served
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    auth = [Depends(require_api_key)]

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = getattr(served.engine, "stats", None)
        return {"status": "ok", "model": served.model_id, "auth_required": bool(served.api_key),
                "context_length": served.context_length, "max_tokens_limit": served.max_tokens_limit,
                "engine": stats() if callable(stats) else None}

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [served.model_card()]}

    @app.get("/v1/models/{model_id}", dependencies=auth)
    async def get_model(model_id: str) -> dict[str, Any]:
        _check_model(served, model_id)
        return served.model_card()

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        from scalelab.lm.chat import render_prompt

        _check_model(served, body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            prompt_ids = render_prompt(served.tokenizer, messages, where="request")
        except UsageError as e:  # "request: messages[1].role: ..." -> param messages[1].role
            message = str(e).removeprefix("request: ")
            head = message.split(": ", 1)[0]
            raise APIError(400, message, param=head if head.startswith("messages") else "messages") from None
        req = _submit(served, body, prompt_ids, "messages")
        id_, created, model = schemas.new_id("chatcmpl"), schemas.now(), served.model_id
        if body.stream:
            wu = body.include_usage
            return StreamingResponse(_stream(
                req,
                lambda: schemas.chat_chunk(id_, model, created, {"role": "assistant", "content": ""}, None, wu),
                lambda d: schemas.chat_chunk(id_, model, created, {"content": d}, None, wu),
                lambda fr: schemas.chat_chunk(id_, model, created, {}, fr, wu),
                (lambda: schemas.usage_chunk(id_, model, created, "chat.completion.chunk",
                                             *_counts(req, len(prompt_ids)))) if wu else None,
            ), media_type="text/event-stream", headers=SSE_HEADERS)
        text = await _collect(request, req)
        return JSONResponse(schemas.chat_completion(id_, model, text, _finish(req), *_counts(req, len(prompt_ids))))

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check_model(served, body.model)
        prompt = str(body.prompt)
        prompt_ids = [served.token_id(BOS), *served.tokenizer.encode(prompt, add_special_tokens=False).ids]
        req = _submit(served, body, prompt_ids, "prompt")
        id_, created, model = schemas.new_id("cmpl"), schemas.now(), served.model_id
        echo = prompt if body.echo else ""
        if body.stream:
            wu = body.include_usage
            return StreamingResponse(_stream(
                req,
                (lambda: schemas.completion_chunk(id_, model, created, echo, None, wu)) if echo else (lambda: None),
                lambda d: schemas.completion_chunk(id_, model, created, d, None, wu),
                lambda fr: schemas.completion_chunk(id_, model, created, "", fr, wu),
                (lambda: schemas.usage_chunk(id_, model, created, "text_completion",
                                             *_counts(req, len(prompt_ids)))) if wu else None,
            ), media_type="text/event-stream", headers=SSE_HEADERS)
        text = await _collect(request, req)
        return JSONResponse(schemas.completion(id_, model, echo + text, _finish(req), *_counts(req, len(prompt_ids))))

    return app


# The page loads nothing from elsewhere; the policy makes the browser enforce it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def build_app(cfg: ServeConfig) -> FastAPI:
    """Load the run's tokenizer and checkpoint, start the engine, and wrap both in the app."""
    from scalelab.lm.inference.engine import Engine
    from scalelab.lm.inference.loading import load_for_inference, run_in_fresh_thread

    cfg.check()
    run = Path(cfg.run)
    if not run.exists():
        raise UsageError(f"{run}: no such run folder")
    # loaded off the main thread so that only the engine thread runs torch's OpenMP (see run_in_fresh_thread)
    model, tokenizer, _step = run_in_fresh_thread(load_for_inference, run, cfg.stage or None, cfg.device, cfg.dtype)
    engine = Engine(model, tokenizer, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                    stream_interval=cfg.engine_stream_interval())
    served = Served(engine=engine, tokenizer=tokenizer, model_id=cfg.model_name or run.resolve().name,
                    context_length=engine.context_length, max_tokens_limit=cfg.max_tokens_limit,
                    api_key=cfg.resolved_api_key())
    return create_app(served, cors_origins=cfg.cors_origin, max_request_bytes=cfg.max_request_bytes,
                      on_shutdown=engine.close)


__all__ = ["ServeConfig", "Served", "build_app", "create_app", "require_api_key"]
