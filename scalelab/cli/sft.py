"""`scalelab sft --run DIR [flags]`: fine-tune the base model on the chat task mixture (the pretraining loop).

    scalelab sft --run runs/demo --config configs/sft_demo.yaml
    scalelab sft --run runs/demo --data my_chats.jsonl:2 --max-steps 500
    scalelab sft --run runs/demo                       # rerun: resumes, or says the stage is already finished

Flags come from scalelab.lm.posttrain.sft.SFTConfig (the pretraining flags plus the data ones; ``--help`` lists them).
Malformed conversation files stop with one line naming the file, line and field.
"""

from __future__ import annotations

import dataclasses
import signal

from scalelab.common import print0
from scalelab.config import load_yaml, parse_config_ns


def main(argv: list[str] | None = None) -> int:
    from scalelab.lm.posttrain.sft import SFTConfig, sft

    cfg, ns = parse_config_ns(SFTConfig, argv, prog="scalelab sft")
    explicit = {f.name for f in dataclasses.fields(SFTConfig) if getattr(ns, f.name, None) is not None}
    if ns.config:
        explicit |= set(load_yaml(ns.config)) - {"_target"}
    summary = sft(cfg, explicit)
    if cfg.preflight_only:
        return 0
    parts = [f"step {summary['step']}/{summary['total_steps']}"]
    if summary.get("loss") is not None:
        parts.append(f"train loss {summary['loss']:.4f}")
    if summary.get("val_loss") is not None:
        parts.append(f"val loss {summary['val_loss']:.4f}")
    if summary.get("tokens_per_s"):
        parts.append(f"{summary['tokens_per_s']:,.0f} tokens/s")
    print0(f"{cfg.stage}: " + ", ".join(parts) + f"; checkpoint {summary['checkpoint']}")
    return {"interrupted": 128 + signal.SIGINT, "terminated": 128 + signal.SIGTERM}.get(summary.get("stopped"), 0)
