"""`scalelab serve` as a user runs it, in its own process: `--port 0` prints the port it got, SIGTERM ends every open
stream cleanly (a finish reason or an error event, then [DONE]), and a missing web package is named in one line.

Run: .venv/bin/pytest tests/test_serve_process.py -q
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_fixtures import make_chat_run

pytestmark = pytest.mark.timeout(120)

STREAMS = 3


def read_stream(url: str, started: threading.Event, out: list) -> None:
    body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 4000, "stream": True,
            "ignore_eos": True}
    events = []
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:  # the role chunk and the first text: the answer is under way
                        started.set()
    except httpx.HTTPError as e:
        events.append(f"transport error: {e!r}")
    out.append(events)
    started.set()


def test_port_zero_is_announced_and_sigterm_ends_streams_cleanly(tmp_path):
    # a long context, so that each answer takes far longer than the shutdown grace
    run = make_chat_run(tmp_path / "long", max_seq_len=4096)
    env = {k: v for k, v in os.environ.items() if k != "SCALELAB_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "scalelab", "serve", "--run", str(run), "--port", "0",
                             "--max-tokens-limit", "4000", "--max-batch", "4", "--shutdown-grace", "0.3",
                             "--device", "cpu", "--dtype", "fp32", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"on (http://127\.0\.0\.1:(\d+))", line)
            if found:
                break
        assert found, "".join(lines)
        url, port = found.group(1), int(found.group(2))
        assert port != 0 and httpx.get(url + "/health").json()["status"] == "ok"
        results: list[list[str]] = []
        starts = [threading.Event() for _ in range(STREAMS)]
        threads = [threading.Thread(target=read_stream, args=(url, s, results)) for s in starts]
        for t in threads:
            t.start()
        for s in starts:
            assert s.wait(30), "a stream did not start"
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        took = time.monotonic()
        proc.wait(timeout=30)
        took = time.monotonic() - took
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(results) == STREAMS
    cut = 0
    for events in results:
        assert events[-1] == "[DONE]", events[-3:]
        last = json.loads(events[-2])
        if "error" in last:
            assert last["error"]["code"] == "shutting_down" and "shutting down" in last["error"]["message"]
            cut += 1
        else:
            assert last["choices"][0]["finish_reason"] in ("stop", "length"), last
    assert cut >= 1, "no stream was still open at the end of the grace period: the test did not test the drain"
    assert took < 10
    print(f"streams cut short: {cut} of {STREAMS}; exit status {proc.returncode}; exit took {took:.1f} s")


def test_missing_web_package_is_named_in_one_line(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from scalelab.__main__ import main\n"
            f"sys.exit(main(['serve', '--run', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "'fastapi'" in err, err
