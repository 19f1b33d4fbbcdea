"""The CPU kernels' build cache is used only when this user alone can write it: a library planted in a shared or
foreign folder is never loaded (it would run inside every scalelab process).

Run: .venv/bin/pytest tests/test_kernel_cache.py -q
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scalelab.lm.inference import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="needs a C compiler")

CHECK = "from scalelab.lm.inference import cpu_kernels as k; print(k.available(), '|', k.why_unavailable())"
PLANTED = b"not a shared library: loading this would fail (a real attack would run code)"


def _python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def library_name(tmp_path_factory) -> str:
    """The file name the build uses on this machine (learned from a build in a private cache)."""
    cache = tmp_path_factory.mktemp("own") / "kernels"
    assert _python(CHECK, SCALELAB_KERNEL_CACHE=str(cache)) == "True |"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700  # created private
    (built,) = cache.glob("cpu_kernels-*.so")
    return built.name


def _plant(folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    planted = folder / name
    planted.write_bytes(PLANTED)
    return planted


def test_world_writable_cache_is_not_loaded_from(tmp_path, library_name) -> None:
    shared = tmp_path / "shared"
    planted = _plant(shared, library_name)
    shared.chmod(0o777)  # anyone could have put it there
    assert _python(CHECK, SCALELAB_KERNEL_CACHE=str(shared)) == "True |"  # built privately instead, and loaded
    assert planted.read_bytes() == PLANTED and sorted(p.name for p in shared.iterdir()) == [library_name]
    assert cpu_kernels.private(tmp_path) and not cpu_kernels.private(shared)


def test_planted_file_in_an_own_folder_is_not_loaded(tmp_path, library_name) -> None:
    own = tmp_path / "own"
    planted = _plant(own, library_name)
    own.chmod(0o700)
    planted.chmod(0o666)  # the folder is ours, but the file anyone may rewrite
    assert _python(CHECK, SCALELAB_KERNEL_CACHE=str(own)) == "True |"
    assert planted.read_bytes() == PLANTED


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to make another user's folder")
def test_folder_of_another_user_is_not_loaded_from(tmp_path, library_name) -> None:
    foreign = tmp_path / "foreign"
    planted = _plant(foreign, library_name)
    os.chown(planted, 65534, 65534)
    os.chown(foreign, 65534, 65534)
    foreign.chmod(0o755)  # not writable by others: only the owner differs
    assert _python(CHECK, SCALELAB_KERNEL_CACHE=str(foreign)) == "True |"
    assert planted.read_bytes() == PLANTED and sorted(p.name for p in foreign.iterdir()) == [library_name]


def test_cache_dir_checks(tmp_path, monkeypatch) -> None:
    fresh = tmp_path / "a" / "kernels"
    monkeypatch.setenv("SCALELAB_KERNEL_CACHE", str(fresh))
    assert cpu_kernels.cache_dir() == fresh and stat.S_IMODE(fresh.stat().st_mode) == 0o700
    fresh.chmod(0o770)
    assert cpu_kernels.cache_dir() is None  # group-writable: refused
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "a")
    monkeypatch.setenv("SCALELAB_KERNEL_CACHE", str(link))
    assert cpu_kernels.cache_dir() is None  # a link could be pointed elsewhere later
