"""`scalelab compute-curves`: MLP test score against training FLOPs, sweeping width and epochs at one data size.

    scalelab compute-curves --dataset teacher --n-train 4000 --widths 4 16 64 --epochs 1 5 20 --out runs/compute
"""

from __future__ import annotations

from pathlib import Path

from scalelab.common import claim_output_dir, print0
from scalelab.config import parse_config, save_config
from scalelab.tabular.compute import ComputeConfig, format_table, run_compute


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ComputeConfig, argv, prog="scalelab compute-curves")
    claim_output_dir(cfg.out, ("compute.json", "config.json"))
    result = run_compute(cfg)
    save_config(cfg, Path(cfg.out) / "config.json", section="compute_curves")
    print0(format_table(result))
    out = Path(cfg.out)
    print0(f"wrote {out / 'compute.json'}, {out / 'compute.csv'}, plot {out / 'compute.png'}")
    return 0
