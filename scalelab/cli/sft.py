"""`scalelab sft --run DIR [flags]`: fine-tune the base model on the chat task mixture (the pretraining loop).

    scalelab sft --run runs/demo --config configs/demo_sft.yaml
    scalelab sft --run runs/demo --data my_chats.jsonl:2 --max-steps 500
    scalelab sft --run runs/demo                       # rerun: resumes, or says the stage is already finished
    torchrun --standalone --nproc_per_node 2 -m scalelab sft --run-dir runs/demo

Flags come from scalelab.lm.posttrain.sft.SFTConfig (the pretraining flags plus the data ones; ``--help`` lists them).
Malformed conversation files stop with one line naming the file, line and field.
"""

from __future__ import annotations

from scalelab.cli import report_training
from scalelab.config import parse_args


def main(argv: list[str] | None = None) -> int:
    from scalelab.lm.posttrain.sft import SFTConfig, sft

    cfg, _, given = parse_args(SFTConfig, argv, prog="scalelab sft")
    summary = sft(cfg, given)
    return 0 if cfg.preflight_only else report_training(cfg.stage, summary)
