"""Exact resume: a run killed (SIGKILL) after a checkpoint and resumed has the same loss curve as one that never
stopped (CPU, fp32); SIGTERM saves and exits; incompatible or corrupt checkpoints are one-line UsageErrors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import losses, make_byte_run, tiny

from scalelab.common import UsageError, read_jsonl
from scalelab.lm.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def cli_args(run: Path, **kw) -> list[str]:
    args = dict(run=run, depth=1, seq_len=64, batch_size=8, max_steps=24, warmup_steps=4, eval_every=8,
                eval_tokens=4096, log_every=1, dtype="fp32", device="cpu", preflight_steps=0, sample_max_tokens=0,
                save_every=2)
    args.update(kw)
    return [a for k, v in args.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def start(run: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "SCALELAB_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "scalelab", "pretrain", *cli_args(run, **kw)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, run: Path, at_least: int, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        latest = run / "base" / "latest"
        if latest.is_file():
            step = int(latest.read_text().strip().split("_")[1])
            if step >= at_least:
                return step
        if proc.poll() is not None:
            pytest.fail(f"run ended before a checkpoint: {proc.stdout.read()}")
        time.sleep(0.05)
    pytest.fail("no checkpoint in time")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    ref, cut = make_byte_run(tmp_path / "ref"), make_byte_run(tmp_path / "cut")
    proc = start(cut)
    step = wait_for_checkpoint(proc, cut, at_least=6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step < 24, "the run finished before it was killed; nothing was tested"
    # the uninterrupted reference, in-process with the same settings
    args = cli_args(ref)
    from scalelab.config import parse_config

    train(parse_config(TrainConfig, args))
    # resume with the bare command: every setting comes back from the checkpoint
    from scalelab.cli.pretrain import main

    assert main(["--run", str(cut)]) == 0
    lr, lc = losses(ref), losses(cut)
    assert list(lc) == sorted(lc) == list(range(1, 25))  # no duplicate or missing lines after the resume
    assert lc == lr  # bit-for-bit equal
    ev_r = [r["val_loss"] for r in read_jsonl(ref / "metrics.jsonl") if "val_loss" in r]
    ev_c = [r["val_loss"] for r in read_jsonl(cut / "metrics.jsonl") if "val_loss" in r]
    assert ev_c == ev_r
    state = json.loads((cut / "base" / "step_0000024" / "trainer_state.json").read_text())
    assert state["step"] == 24 and state["tokens_seen"] == 24 * 8 * 64


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path: Path) -> None:
    run = make_byte_run(tmp_path / "t")
    proc = start(run, max_steps=100000, save_every=0, eval_every=0, warmup_steps=1)
    deadline = time.time() + 120
    while not any(r.get("step", 0) >= 3 for r in read_jsonl(run / "metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "terminated at step" in out
    last = max(losses(run))
    assert (run / "base" / "latest").read_text().strip() == f"step_{last:07d}"


def test_incompatible_or_corrupt_checkpoint(tmp_path: Path) -> None:
    run = make_byte_run(tmp_path / "r", max_bytes=60_000)
    train(tiny(run, max_steps=2))
    step_dir = run / "base" / "step_0000002"
    before = {p.name: p.stat().st_mtime_ns for p in step_dir.iterdir()}
    with pytest.raises(UsageError, match="model_config.n_embd"):
        train(tiny(run, max_steps=4, n_embd=128))
    assert {p.name: p.stat().st_mtime_ns for p in step_dir.iterdir()} == before
    assert not (run / "base" / "step_0000004").exists()
    meta = json.loads((run / "data" / "meta.json").read_text())
    (run / "data" / "meta.json").write_text(json.dumps({**meta, "vocab_size": 300}))
    with pytest.raises(UsageError, match="vocab_size"):
        train(tiny(run, max_steps=4))
    (run / "data" / "meta.json").write_text(json.dumps(meta))
    weights = step_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UsageError, match="model.safetensors"):
        train(tiny(run, max_steps=4))
    other = make_byte_run(tmp_path / "r2", max_bytes=20_000)
    with pytest.raises(UsageError, match="--resume"):
        train(tiny(other, resume=True))
