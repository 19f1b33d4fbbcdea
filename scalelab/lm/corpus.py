"""Corpus sources for pretraining: the embedded `stdlib` default, text files/folders, JSONL, Parquet, HF datasets.

(Stub to be completed: the helper owning this file extends it.)
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_python_files() -> list[Path]:
    """Every .py file of the standard library, sorted, leaving out tests, site-packages and idlelib's test folders."""
    root = stdlib_dir()
    skip_parts = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if skip_parts.intersection(rel) or any(p.startswith("test_") for p in rel):
            continue
        out.append(path)
    return out


def python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"
