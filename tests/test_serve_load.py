"""Bounded load test of `scalelab serve` in its own process: concurrent clients for a few seconds, on loopback.

Streams, whole answers, malformed requests and clients that hang up mid-stream, with a queue small enough to answer
429 sometimes: no 5xx ever, and the server's RSS does not grow from one round to the next.

Run: .venv/bin/pytest tests/test_serve_load.py -q     (marked slow; ~20 s)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from serve_fixtures import free_socket, tiny_chat_run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLIENTS = 12
ROUND_SECONDS = 3.0
MAX_REQUESTS_PER_CLIENT = 400  # bounds each round by count as well as by time


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_client(url: str, i: int, stop_at: float, statuses: Counter, lock: threading.Lock) -> None:
    chat = {"messages": [{"role": "user", "content": f"client {i} says hello"}], "max_tokens": 16}
    kinds = ["chat", "stream", "completion", "bad", "hangup"]
    with httpx.Client(base_url=url, timeout=30) as http:
        for n in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() > stop_at:
                return
            kind = kinds[(i + n) % len(kinds)]
            if kind == "chat":
                status = http.post("/v1/chat/completions", json=chat).status_code
            elif kind == "completion":
                status = http.post("/v1/completions", json={"prompt": "Once upon", "max_tokens": 12}).status_code
            elif kind == "bad":
                status = http.post("/v1/chat/completions", content=b'{"messages": [', headers={
                    "Content-Type": "application/json"}).status_code
            else:
                with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
                    status = r.status_code
                    for k, _ in enumerate(r.iter_lines()):
                        if kind == "hangup" and k >= 2:
                            break  # leave mid-stream: the server must cancel and free the row
            with lock:
                statuses[status] += 1


def load_round(url: str, seconds: float) -> Counter:
    statuses: Counter = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=one_client, args=(url, i, stop_at, statuses, lock)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    return statuses


def test_load_no_5xx_no_memory_growth(tiny_chat_run):  # noqa: F811
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if k != "SCALELAB_API_KEY"}  # no auth in this test
    proc = subprocess.Popen([sys.executable, "-m", "scalelab", "serve", "--run", str(tiny_chat_run), "--port",
                             str(port), "--max-batch", "4", "--max-queue", "4", "--max-tokens-limit", "32",
                             "--device", "cpu", "--dtype", "fp32", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        warm = load_round(url, ROUND_SECONDS)  # first round: allocator pools, caches and lazy imports settle
        rss = [rss_mb(proc.pid)]
        totals = Counter(warm)
        for _ in range(2):
            totals += load_round(url, ROUND_SECONDS)
            time.sleep(0.5)
            rss.append(rss_mb(proc.pid))
        print(f"statuses {dict(totals)}; RSS after each round (MB): {[round(r, 1) for r in rss]}")
        assert not [s for s in totals if s >= 500], totals
        assert set(totals) <= {200, 400, 429}, totals
        assert totals[200] > 50 and totals[400] > 5
        assert rss[-1] - rss[0] < 25, f"server memory grew: {rss}"
        # every row was freed: nothing left decoding or waiting once the clients are gone
        engine = httpx.get(url + "/health").json()["engine"]
        assert engine["active"] == 0 and engine["waiting"] == 0, engine
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
