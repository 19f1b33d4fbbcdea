"""`scalelab curves`: learning curves of the MLP and classical baselines over training-set size.

    scalelab curves --dataset magic_gamma_telescope --out runs/curves_magic
    scalelab curves --data my.csv --target label --sizes 25 100 400 1600 --seeds 0 1 2 --out runs/mine
"""

from __future__ import annotations

from scalelab.cli import run_study
from scalelab.tabular.curves import CurvesConfig, format_table, run_curves


def main(argv: list[str] | None = None) -> int:
    return run_study(CurvesConfig, argv, "scalelab curves", run_curves, format_table, "curves",
                     ("curves.json", "curves.csv", "curves.png"))
