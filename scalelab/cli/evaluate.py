"""`scalelab eval`: score a run's base or chat checkpoint on every task; writes eval/<stage>.json, prints a table.

    scalelab eval --run runs/demo --stage chat --limit 50
    scalelab eval --run runs/demo --stage base --mc on --mc-limit 100
"""

from __future__ import annotations

from scalelab.common import print0, read_json
from scalelab.config import parse_config
from scalelab.lm.posttrain.evaluate import EvalConfig, compare_table, evaluate, format_table
from scalelab.runs import RunDir


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, prog="scalelab eval")
    result = evaluate(cfg)
    run = RunDir(cfg.run)
    print0(format_table(result))
    other = "base" if cfg.stage == "chat" else "chat"
    if run.eval_json(other).is_file():
        both = {cfg.stage: result, other: read_json(run.eval_json(other))}
        print0("\nbase (few-shot) vs chat (template):\n" + compare_table(both.get("base"), both.get("chat")))
    print0(f"\nwrote {run.eval_json(cfg.stage)}")
    return 0
