"""Every code block of the README runs here, so the README cannot drift from the code.

Shell blocks run command by command, in README order, in a scratch folder (with ``configs/`` linked in), through the
real ``scalelab`` entry point. Where a command as written would take minutes, ``SHELL`` maps it to the same command
with tiny sizes or budgets (each substitution below says what it changes). Commands that cannot run here are in
``CANNOT_RUN`` with the reason; a README command in neither table fails ``test_every_readme_block_is_accounted_for``.
Long-running servers are started, asked ``/health`` and stopped; the Python block (the ``openai`` client) runs against
``scalelab serve`` of the run the shell commands built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from data_fixtures import SHAKESPEARE, set_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY_LM = "--seq-len 64 --batch-size 4 --preflight-steps 0 --eval-tokens 512 --sample-max-tokens 4 --dtype fp32"

# README command -> the command run (same command, tiny sizes). "{port}" is a free port.
SHELL: dict[str, str] = {
    # tabular: fewer rows, sizes and epochs
    "scalelab curves --dataset magic_gamma_telescope --max-train 8000 --seeds 0 1 --out runs/curves_magic":
        "scalelab curves --dataset magic_gamma_telescope --max-train 300 --max-test 300 --n-sizes 2 --mlp-epochs 3 "
        "--seeds 0 1 --out runs/curves_magic",
    "scalelab curves --data my.csv --target label --models mlp svm logreg --sizes 25 100 400 1600 --out runs/mine":
        "scalelab curves --data my.csv --target label --models mlp svm logreg --sizes 25 100 --mlp-epochs 3 "
        "--out runs/mine",
    "scalelab curves --dataset teacher --out runs/teacher":
        "scalelab curves --dataset teacher --n-samples 600 --n-sizes 2 --max-test 200 --mlp-epochs 3 "
        "--out runs/teacher",
    "scalelab compute-curves --config configs/teacher_compute.yaml --out runs/compute":
        "scalelab compute-curves --config configs/teacher_compute.yaml --n-samples 600 --n-train 200 "
        "--widths 4 8 --epochs 1 2 --out runs/compute",
    "scalelab tabular-bench --out runs/tabular_bench --seeds 0 1 --time-budget 30":
        "scalelab tabular-bench --datasets teacher@400 --models logreg hgb --sizes 50 100 --max-test 200 "
        "--seeds 0 1 --n-boot 20 --time-budget 30 --out runs/tabular_bench",
    "scalelab tabular-bench --datasets uci_pendigits teacher@20000 my.csv:label --models mlp mlp_ple hgb lightgbm svm "
    "logreg":
        "scalelab tabular-bench --datasets my.csv:label --models mlp hgb svm logreg --sizes 25 50 --max-test 100 "
        "--seeds 0 --n-boot 10 --out runs/bench_mine",
    # language model: the stdlib corpus (12 MB to encode) becomes the Shakespeare fixture, vocab 512, a nano model
    # for a few steps; the stdlib source itself is tested in tests/test_corpus.py and tests/test_data.py
    "scalelab tokenizer --run runs/lm --corpus stdlib --vocab-size 4096":
        "scalelab tokenizer --run runs/lm --corpus shakespeare.txt --vocab-size 512",
    "scalelab tokenizer --run runs/books --corpus gutenberg_books:1 --corpus notes.jsonl#text:2":
        "scalelab tokenizer --run runs/books --corpus gutenberg_books:1 --corpus notes.jsonl#text:2 "
        "--vocab-size 512 --max-train-bytes 1000000",
    "scalelab pretrain --run runs/lm --model micro --time-budget 5":
        f"scalelab pretrain --run runs/lm --model nano --max-steps 4 --eval-every 2 {TINY_LM}",
    "torchrun --standalone --nproc_per_node 2 -m scalelab pretrain --run-dir runs/lm --parallel ddp --batch-size 8":
        f"torchrun --standalone --nproc_per_node 2 -m scalelab pretrain --run-dir runs/lm --parallel ddp "
        f"--model nano --max-steps 6 --eval-every 2 {TINY_LM.replace('--batch-size 4', '--batch-size 2')}",
    'scalelab sample --run runs/lm --stage base --prompt "def fib(n):" --temperature 0.8 --top-p 0.9 --seed 1':
        'scalelab sample --run runs/lm --stage base --prompt "def fib(n):" --temperature 0.8 --top-p 0.9 --seed 1',
    "scalelab sft --run runs/lm --time-budget 2 --data my_chats.jsonl:2":
        "scalelab sft --run runs/lm --max-steps 3 --data my_chats.jsonl:2 --conversations 200 --val-conversations 20 "
        "--tasks arithmetic:1 conversation:1 --batch-size 4 --preflight-steps 0 --sample-max-tokens 4 --dtype fp32",
    "scalelab eval --run runs/lm --stage chat":
        "scalelab eval --run runs/lm --stage chat --limit 2 --max-tokens 8",
    "scalelab report --run runs/lm": "scalelab report --run runs/lm",
    "scalelab chat --run runs/lm": "scalelab chat --run runs/lm --max-tokens 8",  # stdin: one line, then EOF
    'scalelab chat --run runs/lm --prompt "Who are you?"':
        'scalelab chat --run runs/lm --prompt "Who are you?" --max-tokens 8',
    # servers: started on a free port, asked /health, stopped
    "scalelab serve --run runs/lm --port 8000": "scalelab serve --run runs/lm --port {port}",
    "scalelab serve --run runs/lm --api-key secret": "scalelab serve --run runs/lm --api-key secret --port {port}",
    "scalelab serve --run runs/lm --stream-interval 1":
        "scalelab serve --run runs/lm --stream-interval 1 --port {port}",
    "scalelab export --run runs/lm --format hf --out export/lm_hf":
        "scalelab export --run runs/lm --format hf --out export/lm_hf",
    "scalelab export --run runs/lm --format gguf --out export/lm.gguf":
        "scalelab export --run runs/lm --format gguf --out export/lm.gguf",
    # the Llama folder is the HF export just written
    "scalelab import --format hf path/to/llama_folder --run runs/imported":
        "scalelab import --format hf export/lm_hf --run runs/imported",
    "scalelab data list": "scalelab data list",
}

# README command -> why it does not run here
CANNOT_RUN: dict[str, str] = {
    "make demo": "the whole demo takes about 8 minutes; its stages are the commands below, run here one by one",
    "make test": "this is the test suite itself",
    "scalelab scaling --config configs/cpu_scaling.yaml --out runs/scaling":
        "a 15-30 minute sweep; tests/test_scaling.py runs the same command on a tiny sweep config (and every shipped "
        "config is loaded by tests/test_config.py)",
    "scalelab scaling --config configs/synthetic_scaling.yaml --out runs/synth":
        "a 30-minute sweep on the synthetic source; tests/test_scaling.py checks the source's exact entropy",
    "scalelab scaling --config configs/cpu_scaling.yaml --out runs/scaling --fit-only":
        "needs the sweep above; tests/test_scaling.py refits a tiny sweep",
    "scalelab plan --scaling runs/scaling --minutes 60": "needs the sweep above; tests/test_scaling.py runs plan "
                                                        "--minutes and --flops on a tiny sweep",
    "scalelab plan --scaling runs/scaling --flops 1e15": "as above",
    "scalelab data pull magic_gamma_telescope": "downloads from GitHub: tests have no network (pull is tested "
                                               "against a 127.0.0.1 server in tests/test_data_sources.py)",
}

# README command -> named data sets it reads (skipped with the reason when absent, as in a bare clone)
NEEDS: dict[str, tuple[str, ...]] = {
    "scalelab curves --dataset magic_gamma_telescope --max-train 8000 --seeds 0 1 --out runs/curves_magic":
        ("magic_gamma_telescope",),
    "scalelab tokenizer --run runs/books --corpus gutenberg_books:1 --corpus notes.jsonl#text:2": ("gutenberg_books",),
}
SERVERS = {k for k in SHELL if k.startswith("scalelab serve")}


def readme_blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced block; untagged blocks are pictures (the tree), not code."""
    text = README.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def shell_commands() -> list[str]:
    """Every command of the bash blocks, comments stripped, in README order."""
    out = []
    for lang, body in readme_blocks():
        if lang == "bash":
            for line in body.splitlines():
                cmd = re.sub(r"\s+#\s.*$", "", line).strip()
                if cmd and not cmd.startswith("#"):
                    out.append(cmd)
    return out


