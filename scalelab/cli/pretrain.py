"""`scalelab pretrain --run DIR [flags]`: pretrain a Llama-style Transformer on the run's token shards.

    scalelab pretrain --run runs/demo --model micro --time-budget 5         # 5 minutes on this laptop
    scalelab pretrain --run runs/demo                                       # rerun: resumes from the last checkpoint
    torchrun --standalone --nproc_per_node 2 -m scalelab pretrain --run-dir runs/demo --parallel fsdp

Under torchrun, spell the run directory ``--run-dir`` (an alias of ``--run``): torchrun's own parser rejects any
argument starting with ``--run`` as ambiguous with its ``--run-path``, even after the module name.

Flags come from scalelab.lm.train.config.TrainConfig (``--help`` lists them); ``--config configs/demo_pretrain.yaml``
loads a
YAML of the same fields. When the stage already has a checkpoint, fields not given explicitly are taken from it.
"""

from __future__ import annotations

import dataclasses
import signal

from scalelab.common import print0
from scalelab.config import load_yaml, parse_config_ns


def main(argv: list[str] | None = None) -> int:
    from scalelab.lm.train.loop import TrainConfig, merge_saved_config, train

    def alias(parser) -> None:
        parser.add_argument("--run-dir", dest="run", metavar="RUN", help="same as --run (use it under torchrun)")

    cfg, ns = parse_config_ns(TrainConfig, argv, prog="scalelab pretrain", extra=alias)
    explicit = {f.name for f in dataclasses.fields(TrainConfig) if getattr(ns, f.name, None) is not None}
    if ns.config:
        explicit |= set(load_yaml(ns.config)) - {"_target"}
    cfg = merge_saved_config(cfg, explicit)
    summary = train(cfg)
    if cfg.preflight_only:
        return 0
    parts = [f"step {summary['step']}/{summary['total_steps']}"]
    if summary.get("loss") is not None:
        parts.append(f"train loss {summary['loss']:.4f}")
    if summary.get("val_bpb") is not None:
        parts.append(f"val loss {summary['val_loss']:.4f}, val bpb {summary['val_bpb']:.4f}")
    if summary.get("tokens_per_s"):
        parts.append(f"{summary['tokens_per_s']:,.0f} tokens/s")
    print0(f"{cfg.stage}: " + ", ".join(parts) + f"; checkpoint {summary['checkpoint']}")
    return {"interrupted": 128 + signal.SIGINT, "terminated": 128 + signal.SIGTERM}.get(summary.get("stopped"), 0)
