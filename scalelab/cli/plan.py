"""`scalelab plan`: the model size, token count and predicted loss for a time or FLOP budget, before training.

    scalelab plan --scaling runs/scaling --minutes 60          # measures tokens/s here with preflight
    scalelab plan --scaling runs/scaling --flops 1e15

The law comes from the sweep's scaling.json (scalelab scaling); see scalelab/lm/scaling/plan.py.
"""

from __future__ import annotations

from scalelab.config import parse_config


def main(argv: list[str] | None = None) -> int:
    from scalelab.lm.scaling.plan import PlanConfig, plan, print_plan

    cfg = parse_config(PlanConfig, argv, prog="scalelab plan")
    print_plan(plan(cfg))
    return 0
