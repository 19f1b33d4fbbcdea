"""scalelab.cli: thin entry points (`main(argv)` parses flags, calls the library, prints)."""

from __future__ import annotations

import signal
from typing import Any

from scalelab.common import UsageError, print0


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


def report_training(stage: str, summary: dict[str, Any]) -> int:
    """The closing line of `scalelab pretrain` and `scalelab sft`, and their exit code (128 + the signal that
    stopped them, as a shell reports it)."""
    parts = [f"step {summary['step']}/{summary['total_steps']}"]
    if summary.get("loss") is not None:
        parts.append(f"train loss {summary['loss']:.4f}")
    if summary.get("val_loss") is not None:
        bpb = f", val bpb {summary['val_bpb']:.4f}" if summary.get("val_bpb") is not None else ""
        parts.append(f"val loss {summary['val_loss']:.4f}{bpb}")
    if summary.get("tokens_per_s"):
        parts.append(f"{summary['tokens_per_s']:,.0f} tokens/s")
    print0(f"{stage}: " + ", ".join(parts) + f"; checkpoint {summary['checkpoint']}")
    return {"interrupted": 128 + signal.SIGINT, "terminated": 128 + signal.SIGTERM}.get(summary.get("stopped"), 0)
