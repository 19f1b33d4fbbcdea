"""Aggregate tokens/s of `scalelab serve` at 1, 4 and 8 concurrent streams, against the live server on loopback.

    .venv/bin/python benchmarks/bench_serve.py [--max-tokens 64] [--seconds 6] [--rounds 3] [--dtype auto]
                                               [--max-batch 8] [--temperature 1.0] [--stream-interval auto|K]
                                               [--device cpu] [--levels 1,4,8] [--vocab 4096] [--out PATH]

On a GPU: ``--device cuda --model gpt2-small --vocab 32768 --max-batch 64 --levels 1,8,64`` (the server decodes
there; results in bench_serve[_<model>]_<device>.json).

Builds a throw-away run (byte-level BPE tokenizer trained on a few stdlib files; model vocab 4096, width 256,
4 layers, 4 heads, context 512, random init: speed does not depend on training), starts `python -m scalelab serve`
on a free 127.0.0.1 port, then for each concurrency c in 1, 4, 8 runs c clients that each send streamed chat
completions of exactly ``--max-tokens`` tokens (``ignore_eos``: stop disabled) back to back, ``--seconds`` per level
in all, split into ``--rounds`` interleaved rounds (1 4 8, then 8 4 1, ...): a shared VM's speed drifts by 10-20%
over a minute, and levels run one after the other would carry that drift into their ratio. Aggregate tokens/s =
completion tokens (from each stream's ``usage``) / wall time, summed over a level's rounds. The anchor is the
1-stream figure of the same run; the target is 8 streams >= 4x one. Also reports the median time to first token and
each round's own 8-vs-1 ratio. Writes benchmarks/results/bench_serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_serve.json"


def build_run(root: Path, preset: str = "micro", vocab: int = 4096) -> Path:
    """A run folder: tokenizer trained on stdlib text (a few seconds) + a random vocab-4096 chat checkpoint."""
    import torch

    from scalelab.lm.checkpoint import save_checkpoint
    from scalelab.lm.data.tokenizer import save_tokenizer, train_tokenizer
    from scalelab.lm.model import GPT, ModelConfig
    from scalelab.runs import RunDir

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))[:60]]
    run = RunDir(root)
    tok = train_tokenizer(texts, vocab_size=min(vocab, 4096), show_progress=False)
    save_tokenizer(tok, run.tokenizer_dir)
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, vocab_size=vocab, max_seq_len=512)  # micro: width 256, 4 layers, 4 heads
    save_checkpoint(run, "chat", 1, GPT(cfg), {"model_config": cfg.to_dict()})
    return root


_CONTENT = re.compile(rb'"content": ?"[^"]')  # the first chunk with text (the opening chunk's content is "")


class Client:
    """One load-generating client: a kept-alive HTTP/1.1 connection, as the official ``openai`` client keeps one.

    The load generator shares the 2 cores with the server, so it is as light as a client can be: a plain socket,
    the raw bytes kept as they come, a search for the first text chunk only until it shows, the end of the stream
    found by the chunked encoding's last chunk, and only the final ``usage`` event parsed. (httpx with a json.loads
    per event cost the clients ~0.6 s of CPU per 4,096 streamed tokens, time the server then lacked; a connection
    per request cost the server an accept and a close per request.)
    """

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stream(self, body: dict) -> tuple[int, float]:
        """(completion tokens, seconds to the first content chunk) of one streamed chat completion."""
        payload = json.dumps(body).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=120)
        t0 = time.perf_counter()
        first, buf = None, bytearray()
        self.sock.sendall(head + payload)
        while not buf.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's last (empty) chunk
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise SystemExit(f"the server closed the connection mid-answer: {bytes(buf[-300:])!r}")
            if first is None and _CONTENT.search(bytes(buf[-16:]) + chunk):
                first = time.perf_counter() - t0
            buf += chunk
        status, _, raw = bytes(buf).partition(b"\r\n\r\n")
        if b" 200 " not in status.split(b"\r\n", 1)[0] + b" " or b"chunked" not in status.lower():
            raise SystemExit(f"the server answered {status[:200]!r}: {raw[:300]!r}")
        events = [line[6:] for line in _dechunk(raw).decode("utf-8").split("\n") if line.startswith("data: {")]
        usage = [e for e in map(json.loads, events[-3:]) if e.get("usage")]
        if not usage:
            raise SystemExit(f"no usage chunk in the stream: {events[-3:]}")
        return usage[-1]["usage"]["completion_tokens"], first if first is not None else float("nan")


def _dechunk(raw: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked transfer: size line (hex), data, CRLF, ..., a 0-size chunk."""
    out, i = bytearray(), 0
    while True:
        line_end = raw.index(b"\r\n", i)
        size = int(raw[i:line_end].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += raw[line_end + 2:line_end + 2 + size]
        i = line_end + 2 + size + 2


def level(url: str, clients: int, seconds: float, body: dict) -> dict:
    """``clients`` threads each send streamed requests back to back until ``seconds`` have passed (the requests
    under way then finish); aggregate tokens/s = completion tokens / wall time until the last one ends."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    t = time.perf_counter()
    deadline = t + seconds

    def client(i: int) -> None:
        j, conn = 0, Client(url)
        try:
            while j == 0 or time.perf_counter() < deadline:
                out = conn.stream({**body, "seed": 1000 * i + j})
                j += 1
                with lock:
                    results.append(out)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    tokens = sum(r[0] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "seconds": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1),
            "median_first_token_s": round(statistics.median(r[1] for r in results), 4)}


def merge(parts: list[dict]) -> dict:
    """One level's rounds as one: tokens and wall time summed; the engine's rows per step (occupancy) and wall ms
    per decode step from its own counters."""
    tokens, wall = sum(p["tokens"] for p in parts), sum(p["seconds"] for p in parts)
    steps = max(1, sum(p["engine_steps"] for p in parts))
    return {"clients": parts[0]["clients"], "requests": sum(p["requests"] for p in parts), "tokens": tokens,
            "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "median_first_token_s": round(statistics.median(p["median_first_token_s"] for p in parts), 4),
            "rounds_tokens_per_s": [p["tokens_per_s"] for p in parts],
            "engine_rows_per_step": round(sum(p["engine_tokens"] for p in parts) / steps, 2),
            "engine_ms_per_step": round(1000 * wall / steps, 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per request (stop disabled)")
    ap.add_argument("--seconds", type=float, default=6.0, help="how long each concurrency level runs, in all")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds the levels' time is split into")
    ap.add_argument("--dtype", default="auto", help="server dtype: auto, fp32, bf16")
    ap.add_argument("--max-batch", type=int, default=8, help="server --max-batch")
    ap.add_argument("--model", default="micro", help="model preset (micro = the demo's size; tiny, small, ...)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    ap.add_argument("--stream-interval", default="auto", help="server --stream-interval: auto (its default), or "
                                                             "tokens per event (1 = every token)")
    ap.add_argument("--device", default="cpu", help="server --device: cpu, cuda, cuda:N, auto")
    ap.add_argument("--levels", default="1,4,8", help="concurrent-client levels, comma-separated, ascending")
    ap.add_argument("--vocab", type=int, default=4096, help="model vocabulary size (the tokenizer keeps 4096)")
    ap.add_argument("--out", default="", help="results file (default: benchmarks/results/bench_serve[...].json)")
    args = ap.parse_args(argv)
    levels = tuple(int(v) for v in args.levels.split(","))

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        run = build_run(Path(tmp) / "bench", args.model, args.vocab)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "SCALELAB_API_KEY"}
        proc = subprocess.Popen([sys.executable, "-m", "scalelab", "serve", "--run", str(run), "--port", str(port),
                                 "--max-batch", str(args.max_batch), "--max-queue", "64", "--dtype", args.dtype,
                                 "--max-tokens-limit", str(args.max_tokens), "--log-level", "warning",
                                 "--stream-interval", str(args.stream_interval), "--device", args.device],
                                env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise SystemExit("the server exited before it was ready")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not come up within 120 s")
                time.sleep(0.2)
            prompt = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]
            body = {"messages": prompt, "max_tokens": args.max_tokens, "temperature": args.temperature, "stream": True,
                    "stream_options": {"include_usage": True}, "ignore_eos": True}
            level(url, 2, 0.0, body)  # warm-up: first-call allocations and lazy imports
            if args.device != "cpu":  # every batch bucket's CUDA graph captured before the timed rounds
                for c in levels:
                    level(url, c, 0.0, body)
            parts: dict[int, list[dict]] = {c: [] for c in levels}
            for k in range(max(1, args.rounds)):
                for c in (levels if k % 2 == 0 else levels[::-1]):
                    before = httpx.get(url + "/health").json()["engine"]
                    part = level(url, c, args.seconds / max(1, args.rounds), body)
                    after = httpx.get(url + "/health").json()["engine"]
                    part["engine_steps"] = after["steps"] - before["steps"]
                    part["engine_tokens"] = after["tokens"] - before["tokens"]
                    parts[c].append(part)
            rows = [merge(parts[c]) for c in levels]
            per_round = [round(b["tokens_per_s"] / a["tokens_per_s"], 2)
                         for a, b in zip(parts[levels[0]], parts[levels[-1]])]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    from scalelab.lm.model import ModelConfig

    cfg_dict = ModelConfig.preset(args.model, vocab_size=args.vocab, max_seq_len=512).to_dict()
    anchor = rows[0]["tokens_per_s"]
    for r in rows:
        r["ratio_vs_1"] = round(r["tokens_per_s"] / anchor, 2)
        print(f"{r['clients']} stream(s): {r['tokens_per_s']:8.1f} tok/s aggregate  ({r['ratio_vs_1']:.2f}x one "
              f"stream; median first token {r['median_first_token_s'] * 1000:.0f} ms; {r['tokens']} tokens in "
              f"{r['seconds']} s; engine: {r['engine_rows_per_step']} rows/step, "
              f"{r['engine_ms_per_step']} ms/step)")
    ratio8 = rows[-1]["ratio_vs_1"]
    met = "met" if ratio8 >= 4 else "NOT met"
    print(f"{levels[-1]} streams vs {levels[0]}: {ratio8:.2f}x (target >= 4x: {met}); "
          f"each round's own: {', '.join(f'{r:.2f}x' for r in per_round)}")
    out = {"benchmark": "bench_serve", "anchor": "1 concurrent stream, same run", "levels": rows,
           "ratio_8_vs_1": ratio8, "ratio_8_vs_1_per_round": per_round, "levels_compared": [levels[0], levels[-1]],
           "target_ratio": 4.0, "target_met": ratio8 >= 4,
           "settings": {**vars(args), "model_config": cfg_dict, "init": "random"},
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
           "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    suffix = ("" if args.model == "micro" else f"_{args.model}") + (
        "" if args.stream_interval == "auto" else f"_interval{args.stream_interval}") + (
        "" if args.device == "cpu" else f"_{args.device.split(':')[0]}")
    path = Path(args.out) if args.out else RESULTS.with_name(f"bench_serve{suffix}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
