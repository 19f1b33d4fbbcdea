"""scalelab.cli: thin entry points (`main(argv)` parses flags, calls the library, prints)."""

from __future__ import annotations

from typing import Any

from scalelab.common import UsageError


def check_generation_flags(cfg: Any, stages: tuple[str, ...]) -> None:
    """The flags `scalelab sample` and `scalelab chat` share: --run, --stage, --max-tokens and the sampling values."""
    if not cfg.run:
        raise UsageError("--run is required (a run folder such as runs/demo)")
    if cfg.stage not in ("", *stages):
        raise UsageError(f"--stage {cfg.stage!r}: choose {' or '.join(stages)}")
    if cfg.max_tokens < 1:
        raise UsageError(f"--max-tokens {cfg.max_tokens}: must be at least 1")
    if cfg.temperature < 0 or cfg.top_k < 0 or not 0 < cfg.top_p <= 1:
        raise UsageError("--temperature must be >= 0, --top-k >= 0 and --top-p in (0, 1]")
