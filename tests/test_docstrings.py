"""Comments, docstrings and every other string under scalelab/ (help texts, messages) say why, not how fast:
measurements go stale in code (they live in benchmarks/results/*.json and the README's figures), and a path outside
the repository means nothing to a reader."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scalelab"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))

TIMING = re.compile(r"\d[\d.,]*\s?(?:us|µs|ms|ns|tokens?/s|tok/s|[KMGT]?FLOP/s|[KMG]B/s"
                    r"|x faster|x slower|% faster|% slower)\b|\b(?:microseconds|milliseconds)\b", re.IGNORECASE)
OUTSIDE = re.compile(r"(?<![\w.~])/(?:work|home|root|tmp|Users|mnt|opt|srv)/[\w.-]")


def prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and string literal of a module (docstrings, help texts, messages)."""
    kinds = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    return [(tok.start[0], tok.string) for tok in
            tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline) if tok.type in kinds]


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_comments_carry_no_timings_or_outside_paths(path: Path) -> None:
    bad = []
    for line, text in prose(path):
        for pattern, what in ((TIMING, "a timing"), (OUTSIDE, "a path outside the repository")):
            m = pattern.search(text)
            if m:
                row = line + text[:m.start()].count("\n")
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{row}: {what}: {m.group(0)!r}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_timing_and_an_outside_path(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    outside = "/".join(["", "work", "notes.md"])  # built, so this file itself names no machine path
    sample.write_text(f'"""Fast: 2,610 tokens/s."""\n\n\ndef f():\n    """See {outside}."""\n'
                      '    x = 1  # 0.36 ms\n')
    found = [(n, bool(TIMING.search(t)), bool(OUTSIDE.search(t))) for n, t in prose(sample)]
    assert found == [(1, True, False), (5, False, True), (6, True, False)]
