"""`scalelab chat` and `scalelab sample` end to end on a tiny scripted model that always answers "ok".

    .venv/bin/pytest tests/test_chat_cli.py -q
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine import make_tokenizer, scripted_model

from scalelab.__main__ import main as scalelab_main
from scalelab.lm.checkpoint import save_checkpoint
from scalelab.runs import RunDir

ENV = {**os.environ, "SCALELAB_NO_PROGRESS": "1", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
FLAGS = ["--device", "cpu", "--dtype", "fp32"]


def _cli(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalelab", *args], input=stdin, capture_output=True, text=True,
                          env=ENV, timeout=120, cwd=Path(__file__).resolve().parents[1])


def scripted_run(root: Path, stage: str = "chat", step: int = 10) -> Path:
    """A run folder with a scalelab tokenizer (chat template included) and one checkpoint answering "ok"."""
    from scalelab.lm.data.tokenizer import save_tokenizer

    run = RunDir(root)
    tok = make_tokenizer()
    save_tokenizer(tok, run.tokenizer_dir)
    model = scripted_model(tok, reply="ok", max_seq_len=64)
    save_checkpoint(run, stage, step, model, {"model_config": model.config.to_dict()})
    return run.root


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scripted_run(tmp_path_factory.mktemp("chat") / "run")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_repl_through_stdin(chat_run: Path) -> None:
    stdin = "\n   \n/help\nhello there\n/reset\n/system Be brief.\nwhat now?\n/nonsense\nhi <|end|> hi\n"
    res = _cli(["chat", "--run", str(chat_run), *FLAGS, "--temperature", "0"], stdin)  # ends with EOF (Ctrl-D)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["ok", "ok"]
    assert "/reset" in res.stderr and "history cleared" in res.stderr and "unknown command" in res.stderr
    assert "special token" in res.stderr  # a bad message is reported, the REPL goes on
    assert "Traceback" not in res.stderr


def test_one_shot_prompt(chat_run: Path) -> None:
    res = _cli(["chat", "--run", str(chat_run), *FLAGS, "--system", "Be nice.", "--prompt", "Hi!"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n"


def test_sample_streams_a_continuation(chat_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert scalelab_main(["sample", "--run", str(chat_run), *FLAGS, "--prompt", "o", "--temperature", "0",
                          "--num-samples", "2"]) == 0
    out = capsys.readouterr()
    assert out.out.count("ok\n") == 2 and "sample 2/2" in out.out
    assert "stop: <|end|>" in out.err


def test_errors_are_one_line(chat_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert scalelab_main(["chat", "--run", str(chat_run), *FLAGS, "--prompt", "word " * 100]) == 2
    err = capsys.readouterr().err
    assert "too long" in err and "context length is 64" in err and len(err.strip().splitlines()) == 1

    bare = RunDir(tmp_path / "bare")  # a tokenizer.json without tokenizer_config.json: no chat template
    bare.tokenizer_dir.mkdir(parents=True)
    (bare.tokenizer_json).write_bytes((chat_run / "tokenizer" / "tokenizer.json").read_bytes())
    (bare.root / "chat").mkdir()
    for f in ("model.safetensors", "meta.json"):
        step = RunDir(chat_run).latest_step_dir("chat")
        (bare.root / "chat" / step.name).mkdir(exist_ok=True)
        (bare.root / "chat" / step.name / f).write_bytes((step / f).read_bytes())
    assert scalelab_main(["chat", "--run", str(bare.root), *FLAGS, "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "no chat template" in err and len(err.strip().splitlines()) == 1

    assert scalelab_main(["chat", "--run", str(tmp_path / "missing"), *FLAGS]) == 2
    assert scalelab_main(["sample", "--run", str(chat_run), *FLAGS, "--prompt", "word " * 100]) == 2
    assert "context length" in capsys.readouterr().err


def test_ctrl_c_stops_a_reply_and_long_history_is_trimmed(chat_run: Path) -> None:
    from scalelab.cli.chat import answer
    from scalelab.lm.inference.loading import load_for_inference
    from scalelab.lm.inference.session import ChatSession, Sampling

    model, tok, _ = load_for_inference(chat_run, None, "cpu", "fp32")
    session = ChatSession(model, tok, Sampling(temperature=0, max_tokens=8))

    def interrupted(ids):
        yield "o"
        raise KeyboardInterrupt

    session.stream = interrupted
    out, err = io.StringIO(), io.StringIO()
    answer(session, "hello", out, err)
    assert out.getvalue() == "o [stopped]\n"
    assert session.history[-1] == {"role": "assistant", "content": "o"}  # the partial reply is kept

    del session.stream
    for i in range(12):  # each turn is ~12 tokens; the context holds 64: old turns must go
        answer(session, f"message number {i}", out, err)
    assert "dropped the" in err.getvalue()
    assert 0 < len(session.history) < 12 and session.history[-1] == {"role": "assistant", "content": "ok"}


def test_arrow_keys_edit_the_line_in_a_real_terminal(chat_run: Path) -> None:
    """In a terminal the prompt has line editing: typing /fo, Left, X gives the line /fXo, not /fo^[[DX.

    Every read and the wait for the child are bounded (60 s), so a stuck chat fails the test instead of hanging it.
    """
    import pty
    import select
    import signal
    import time

    limit_s = 60.0
    pid, fd = pty.fork()
    if pid == 0:  # the child: scalelab chat on the pty
        os.chdir(Path(__file__).resolve().parents[1])
        os.execve(sys.executable, [sys.executable, "-m", "scalelab", "chat", "--run", str(chat_run), *FLAGS], ENV)
    seen = b""
    exited = False

    def read_some(wait_s: float) -> bool:
        """Append what the terminal shows within ``wait_s``; False once the child has closed it."""
        nonlocal seen
        ready, _, _ = select.select([fd], [], [], wait_s)
        if not ready:
            return True
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child exited and the terminal is closed
            return False
        seen += chunk
        return bool(chunk)

    def read_until(marker: bytes, timeout_s: float = limit_s) -> None:
        deadline = time.monotonic() + timeout_s
        while marker not in seen:
            if time.monotonic() > deadline:
                pytest.fail(f"no {marker!r} within {timeout_s:.0f} s; the terminal shows {seen[-500:]!r}")
            if not read_some(0.5):
                pytest.fail(f"chat exited before {marker!r}; the terminal shows {seen[-500:]!r}")

    def wait_for_exit(timeout_s: float = limit_s) -> None:
        nonlocal exited
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = os.waitpid(pid, os.WNOHANG)[0] == pid
            if exited:
                return
            if not read_some(0.1):  # keep draining, so a child writing to the terminal never blocks
                time.sleep(0.1)  # the terminal is closed: only the exit is left to see
        pytest.fail(f"chat did not exit within {timeout_s:.0f} s of Ctrl-D; the terminal shows {seen[-500:]!r}")

    try:
        read_until(b"you> ")
        os.write(fd, b"/fo\x1b[DX\r")  # \x1b[D is the Left arrow
        read_until(b"unknown command")
        # the prompt after the error, not the first one already in ``seen``: a Ctrl-D sent before readline is
        # reading again can be lost in the switch of terminal modes (seen under load)
        read_until(b"lists the commands\r\nyou> ", timeout_s=limit_s)
        os.write(fd, b"\x04")  # Ctrl-D
        wait_for_exit()
    finally:
        if not exited:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # a killed child is reaped at once
        os.close(fd)
    assert b"unknown command '/fXo'" in seen, seen[-500:]
