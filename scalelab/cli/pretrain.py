"""`scalelab pretrain --run DIR [flags]`: pretrain a Llama-style Transformer on the run's token shards.

    scalelab pretrain --run runs/demo --model micro --time-budget 5         # 5 minutes on this laptop
    scalelab pretrain --run runs/demo                                       # rerun: resumes from the last checkpoint
    torchrun --standalone --nproc_per_node 2 -m scalelab pretrain --run-dir runs/demo --parallel fsdp

Under torchrun, spell the run directory ``--run-dir`` (every command takes it beside ``--run``): torchrun's own
parser rejects any argument starting with ``--run`` as ambiguous with its ``--run-path``, even after the module name.

Flags come from scalelab.lm.train.config.TrainConfig (``--help`` lists them); ``--config configs/demo_pretrain.yaml``
loads a YAML of the same fields. When the stage already has a checkpoint, fields not given are taken from it.
"""

from __future__ import annotations

from scalelab.cli import report_training
from scalelab.config import parse_args


def main(argv: list[str] | None = None) -> int:
    from scalelab.lm.train.config import TrainConfig
    from scalelab.lm.train.loop import train

    cfg, _, given = parse_args(TrainConfig, argv, prog="scalelab pretrain")
    summary = train(cfg, given=given)
    return 0 if cfg.preflight_only else report_training(cfg.stage, summary)
