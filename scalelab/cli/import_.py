"""`scalelab import`: a local Hugging Face LlamaForCausalLM folder becomes a scalelab run (checkpoint + tokenizer).

    scalelab import --format hf exports/demo-hf --run runs/imported --stage base
    scalelab pretrain --run runs/imported ...     # continue pretraining, or `scalelab sft` to fine-tune

The folder needs config.json, model.safetensors (or shards + model.safetensors.index.json) and a tokenizer.json with
scalelab's special tokens. Anything our model cannot represent (biases, rope scaling, other architectures) is named.
"""

from __future__ import annotations

import argparse

from scalelab.common import UsageError, print0
from scalelab.config import parse_args
from scalelab.lm.interop.hf import ImportConfig, import_hf


def _positional(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="DIR", help="Hugging Face model folder (config.json + safetensors)")


def main(argv: list[str] | None = None) -> int:
    cfg, ns, _ = parse_args(ImportConfig, argv, prog="scalelab import", extra=_positional)
    if not cfg.run:
        raise UsageError("--run is required (the run folder to create, e.g. runs/imported)")
    step_dir = import_hf(ns.source, cfg.run, stage=cfg.stage, force=cfg.force)
    print0(f"next: scalelab sample --run {cfg.run} --stage {cfg.stage}   (checkpoint {step_dir})")
    return 0
