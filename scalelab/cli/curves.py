"""`scalelab curves`: learning curves of the MLP and classical baselines over training-set size.

    scalelab curves --dataset magic_gamma_telescope --out runs/curves_magic
    scalelab curves --data my.csv --target label --sizes 25 100 400 1600 --seeds 0 1 2 --out runs/mine
"""

from __future__ import annotations

from pathlib import Path

from scalelab.common import claim_output_dir, print0
from scalelab.config import parse_config, save_config
from scalelab.tabular.curves import CurvesConfig, format_table, run_curves


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CurvesConfig, argv, prog="scalelab curves")
    claim_output_dir(cfg.out, ("curves.json", "config.json"))
    result = run_curves(cfg)
    save_config(cfg, Path(cfg.out) / "config.json", section="curves")
    print0(format_table(result))
    out = Path(cfg.out)
    print0(f"wrote {out / 'curves.json'}, {out / 'curves.csv'}, plot {out / 'curves.png'}")
    return 0