def test_every_readme_block_is_accounted_for() -> None:
    langs = {lang for lang, _ in readme_blocks()}
    assert langs <= {"bash", "python", ""}, f"a README block in a language this test does not run: {langs}"
    cmds = shell_commands()
    unknown = [c for c in cmds if c not in SHELL and c not in CANNOT_RUN]
    assert not unknown, f"README commands with no entry in SHELL or CANNOT_RUN: {unknown}"
    stale = [c for c in [*SHELL, *CANNOT_RUN] if c not in cmds]
    assert not stale, f"entries for commands no longer in the README: {stale}"
    assert [lang for lang, _ in readme_blocks()].count("python") == 1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("server did not answer /health")


def start_server(cmd: str, cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(cmd.format(port=port), shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A scratch folder with configs/, the inputs the README assumes (my.csv, notes.jsonl, my_chats.jsonl) and PATH
    leading to this environment's ``scalelab`` and ``torchrun``."""
    import numpy as np

    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "configs").symlink_to(ROOT / "configs")
    shutil.copy(SHAKESPEARE, cwd / "shakespeare.txt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    rows = ["a,b,c,label"] + [f"{a:.4f},{b:.4f},{c:.4f},{'yes' if a + b > 0 else 'no'}" for a, b, c in x]
    (cwd / "my.csv").write_text("\n".join(rows) + "\n")
    (cwd / "notes.jsonl").write_text("".join(json.dumps({"text": f"Note {i}: buy milk and bread."}) + "\n"
                                             for i in range(30)))
    (cwd / "my_chats.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n" for i in range(20)))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               SCALELAB_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return cwd, env


@pytest.mark.slow  # the README's whole pipeline end to end (tabular, tokenizer .. import), each command a process
@pytest.mark.timeout(900)
def test_readme_shell_commands(workdir: tuple[Path, dict[str, str]]) -> None:
    cwd, env = workdir
    skipped = []
    for readme_cmd in shell_commands():
        if readme_cmd in CANNOT_RUN:
            continue
        missing = [s for s in NEEDS.get(readme_cmd, ()) if set_dir(s) is None]
        if missing:
            skipped.append(f"{readme_cmd}: needs {', '.join(missing)}")
            continue
        cmd = SHELL[readme_cmd]
        if readme_cmd in SERVERS:
            proc, url = start_server(cmd, cwd, env)
            stop(proc)
            continue
        stdin = "Hello!\n" if readme_cmd == "scalelab chat --run runs/lm" else ""
        proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    run = cwd / "runs" / "lm"
    assert (run / "report.md").is_file() and (run / "eval" / "chat.json").is_file()
    assert (cwd / "export" / "lm.gguf").is_file() and (cwd / "runs" / "imported").is_dir()
    if skipped:
        print("skipped (data set absent):", *skipped, sep="\n  ")


@pytest.mark.slow
def test_readme_python_block(workdir: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture) -> None:
    """The openai client block, as written, against `scalelab serve --api-key secret` of the run built above."""
    pytest.importorskip("openai")
    cwd, env = workdir
    if not (cwd / "runs" / "lm" / "chat").is_dir():
        pytest.skip("needs the run of test_readme_shell_commands")
    (code,) = [body for lang, body in readme_blocks() if lang == "python"]
    proc, url = start_server(SHELL["scalelab serve --run runs/lm --api-key secret"], cwd, env)
    try:
        exec(compile(code.replace("http://127.0.0.1:8000", url), "README.md", "exec"), {})
    finally:
        stop(proc)
    assert capsys.readouterr().out.strip()  # the streamed reply was read and printed
