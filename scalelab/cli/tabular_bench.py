"""`scalelab tabular-bench`: learning curves of every model over many data sets, with crossovers and floors.

    scalelab tabular-bench --out runs/tabular_bench --time-budget 60
    scalelab tabular-bench --datasets uci_pendigits teacher@20000 my.csv:label --models mlp mlp_ple hgb svm logreg
"""

from __future__ import annotations

from pathlib import Path

from scalelab.common import claim_output_dir, print0
from scalelab.config import parse_config, save_config
from scalelab.tabular.bench import BenchConfig, format_report, run_bench


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BenchConfig, argv, prog="scalelab tabular-bench")
    claim_output_dir(cfg.out, ("bench.json", "cells", "config.json"))
    result = run_bench(cfg)
    save_config(cfg, Path(cfg.out) / "config.json", section="tabular_bench")
    print0(format_report(result))
    out = Path(cfg.out)
    print0(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, plot {out / 'bench.png'}")
    return 0
