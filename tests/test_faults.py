"""Faults a run must survive: a full disk during a checkpoint, a broken newest checkpoint, a second writer on the
same run folder; and files other users can read (weights, exports)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import make_byte_run, tiny

from scalelab.common import RunLock, UsageError
from scalelab.lm.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def can_mount_tmpfs() -> str:
    """'' when this machine lets a test mount a private tmpfs (user + mount namespace), else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command (util-linux)"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && echo ok"],
                           capture_output=True, text=True)
    return "" if probe.stdout.strip() == "ok" else f"cannot mount a tmpfs here ({probe.stderr.strip()[:120]})"


def in_small_disk(tmp_path: Path, script: str, **env: str) -> tuple[str, str]:
    """Run ``script`` in a private user + mount namespace, where it mounts its own small tmpfs on ``$MNT``; returns
    (stdout, stdout + stderr). Skips where no tmpfs can be mounted, but CI must run the disk-full tests."""
    why = can_mount_tmpfs()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the disk-full test: {why}")
        pytest.skip(why)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SCALELAB_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT), "MNT": str(mnt),
                              "PY": sys.executable, **env}, cwd=ROOT)
    return out.stdout, out.stdout + out.stderr


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path: Path) -> None:
    run = make_byte_run(tmp_path / "run", max_bytes=60_000)
    train(tiny(run, max_steps=4, save_every=2, keep_last=0))
    step_bytes = du(run / "base" / "step_0000004")
    # a file system with room for the run as it is plus half a checkpoint: the next save cannot fit
    size_kib = (du(run) + step_bytes // 2) // 1024 + 64
    script = (f'mount -t tmpfs -o size={size_kib}k tmpfs "$MNT" && cp -a "$RUN" "$MNT/run" && '
              f'"$PY" -m scalelab pretrain --run "$MNT/run" --max-steps 8 --save-every 2; echo "rc=$?"; '
              'ls -a "$MNT/run/base"; cat "$MNT/run/base/latest"')
    stdout, text = in_small_disk(tmp_path, script, RUN=str(run))
    assert "rc=2" in text, text
    assert "Traceback" not in text
    error = [line for line in text.splitlines() if "error:" in line]
    assert len(error) == 1 and "no space left on the device to write checkpoint step_0000006" in error[0], text
    assert "MiB needed" in error[0] and "MiB free" in error[0]
    assert ".partial" not in text  # the half-written folder was removed
    assert stdout.rstrip().endswith("step_0000004")  # and the previous checkpoint is still the resume point


def test_disk_full_during_the_tokenizer_write_is_one_line_and_leaves_no_partial_files(tmp_path: Path) -> None:
    from data_fixtures import SHAKESPEARE

    # room for the tokenizer's lock file but not for the token shards of a 120 kB corpus
    script = ('mount -t tmpfs -o size=64k tmpfs "$MNT" && "$PY" -m scalelab tokenizer --run "$MNT/run" '
              '--corpus "$CORPUS" --vocab-size 300; echo "rc=$?"; ls -A "$MNT/run"')
    stdout, text = in_small_disk(tmp_path, script, CORPUS=str(SHAKESPEARE))
    assert "rc=2" in text and "Traceback" not in text, text
    error = [line for line in text.splitlines() if "error:" in line]
    assert len(error) == 1 and "no space left on the device to write the tokenizer and token shards" in error[0]
    assert "MiB free" in error[0]
    assert stdout.split("rc=2", 1)[1].split() == [".lock"]  # the staging folder was removed, nothing installed


def test_a_broken_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, capsys) -> None:
    run = make_byte_run(tmp_path / "run", max_bytes=60_000)
    train(tiny(run, max_steps=4, save_every=2, keep_last=0))
    model = run / "base" / "step_0000004" / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a copy cut short
    from scalelab.cli.pretrain import main

    assert main(["--run", str(run), "--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "step_0000004/model.safetensors: corrupt or truncated checkpoint" in out
    assert "falling back to step_0000002" in out and "resuming" in out and "at step 2" in out
    assert (run / "base" / "latest").read_text().strip() == "step_0000006"


def test_a_second_writer_on_the_same_run_is_refused(tmp_path: Path) -> None:
    run = make_byte_run(tmp_path / "run", max_bytes=60_000)
    with RunLock(run):  # another process writing this run holds the lock
        with pytest.raises(UsageError, match=f"another scalelab process \\(pid {os.getpid()}\\) is writing"):
            train(tiny(run, max_steps=2))
    train(tiny(run, max_steps=2))  # released: the run goes ahead
    assert (run / "base" / "step_0000002").is_dir()


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    import scalelab.common as common

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(common.os, "fsync", spy)
    run = make_byte_run(tmp_path / "run", max_bytes=60_000)
    train(tiny(run, max_steps=2))
    partial = [Path(p) for p in synced if ".partial" in p]
    names = {p.name for p in partial}
    assert {"model.safetensors", "meta.json", "optimizer.pt", "trainer_state.json"} <= names
    assert any(p.name.endswith(".partial") for p in partial)  # and the folder itself


def readable_by_others(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IROTH)


def test_weights_and_exports_are_readable_by_other_users(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        run = make_byte_run(tmp_path / "run", max_bytes=60_000)
        train(tiny(run, max_steps=2))
        step = run / "base" / "step_0000002"
        assert all(readable_by_others(p) for p in step.iterdir()), [oct(p.stat().st_mode) for p in step.iterdir()]
        assert readable_by_others(step)
    finally:
        os.umask(old)
