"""scalelab.cli: thin entry points (`main(argv)` parses flags, calls the library, prints)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from scalelab.common import UsageError, print0
from scalelab.lm.inference.loading import DTYPE_HELP


@dataclass
class GenerationConfig:
    """The flags every command that generates from a checkpoint shares (`scalelab sample`, `scalelab chat`): one
    name and one meaning each, as the OpenAI API spells them."""

    run: str = field(default="", metadata={"help": "run folder (or a stage or step folder inside one)"})
    stage: str = field(default="", metadata={"help": "checkpoint stage: chat or base; empty = chat if present, "
                                                     "else base", "choices": ["chat", "base"]})
    max_tokens: int = field(default=256, metadata={"ge": 1, "help": "most new tokens per answer (also capped by "
                                                                    "the context)"})
    temperature: float = field(default=0.7, metadata={"ge": 0, "le": 100,
                                                      "help": "softmax temperature; 0 = greedy (deterministic)"})
    top_k: int = field(default=50, metadata={"ge": 0, "help": "sample among the k likeliest tokens; 0 = off"})
    top_p: float = field(default=1.0, metadata={"gt": 0, "le": 1,
                                                "help": "nucleus: smallest set with this probability mass; 1 = off"})
    seed: int = field(default=-1, metadata={"ge": -1, "help": "random seed (answer i uses seed + i); -1 = random"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})

    def check(self) -> None:
        if not self.run:
            raise UsageError("--run is required (a run folder such as runs/demo)")

    @staticmethod
    def default(name: str, value: Any) -> Any:
        """The field ``name`` with another default for one command, same help and range."""
        return field(default=value, metadata=dict(GenerationConfig.__dataclass_fields__[name].metadata))


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


def run_study(cls: type, argv: list[str] | None, prog: str, run: Any, report: Any, section: str,
              outputs: tuple[str, str, str]) -> int:
    """The shape every tabular study command shares: parse, claim --out (its own kind of output only), run, save
    the resolved config, print the table and where the JSON, CSV/markdown and plot went."""
    from pathlib import Path

    from scalelab.common import claim_output_dir
    from scalelab.config import parse_config, save_config

    cfg = parse_config(cls, argv, prog=prog)
    out = claim_output_dir(cfg.out, (outputs[0], "config.json"))
    result = run(cfg)
    save_config(cfg, Path(out) / "config.json", section=section)
    print0(report(result))
    print0(f"wrote {out / outputs[0]}, {out / outputs[1]}, plot {out / outputs[2]}")
    return 0
