"""Test helpers for the server: a tiny chat run folder (tokenizer + random GPT) and a live uvicorn on loopback.

    from tests.serve_fixtures import tiny_chat_run, live_server   # noqa: F401  (pytest fixtures by import)

``tiny_chat_run`` is session-scoped (built once, ~1 s); ``live_server(app)`` is a context manager yielding the base URL
of a uvicorn server running ``app`` in a background thread on a free 127.0.0.1 port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TINY_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "Hello! How are you today? I am fine, thank you. " * 4,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 3,
    "Scaling laws relate loss to parameters, data and compute. " * 4,
    "1 + 1 = 2, 2 + 2 = 4, 3 + 3 = 6, 10 * 10 = 100. " * 4,
]


def make_chat_run(root: Path, vocab_size: int = 320, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                  max_seq_len: int = 128, seed: int = 0) -> Path:
    """A run folder with a trained tiny tokenizer and a randomly initialised chat checkpoint (step 1)."""
    import torch

    from scalelab.lm.checkpoint import save_checkpoint
    from scalelab.lm.data.tokenizer import save_tokenizer, train_tokenizer
    from scalelab.lm.model import GPT, ModelConfig
    from scalelab.runs import RunDir

    run = RunDir(root)
    tok = train_tokenizer(TINY_TEXTS * 4, vocab_size=vocab_size, show_progress=False)
    save_tokenizer(tok, run.tokenizer_dir)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                      n_kv_head=n_head, max_seq_len=max_seq_len)
    save_checkpoint(run, "chat", 1, GPT(cfg), {"model_config": cfg.to_dict()})
    return root


@pytest.fixture(scope="session")
def tiny_chat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chat_run(tmp_path_factory.mktemp("serve") / "tiny")


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def live_server(app, timeout: float = 20.0, **settings) -> Iterator[str]:
    """Run ``app`` as `scalelab serve` runs it (``ServeServer``: read timeouts, drain on shutdown) in a thread on a
    free loopback port; ``settings`` are ServeConfig fields (``header_timeout=0.5``...). Yields "http://127.0.0.1:PORT"."""
    from scalelab.serve.config import ServeConfig
    from scalelab.serve.server import ServeServer

    sock = free_socket()
    port = sock.getsockname()[1]
    server = ServeServer(app, ServeConfig(run="-", port=port, **{"shutdown_grace": 2.0, **settings}),
                         log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
