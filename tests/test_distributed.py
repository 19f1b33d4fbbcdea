"""torchrun on CPU (gloo): DDP and FSDP2 with 2 processes match 1 process with gradient accumulation on the same
global batch; a 2-node loopback run (c10d rendezvous) completes and resumes on one node; FSDP checkpoints load with
any number of processes; a model that cannot be sharded is a one-line error (exit 2)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import losses, make_byte_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

COMMON = ["--depth", "1", "--n-layer", "2", "--seq-len", "64", "--batch-size", "4", "--total-batch-tokens", "512",
          "--max-steps", "6", "--warmup-steps", "2", "--eval-every", "0", "--eval-tokens", "2048", "--log-every", "1",
          "--dtype", "fp32", "--device", "cpu", "--preflight-steps", "0", "--sample-max-tokens", "0",
          "--num-threads", "1"]


def env() -> dict[str, str]:
    return {**os.environ, "SCALELAB_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launch: list[str], args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "scalelab", "pretrain", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def single(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalelab", "pretrain", *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    run = make_byte_run(tmp_path_factory.mktemp("ref"), max_bytes=100_000)
    out = single(["--run", str(run), *COMMON])  # 1 process x 2 accumulation steps x 4 sequences
    assert out.returncode == 0, out.stdout + out.stderr
    return losses(run)


@pytest.mark.parametrize("parallel,tol", [("ddp", 1e-5), ("fsdp", 1e-4)])
def test_two_processes_match_one_with_accumulation(tmp_path: Path, reference, parallel: str, tol: float) -> None:
    run = make_byte_run(tmp_path / "r", max_bytes=100_000)
    out = torchrun(["--standalone", "--nproc_per_node", "2"], ["--run-dir", str(run), *COMMON, "--parallel", parallel])
    assert out.returncode == 0, out.stdout + out.stderr
    got = losses(run)
    assert got.keys() == reference.keys()
    for step in got:
        assert got[step] == pytest.approx(reference[step], abs=tol), (parallel, step)
    if parallel == "fsdp":  # the gathered full checkpoint continues on one process
        out = single(["--run", str(run), "--max-steps", "8"])
        assert out.returncode == 0, out.stdout + out.stderr
        assert max(losses(run)) == 8


def test_two_nodes_on_loopback_then_resume_on_one(tmp_path: Path) -> None:
    run = make_byte_run(tmp_path / "mn", max_bytes=100_000)
    port = free_port()
    procs = []
    for node in (0, 1):
        launch = ["--nnodes", "2", "--node-rank", str(node), "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "scalelab-test"]
        cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "scalelab", "pretrain", "--run-dir",
               str(run), *COMMON, "--max-steps", "4", "--save-every", "2"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert (run / "base" / "latest").read_text().strip() == "step_0000004"
    out = single(["--run", str(run), "--max-steps", "6"])  # same global batch, now 1 process x 2 accumulation
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in out.stdout and sorted(losses(run)) == list(range(1, 7))


def test_unshardable_model_is_a_clean_error(tmp_path: Path) -> None:
    run = make_byte_run(tmp_path / "u", max_bytes=50_000)
    args = ["--run-dir", str(run), *COMMON, "--parallel", "fsdp", "--n-layer", "1", "--n-head", "1", "--n-kv-head", "1"]
    out = torchrun(["--standalone", "--nproc_per_node", "2"], args + ["--n-embd", "1"])
    assert out.returncode != 0
    assert "scalelab pretrain: error: --parallel fsdp: parameter" in out.stderr, out.stderr
    # torchrun reports the failed child, but no traceback from our code (the package folder, not the checkout's name,
    # which may itself be "scalelab")
    assert f'File "{ROOT / "scalelab"}{os.sep}' not in out.stderr, out.stderr


def test_a_torchrun_worker_skips_interpreter_finalization(monkeypatch, capsys) -> None:
    """Under torchrun the CLI ends with os._exit (gloo can abort a process that finalizes; see __main__.main);
    outside torchrun it returns normally."""
    import scalelab.__main__ as cli

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    import torch.distributed  # noqa: F401  (what a training run has imported)

    assert cli.main(["--help"]) == 0 and exits == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    cli.main(["no-such-command"])
    assert exits == [2]
    capsys.readouterr()


def test_fsdp_samples_at_each_evaluation(tmp_path: Path) -> None:
    """Under FSDP the weights are sharded DTensors; the evaluation's samples come from the gathered weights."""
    run = tmp_path / "s"
    tok = subprocess.run([sys.executable, "-m", "scalelab", "tokenizer", "--run", str(run), "--corpus",
                          str(ROOT / "scalelab" / "lm" / "data"), "--vocab-size", "300"], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=240)
    assert tok.returncode == 0, tok.stderr
    out = torchrun(["--standalone", "--nproc_per_node", "2"],  # a repeated flag: the last one counts
                   ["--run-dir", str(run), *COMMON, "--sample-max-tokens", "8", "--parallel", "fsdp",
                    "--max-steps", "2"])
    assert out.returncode == 0, out.stdout + out.stderr
    samples = [line for line in out.stdout.splitlines() if line.strip().startswith("sample ")]
    assert samples and not [s for s in samples if "Error" in s], samples
