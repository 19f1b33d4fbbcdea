"""`scalelab serve`'s configuration, importable without the web packages (so a missing one is named, not a traceback).

    from scalelab.serve.config import ServeConfig
    cfg = ServeConfig(run="runs/demo", allowed_host=["chat.example.org"], protect_all=True)
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from scalelab.common import UsageError
from scalelab.lm.inference.engine import AUTO_MAX_DELAY
from scalelab.lm.inference.loading import DTYPE_HELP

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "SCALELAB_API_KEY"
SERVED_ALIAS = "scalelab"  # the project's generic model name (the README's snippet): always the served model too


@dataclass
class ServeConfig:
    """Serve a run's model over an OpenAI-compatible HTTP API, with a web chat page at /."""

    run: str = field(default="", metadata={"help": "run folder holding tokenizer/ and the checkpoint (required)"})
    stage: str = field(default="", metadata={"help": "checkpoint stage to serve: chat or base; empty = chat if "
                                                     "present, else base"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 0.0.0.0 exposes the server to the "
                                                             "network (set an API key then)"})
    port: int = field(default=8000, metadata={"ge": 0, "le": 65535,
        "help": "TCP port; 0 = any free port (the one taken is printed)"})
    api_key: str = field(default="", metadata={"help": f"require 'Authorization: Bearer KEY' on /v1 routes; "
                                                       f"empty = the {API_KEY_ENV} variable, or no key"})
    protect_all: bool = field(default=False, metadata={
        "help": "with a key, require it on every route: the page, /static and /health too (a browser asks for it: "
                "any user name, the key as password)"})
    allowed_host: list[str] = field(default_factory=list, metadata={
        "help": "host names the server answers to besides localhost and IP addresses (the Host header; others get "
                "421, which stops DNS rebinding); * = any"})
    model_name: str = field(default="", metadata={"help": f"model id shown by /v1/models; empty = the run's name "
                                                          f"('{SERVED_ALIAS}' is accepted as well)"})
    max_tokens_limit: int = field(default=512, metadata={"ge": 1,
        "help": "largest max_tokens a request may ask for (tokens)"})
    max_batch: int = field(default=16, metadata={"ge": 1, "le": 1024,
        "help": "sequences decoded together in one batch"})
    max_queue: int = field(default=64, metadata={"ge": 1, "help": "requests waiting for a batch slot; more answer 429"})
    stream_interval: str = field(default="auto", metadata={
        "help": "tokens per streamed event after the first: auto = the streams decoding (every token for one "
                "stream, 8 at 8: about one event per decode step at any load, so the HTTP work stays small on a busy "
                f"CPU server), but text held back {AUTO_MAX_DELAY * 1000:g} ms at most; 1 = every token; K = every "
                "K tokens"})
    max_request_bytes: int = field(default=1_000_000, metadata={"ge": 1,
        "help": "largest request body (bytes), with or without Content-Length; more is 413"})
    header_timeout: float = field(default=10.0, metadata={"gt": 0,
        "help": "seconds a connection may take to send a request's headers (from connecting, or from a kept-alive "
                "request's first byte); then it is answered 408 and closed"})
    body_timeout: float = field(default=30.0, metadata={"gt": 0,
        "help": "seconds a request may take to send its body after the headers; then 408 and closed"})
    shutdown_grace: float = field(default=5.0, metadata={"ge": 0,
        "help": "seconds open answers may run to their end after SIGTERM or Ctrl-C; streams still running then end "
                "with an error event and [DONE], other answers with 503"})
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

    def allowed_hosts(self) -> list[str]:
        """Host names answered besides localhost and IP literals: ``--allowed-host`` plus the bound name."""
        names = [h.strip().lower() for h in self.allowed_host if h.strip()]
        if self.host not in ("", "0.0.0.0", "::") and not is_ip(self.host):
            names.append(self.host.lower())
        return names

    def check(self) -> None:
        if not self.run:
            raise UsageError("--run is required (a run folder with tokenizer/ and a checkpoint)")
        for name in ("max_tokens_limit", "max_batch", "max_queue", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:  # also refuses nan
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds, "
                                 f"got {getattr(self, name)}")
        if not self.shutdown_grace >= 0:
            raise UsageError(f"--shutdown-grace must be 0 or more seconds, got {self.shutdown_grace}")
        self.engine_stream_interval()
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be in 0..65535, got {self.port}")
        if self.protect_all and not self.resolved_api_key():
            raise UsageError(f"--protect-all needs a key: set --api-key or {API_KEY_ENV}")


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
