"""`scalelab compute-curves`: MLP test score against training FLOPs, sweeping width and epochs at one data size.

    scalelab compute-curves --dataset teacher --n-train 4000 --widths 4 16 64 --epochs 1 5 20 --out runs/compute
"""

from __future__ import annotations

from scalelab.cli import run_study
from scalelab.tabular.compute import ComputeConfig, format_table, run_compute


def main(argv: list[str] | None = None) -> int:
    return run_study(ComputeConfig, argv, "scalelab compute-curves", run_compute, format_table, "compute_curves",
                     ("compute.json", "compute.csv", "compute.png"))
