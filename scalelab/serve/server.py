"""Running the app under uvicorn: read timeouts on half-sent requests, a graceful drain, the address actually bound.

    server = ServeServer(app, ServeConfig(run="runs/demo", port=0), on_started=print)
    server.run()          # SIGTERM / Ctrl-C: answers finish or end cleanly, then the engine closes

uvicorn closes idle kept-alive connections but has no limit on how long a request may take to arrive, so a client
sending a header a minute holds a connection (and its memory) forever. ``timed_protocol`` adds two clocks to
uvicorn's httptools protocol: the headers must be complete ``header_timeout`` seconds after the connection opens (or
after a kept-alive request's first byte), the body ``body_timeout`` seconds after the headers; a late request is
answered 408 and closed.

On SIGTERM uvicorn stops accepting connections and, after its own timeout, cancels what is still running, which cuts
a stream mid-answer without a finish reason or ``[DONE]``. ``ServeServer.shutdown`` first lets open answers run
``shutdown_grace`` seconds, then ends the rest through the app (``Served.end_all``: an error event and ``[DONE]`` for a
stream, 503 for a whole answer), and only then hands over to uvicorn's shutdown.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from scalelab.serve.config import ServeConfig

TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s")


def timed_protocol(header_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a header clock and a body clock (see the module docstring)."""

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        timer: asyncio.TimerHandle | None = None

        def arm(self, seconds: float, what: str) -> None:
            self.disarm()
            self.timer = self.loop.call_later(seconds, self.expire, what, seconds)

        def disarm(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

        def expire(self, what: str, seconds: float) -> None:
            self.timer = None
            if self.transport is None or self.transport.is_closing():
                return
            if what == "headers" or self.cycle is None or not self.cycle.response_started:
                body = (b'{"error": {"message": "the request %s did not arrive within %g s", "type": '
                        b'"invalid_request_error", "param": null, "code": "request_timeout"}}'
                        % (what.encode(), seconds))
                self.transport.write(TIMEOUT_RESPONSE % (len(body), body))
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.arm(header_timeout, "headers")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.timer is None:  # a kept-alive connection's next request: its clock starts with its first byte
                self.arm(header_timeout, "headers")

        def on_headers_complete(self) -> None:
            self.arm(body_timeout, "body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

    return TimedHttpToolsProtocol


def uvicorn_config(app: Any, cfg: ServeConfig, log_level: str | None = None) -> uvicorn.Config:
    return uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level or cfg.log_level, lifespan="on",
                          http=timed_protocol(cfg.header_timeout, cfg.body_timeout), timeout_graceful_shutdown=3)


class ServeServer(uvicorn.Server):
    """uvicorn's server, with ``on_started(url)`` once listening and the drain of open answers on shutdown."""

    def __init__(self, app: Any, cfg: ServeConfig, on_started: Callable[[str], None] | None = None,
                 log_level: str | None = None) -> None:
        super().__init__(uvicorn_config(app, cfg, log_level))
        self.served, self.grace, self.on_started = app.state.served, cfg.shutdown_grace, on_started

    def url(self) -> str:
        """The address actually bound (the port the system chose for ``--port 0``)."""
        sock = self.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        if sock.family == socket.AF_INET6:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started(self.url())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new connections while the open answers drain
            server.close()
        served = self.served
        served.closing = True
        deadline = time.monotonic() + self.grace
        while served.open and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        served.end_all()
        deadline = time.monotonic() + 2.0  # the ended answers write their last events
        while served.open and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)
