"""`scalelab scaling`: IsoFLOP sweep through the training loop, fits of L(N, D) with intervals, n-gram baseline.

    scalelab scaling --config configs/cpu_scaling.yaml --out runs/scaling          # rerun to resume
    scalelab scaling --config configs/synthetic_scaling.yaml --out runs/synth      # the exact-entropy check
    scalelab scaling --config configs/cpu_scaling.yaml --out runs/scaling --fit-only

Writes <out>/scaling.json, isoflop.png, frontier.png, ngram.png and report.md (scalelab/lm/scaling/).
"""

from __future__ import annotations

from scalelab.config import parse_config


def main(argv: list[str] | None = None) -> int:
    from scalelab.lm.scaling.analysis import analyse, print_summary
    from scalelab.lm.scaling.plots import render
    from scalelab.lm.scaling.sweep import ScalingConfig, run_sweep

    cfg = parse_config(ScalingConfig, argv, prog="scalelab scaling")
    sweep = run_sweep(cfg)
    result = analyse(cfg, sweep)
    report = render(cfg.out)
    print_summary(result)
    print(f"wrote {cfg.out}/scaling.json and {report}")
    return 0
