"""What every request passes before a route sees it: the Host header, the API key, then a size-limited body.

In this order, so that a page on another site cannot reach a key-less server through DNS rebinding (its requests
carry the attacker's host name), and so that a request without the key learns nothing else (not even whether its
JSON parses). The body is read whole here, up to ``--max-request-bytes`` whatever its encoding (Content-Length or
chunked), then handed on; the routes parse JSON anyway, so nothing streams that would not be buffered later.

    app.add_middleware(Guard, served=served, max_bytes=1_000_000)
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from scalelab.serve.config import is_ip
from scalelab.serve.schemas import APIError


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def host_name(header: str) -> str:
    """The name in a Host header, without port, brackets or trailing dot, lower case ("[::1]:8000" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def host_allowed(header: str | None, allowed: list[str]) -> bool:
    """localhost and IP literals always (a rebinding attack needs a name it controls), then the names allowed."""
    if header is None:  # HTTP/1.0 without Host: not a browser, so not a rebinding attack
        return True
    name = host_name(header)
    return name == "localhost" or is_ip(name) or "*" in allowed or name in allowed


def presented_key(authorization: str) -> str | None:
    """The key in 'Bearer KEY' or in HTTP Basic credentials (any user name, the key as password), else None."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


class Guard:
    """ASGI middleware: Host check (421), API key (401), body limit (413), in that order; ``served`` is read per
    request (``api_key``, ``protect_all``, ``allowed_hosts``), so tests may swap it."""

    def __init__(self, app: Any, served: Any, max_bytes: int) -> None:
        self.app, self.served, self.max_bytes = app, served, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refused = self.refusal(scope, headers)
        if refused is not None:
            return await error_response(refused)(scope, receive, send)
        body, complete = await self.read_body(headers, receive)
        if body is None:
            await self.drain(receive)
            too_big = APIError(413, f"request body exceeds the server limit of {self.max_bytes} bytes "
                                    "(--max-request-bytes)", code="request_too_large", headers={"Connection": "close"})
            return await error_response(too_big)(scope, receive, send)
        if not complete:  # the client went away while sending
            return None
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: disconnect notices for streaming answers

        await self.app(scope, replay, send)

    def refusal(self, scope: dict, headers: dict[str, str]) -> APIError | None:
        served = self.served
        if not host_allowed(headers.get("host"), served.allowed_hosts):
            return APIError(421, f"this server does not answer to host '{host_name(headers['host'])}' (start it with "
                                 "--allowed-host NAME to allow that name)", code="host_not_allowed")
        path = scope.get("path", "")
        if not served.api_key or not (served.protect_all or path == "/v1" or path.startswith("/v1/")):
            return None
        api = path.startswith("/v1")
        challenge = {"WWW-Authenticate": "Bearer" if api else 'Basic realm="scalelab", charset="UTF-8"'}
        key = presented_key(headers.get("authorization", ""))
        if key is None:
            how = "send 'Authorization: Bearer YOUR_KEY'" if api else "give the key as the password"
            return APIError(401, f"missing API key: {how} (the server was started with --api-key)",
                            code="invalid_api_key", headers=challenge)
        if not secrets.compare_digest(key.encode(), served.api_key.encode()):
            return APIError(401, "incorrect API key provided", code="invalid_api_key", headers=challenge)
        return None

    async def drain(self, receive: Callable, seconds: float = 5.0) -> None:
        """Read and drop the rest of an over-limit body (up to 8x the limit, a few seconds) before answering 413:
        closing a socket with unread data makes the kernel reset the connection, and the client would see a reset
        instead of the 413 that says why."""
        import asyncio

        async def rest() -> None:
            seen = 0
            while seen <= 8 * self.max_bytes:
                message = await receive()
                seen += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return

        try:
            await asyncio.wait_for(rest(), seconds)
        except TimeoutError:
            pass

    async def read_body(self, headers: dict[str, str], receive: Callable) -> tuple[bytes | None, bool]:
        """(body, complete): body None when over the limit (declared or counted), complete False on a hang-up."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return None, True
        parts, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", False
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                return None, True
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts), True
