"""Plots of the tabular studies (matplotlib, Agg backend): learning curves and score-vs-FLOPs.

Called by ``scalelab.tabular.curves`` and ``scalelab.tabular.compute``; each reads only the result dict that is
also written as JSON, so a plot can be redrawn from the JSON alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402


def plain_number(value: float, _pos: Any = None) -> str:
    """1000 -> '1,000', 0.5 -> '0.5': what a reader expects on a training-size axis."""
    return f"{value:,.0f}" if value >= 1 and float(value).is_integer() else f"{value:g}"


def format_size_axis(ax: Any, sizes: list[float]) -> None:
    """Log x axis labelled with plain numbers. Over a short range matplotlib's log formatter labels its minor
    ticks as '3x10^1 4x10^1'; ticks at the measured sizes (when there are few) read as what was run."""
    ax.set_xscale("log")
    sizes = sorted({float(v) for v in sizes if v > 0})
    if 0 < len(sizes) <= 10:
        ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _floor_label(result: dict[str, Any]) -> str:
    return "Bayes accuracy" if result["metric"] == "accuracy" else "irreducible MSE (sigma^2)"


def plot_curves(result: dict[str, Any], path: str | Path) -> None:
    """Score vs training-set size (log x), mean over seeds with a +-1 std band, and the floor when known."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in result["models"].items():
        x, m, sd = np.array(s["sizes"]), np.array(s["mean"]), np.array(s["std"])
        (line,) = ax.plot(x, m, marker="o", ms=3, label=name)
        ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.2)
    if result.get("floor") is not None:
        ax.axhline(result["floor"], color="k", ls="--", lw=1, label=_floor_label(result))
    if result.get("crossover_n"):
        ax.axvline(result["crossover_n"], color="gray", ls=":", lw=1,
                   label=f"crossover n={plain_number(result['crossover_n'])}")
    format_size_axis(ax, next(iter(result["models"].values()))["sizes"] if result["models"] else [])
    if result["metric"] == "mse":
        ax.set_yscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel(f"test {result['metric']}")
    ax.set_title(f"{result['dataset']}: learning curves ({len(result['seeds'])} seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_compute(result: dict[str, Any], path: str | Path) -> None:
    """Test score vs training FLOPs: one line per MLP width (points = epochs), plus floor and best classical."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_width: dict[int, list[dict[str, Any]]] = {}
    for p in result["points"]:
        by_width.setdefault(p["width"], []).append(p)
    cmap = plt.get_cmap("viridis")
    widths = sorted(by_width)
    for i, w in enumerate(widths):
        pts = sorted(by_width[w], key=lambda p: p["flops"])
        ax.plot([p["flops"] for p in pts], [p["score"] for p in pts], marker="o", ms=3,
                color=cmap(i / max(1, len(widths) - 1)), label=f"width {w}")
    if result.get("best_classical") is not None:
        b = result["best_classical"]
        ax.axhline(b["score"], color="tab:red", ls="-.", lw=1, label=f"best classical ({b['model']})")
    if result.get("floor") is not None:
        ax.axhline(result["floor"], color="k", ls="--", lw=1, label=_floor_label(result))
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    if result["metric"] == "mse":
        ax.set_yscale("log")
    ax.set_xlabel("training FLOPs (matmuls, from layer shapes)")
    ax.set_ylabel(f"test {result['metric']}")
    ax.set_title(f"{result['dataset']}: MLP score vs compute (n={result['n_train']})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bench(result: dict[str, Any], path: str | Path) -> None:
    """Grinsztajn-style summary: normalised test score (per data set and size, best model 1, worst 0) averaged over
    data sets against training size, one line per family (left) and per model (right)."""
    norm = result["normalised"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    sizes: set[float] = set()
    for ax, key, title in ((axes[0], "families", "per family (its best model on each set)"),
                           (axes[1], "models", "per model")):
        for name, s in sorted(norm[key].items()):
            ax.plot(s["sizes"], s["mean"], marker="o", ms=3, label=name)
            sizes.update(s["sizes"])
        format_size_axis(ax, sorted(sizes))
        ax.set_xlabel("training examples")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"normalised test score (mean over {len(result['datasets'])} data sets)")
    fig.suptitle("tabular-bench: " + ", ".join(result["datasets"]), fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
