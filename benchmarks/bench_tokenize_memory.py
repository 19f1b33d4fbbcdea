"""Peak memory of shard encoding: the stdlib corpus vs the same corpus 10x (``stdlib:10``), with one tokenizer.

Target: a corpus 10x the default must not raise peak memory by more than 10%. Each measurement runs in a fresh
subprocess (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at its end), so imports count equally in both.

    .venv/bin/python benchmarks/bench_tokenize_memory.py [--tokenizer runs/demo] [--factor 10]

Prints both peaks and their ratio, writes benchmarks/results/bench_tokenize_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_tokenize_memory.json"

CHILD = r"""
import json, resource, sys, time
from scalelab.lm.data.shards import TokenizerConfig, prepare
run, tokenizer, corpus = sys.argv[1:4]
t = time.perf_counter()
summary = prepare(TokenizerConfig(run=run, corpus=[corpus], tokenizer=tokenizer or None, vocab_size=4096,
                                  max_train_bytes=int(sys.argv[4])))
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_mib": peak_kib / 1024, "seconds": time.perf_counter() - t,
                  "train_tokens": summary["tokens"]["train"], "train_bytes": summary["bytes"]["train"]}))
"""


def measure(run: Path, tokenizer: str, corpus: str, max_train_bytes: int = 0) -> dict:
    env = dict(os.environ, SCALELAB_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHILD, str(run), tokenizer, corpus, str(max_train_bytes)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({corpus}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="an existing tokenizer (run folder or tokenizer.json); default: train one")
    ap.add_argument("--factor", type=int, default=10, help="the big corpus is stdlib with this weight")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_tok_mem_") as tmp:
        tmp_path = Path(tmp)
        tokenizer = args.tokenizer
        if tokenizer is None:  # a 4096-token tokenizer trained on a 5 MB sample of the stdlib (not measured)
            t = time.perf_counter()
            measure(tmp_path / "tok", "", "stdlib", 5_000_000)
            tokenizer = str(tmp_path / "tok")
            print(f"trained a tokenizer in {time.perf_counter() - t:.1f} s")
        small = measure(tmp_path / "x1", tokenizer, "stdlib")
        print(f"stdlib x1:  peak RSS {small['peak_rss_mib']:.1f} MiB, {small['train_tokens']:,} train tokens, "
              f"{small['seconds']:.1f} s")
        big = measure(tmp_path / f"x{args.factor}", tokenizer, f"stdlib:{args.factor}")
        print(f"stdlib x{args.factor}: peak RSS {big['peak_rss_mib']:.1f} MiB, {big['train_tokens']:,} train tokens, "
              f"{big['seconds']:.1f} s")
    ratio = big["peak_rss_mib"] / small["peak_rss_mib"]
    verdict = "PASS" if ratio <= 1.10 else "FAIL"
    print(f"peak memory ratio x{args.factor} / x1: {ratio:.3f} (target <= 1.10: {verdict})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "bench_tokenize_memory", "what": "peak RSS of `scalelab tokenizer --tokenizer T` (shard encoding)",
        "anchor": {"corpus": "stdlib", **small}, "big": {"corpus": f"stdlib:{args.factor}", **big},
        "token_ratio": big["train_tokens"] / small["train_tokens"], "peak_rss_ratio": ratio, "target": 1.10,
        "pass": ratio <= 1.10, "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
