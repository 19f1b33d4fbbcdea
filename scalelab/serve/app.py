"""The OpenAI-compatible HTTP API and the web chat page (FastAPI), on top of the batching engine.

    scalelab serve --run runs/demo                      # http://127.0.0.1:8000 : chat page; /v1/... : the API
    SCALELAB_API_KEY=secret scalelab serve --run runs/demo --host 0.0.0.0 --allowed-host box.lan

Routes: ``GET /`` (chat page), ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (both streamed as server-sent events with ``stream: true``). The served model answers to its
id (the run's name) and to "scalelab". Every 4xx, FastAPI's validation errors and 404s included, is answered in
OpenAI's format ``{"error": {"message", "type", "param", "code"}}``. Before any route, ``serve.guard`` checks the Host
header, the API key and the body size. Concurrent requests are batched by ``lm.inference.engine.Engine``; a full queue
answers 429; a device out of memory fails that request with 503; a client that disconnects cancels its generation.

In Python: ``app = build_app(ServeConfig(run="runs/demo"))`` then ``serve.server.ServeServer(app, cfg).run()``; tests
wrap an engine of their own with ``create_app``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from scalelab.common import UsageError
from scalelab.lm.chat import stop_token_ids
from scalelab.lm.special_tokens import BOS, encode_text
from scalelab.serve import schemas
from scalelab.serve.config import SERVED_ALIAS, ServeConfig
from scalelab.serve.guard import Guard, error_response
from scalelab.serve.schemas import APIError, ChatCompletionRequest, CompletionRequest

STATIC_DIR = Path(__file__).resolve().parent / "static"


# ----------------------------------------------------------------------------------------------- errors

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
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(list(exc.errors()))
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"unknown route {request.method} {request.url.path} (the API: {api_routes(request.app)})"
        else:
            message = str(exc.detail)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(APIError(exc.status_code, message, type_, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))


def api_routes(app: FastAPI) -> str:
    """The API's routes as 'GET /v1/models, POST /v1/completions, ...', read from the app itself."""
    return ", ".join(f"{method} {route.path}" for route in app.routes if isinstance(route, APIRoute)
                     and route.path.startswith("/v1") for method in sorted(route.methods or ()))


def out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it came from, is the device running out of memory (torch's error, or a
    RuntimeError saying so, as older torch and other backends raise)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, BaseExceptionGroup):  # raised through a task group
            return any(out_of_memory(e) for e in exc.exceptions)
        if isinstance(exc, (oom, MemoryError)) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


OOM_MESSAGE = ("the device ran out of memory while generating this answer: retry, or ask for fewer max_tokens "
               "(the server goes on serving)")
SHUTDOWN_MESSAGE = "the server is shutting down: this answer was cut short"


# ----------------------------------------------------------------------------------------------- the server state

@dataclass
class Served:
    """What the routes need: the engine, the tokenizer, the model id, the limits and the guards' settings, and the
    answers being generated (so that a shutdown can end each one cleanly)."""

    engine: Any
    tokenizer: Any
    model_id: str
    context_length: int
    max_tokens_limit: int
    api_key: str = ""
    protect_all: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    open: set = field(default_factory=set)  # engine requests being answered
    closing: bool = False  # shutting down: no new answers
    ended: bool = False  # the answers still open were cut short by the shutdown

    def token_id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise UsageError(f"the tokenizer has no special token {token!r}")
        return idx

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "scalelab",
                "context_length": self.context_length, "max_tokens_limit": self.max_tokens_limit}

    def end_all(self) -> None:
        """Cut every open answer short: streams end with an error event and [DONE], whole answers with 503."""
        self.closing = self.ended = True
        for req in list(self.open):
            req.cancel()

    def cut_short(self, req: Any) -> bool:
        return self.ended and getattr(req, "finish_reason", "cancelled") == "cancelled"


# ----------------------------------------------------------------------------------------------- generation

def _check_model(served: Served, model: str | None) -> None:
    if model is not None and model not in (served.model_id, SERVED_ALIAS):
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{served.model_id}' (also "
                            f"called '{SERVED_ALIAS}')",
                       param="model", code="model_not_found")


def _limit_tokens(served: Served, body: schemas.GenerationRequest, n_prompt: int, prompt_param: str) -> int:
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


