"""Test data: the small fixtures under tests/fixtures/ (see its README for licences), and markers for tests of the
public named sets, which skip with a reason when scalelab/data_sources.py finds no copy (a bare clone, CI with
SCALELAB_DATA pointed at an empty folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalelab import data_sources

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHAKESPEARE = FIXTURES / "tiny_shakespeare_head.txt"


def shakespeare_bytes(max_bytes: int | None = None) -> bytes:
    """The head of Tiny Shakespeare (public domain) shipped with the tests."""
    return SHAKESPEARE.read_bytes()[:max_bytes]


def set_dir(name: str) -> Path | None:
    """The folder of named set ``name`` (data folder, cache or package), or None when absent."""
    found = data_sources.locate(name)
    return found.path if found else None


def needs_sets(*names: str) -> pytest.MarkDecorator:
    """Skip unless every named set is present; the reason says how to get them."""
    missing = [n for n in names if data_sources.locate(n) is None]
    return pytest.mark.skipif(bool(missing), reason=f"data sets not present: {', '.join(missing)} "
                                                    f"(set ${data_sources.ENV} or `scalelab data pull NAME`)")
