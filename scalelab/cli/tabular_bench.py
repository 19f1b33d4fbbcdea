"""`scalelab tabular-bench`: learning curves of every model over many data sets, with crossovers and floors.

    scalelab tabular-bench --out runs/tabular_bench --time-budget 60
    scalelab tabular-bench --datasets uci_pendigits teacher@20000 my.csv:label --models mlp mlp_ple hgb svm logreg
"""

from __future__ import annotations

from scalelab.cli import run_study
from scalelab.tabular.bench import BenchConfig, format_report, run_bench


def main(argv: list[str] | None = None) -> int:
    return run_study(BenchConfig, argv, "scalelab tabular-bench", run_bench, format_report, "tabular_bench",
                     ("bench.json", "bench.md", "bench.png"))