def _submit(served: Served, body: schemas.GenerationRequest, prompt_ids: list[int], prompt_param: str) -> Any:
    from scalelab.lm.inference.engine import QueueFull

    if served.closing:
        raise APIError(503, "the server is shutting down", "server_error", code="shutting_down")
    max_tokens = _limit_tokens(served, body, len(prompt_ids), prompt_param)
    stop_ids = [] if body.ignore_eos else stop_token_ids(served.tokenizer)
    try:
        return served.engine.submit(prompt_ids, max_tokens=max_tokens, temperature=body.temperature,
                                    top_p=body.top_p, top_k=body.top_k, seed=body.seed, stop_ids=stop_ids,
                                    stop_strings=body.stops)
    except QueueFull:
        raise APIError(429, "the server is busy (its request queue is full): retry in a moment",
                       "rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
    except ValueError as e:  # the engine's own checks (prompt length, token ids, sampling values)
        context = "context length" in str(e)
        raise APIError(400, str(e), param=prompt_param if context else None,
                       code="context_length_exceeded" if context else None) from None
    except Exception as e:
        if out_of_memory(e):
            raise oom_error() from None
        if isinstance(e, RuntimeError):  # the engine is closed: the server is shutting down
            raise APIError(503, f"the server is shutting down ({e})", "server_error", code="shutting_down") \
                from None
        raise


def oom_error() -> APIError:
    return APIError(503, OOM_MESSAGE, "server_error", code="out_of_memory", headers={"Retry-After": "1"})


async def _deltas(req: Any) -> AsyncIterator[str]:
    """The engine request's text deltas (``async for`` on the request: no thread per reader); cancels if abandoned."""
    try:
        async for delta in req:
            if delta:
                yield delta
    finally:
        req.cancel()


async def _collect(served: Served, request: Request, req: Any) -> str:
    """The whole text of a non-streamed answer; a client that disconnects meanwhile cancels the generation. Out of
    memory, or cut short by a shutdown: 503."""
    parts: list[str] = []

    async def read() -> None:
        async for delta in _deltas(req):
            parts.append(delta)

    async def watch(scope: anyio.CancelScope) -> None:
        while not await request.is_disconnected():
            await anyio.sleep(0.1)
        req.cancel()
        scope.cancel()

    served.open.add(req)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            await read()
            tg.cancel_scope.cancel()
    except Exception as e:
        if out_of_memory(e):
            raise oom_error() from None
        raise
    finally:
        served.open.discard(req)
    if served.cut_short(req):
        raise APIError(503, SHUTDOWN_MESSAGE, "server_error", code="shutting_down")
    return "".join(parts)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _finish(req: Any) -> str:
    """OpenAI's finish_reason: "stop" or "length" (an engine shut down mid-answer reads as "stop")."""
    reason = getattr(req, "finish_reason", None) or "stop"
    return reason if reason in ("stop", "length") else "stop"


async def _stream(served: Served, req: Any, first: Callable[[], dict | None],
                  piece: Callable[[str], dict], last: Callable[[str], dict], usage: Callable[[], dict] | None,
                  ) -> AsyncIterator[str]:
    """Server-sent events: optional opening chunk, one chunk per delta, the finishing chunk, usage, [DONE]; an answer
    cut short by a shutdown, or failed, ends with an error event then [DONE].

    Each yield is a socket write (a syscall, and a wake-up of the client), so the opening chunk goes out with the
    first delta and the finishing chunk, usage and [DONE] go out together: 3 writes fewer per answer, events
    unchanged.
    """
    head = ""
    served.open.add(req)
    try:
        opening = first()
        head = _sse(opening) if opening is not None else ""
        async for delta in _deltas(req):
            yield head + _sse(piece(delta))
            head = ""
        if served.cut_short(req):
            tail = head + _sse(schemas.error_body(SHUTDOWN_MESSAGE, "server_error", code="shutting_down"))
        else:
            tail = head + _sse(last(_finish(req))) + (_sse(usage()) if usage is not None else "")
    except Exception as e:  # the status line is already sent: report in-band, as OpenAI does
        error = (schemas.error_body(OOM_MESSAGE, "server_error", code="out_of_memory") if out_of_memory(e) else
                 schemas.error_body(f"generation failed: {type(e).__name__}: {e}", "server_error"))
        tail = head + _sse(error)
    finally:
        req.cancel()
        served.open.discard(req)
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
    app.add_middleware(Guard, served=served, max_bytes=max_request_bytes)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
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

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [served.model_card()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        _check_model(served, model_id)
        return served.model_card()

    @app.post("/v1/chat/completions")
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
                served, req,
                lambda: schemas.chat_chunk(id_, model, created, {"role": "assistant", "content": ""}, None, wu),
                lambda d: schemas.chat_chunk(id_, model, created, {"content": d}, None, wu),
                lambda fr: schemas.chat_chunk(id_, model, created, {}, fr, wu),
                (lambda: schemas.usage_chunk(id_, model, created, "chat.completion.chunk",
                                             *_counts(req, len(prompt_ids)))) if wu else None,
            ), media_type="text/event-stream", headers=SSE_HEADERS)
        text = await _collect(served, request, req)
        return JSONResponse(schemas.chat_completion(id_, model, text, _finish(req), *_counts(req, len(prompt_ids))))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check_model(served, body.model)
        prompt = str(body.prompt)
        prompt_ids = [served.token_id(BOS), *encode_text(served.tokenizer, prompt)]
        req = _submit(served, body, prompt_ids, "prompt")
        id_, created, model = schemas.new_id("cmpl"), schemas.now(), served.model_id
        echo = prompt if body.echo else ""
        if body.stream:
            wu = body.include_usage
            return StreamingResponse(_stream(
                served, req,
                (lambda: schemas.completion_chunk(id_, model, created, echo, None, wu)) if echo else (lambda: None),
                lambda d: schemas.completion_chunk(id_, model, created, d, None, wu),
                lambda fr: schemas.completion_chunk(id_, model, created, "", fr, wu),
                (lambda: schemas.usage_chunk(id_, model, created, "text_completion",
                                             *_counts(req, len(prompt_ids)))) if wu else None,
            ), media_type="text/event-stream", headers=SSE_HEADERS)
        text = await _collect(served, request, req)
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
                    api_key=cfg.resolved_api_key(), protect_all=cfg.protect_all,
                    allowed_hosts=cfg.allowed_hosts())
    return create_app(served, cors_origins=cfg.cors_origin, max_request_bytes=cfg.max_request_bytes,
                      on_shutdown=engine.close)


__all__ = ["Served", "build_app", "create_app"]
