"""Compute curves: at a fixed training-set size, sweep MLP width and epochs; test score against training FLOPs.

    scalelab compute-curves --dataset teacher --n-train 4000 --out runs/compute_teacher

FLOPs are counted from the layer shapes (``scalelab.tabular.fastnet.training_flops``: forward, weight-gradient and
input-gradient matmuls per example seen), not guessed. Writes ``compute.json``, ``compute.csv`` and
``compute.png`` (with the floor and the best classical score at the same size drawn as lines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scalelab.common import UsageError, atomic_write_text, progress, write_json
from scalelab.config import to_dict
from scalelab.tabular.baselines import LINEAR, check_models, make_model
from scalelab.tabular.curves import DataFields, load_from_config, score, split, subsample


@dataclass
class ComputeConfig(DataFields):
    """Compute curves: MLP test score against training FLOPs, over widths and epochs, at one data size."""

    dataset: str | None = field(default=None, metadata={"help": "data set by name (see scalelab curves)"})
    data: str | None = field(default=None, metadata={"help": "your own CSV file (with --target)"})
    target: str | None = field(default=None, metadata={"help": "target column of --data"})
    task: str = field(default="auto", metadata={"help": "auto, classification or regression",
                                                "choices": ["auto", "classification", "regression"]})
    n_train: int = field(default=4000, metadata={"ge": 0, "help": "training rows (0 = all)"})
    widths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128],
                              metadata={"ge": 1, "help": "hidden widths to sweep (every hidden layer)"})
    depth: int = field(default=2, metadata={"ge": 1, "help": "number of hidden layers"})
    epochs: list[int] = field(default_factory=lambda: [1, 3, 10, 30], metadata={"ge": 1,
        "help": "epoch budgets to sweep"})
    batch_size: int = field(default=128, metadata={"ge": 1, "help": "MLP batch size (examples)"})
    lr: float = field(default=2e-3, metadata={"gt": 0, "le": 10, "help": "Adam learning rate"})
    baselines: list[str] = field(default_factory=lambda: ["svm", "logreg"],
                                 metadata={"help": "classical models for the reference line (empty = none)"})
    seed: int = field(default=0, metadata={"ge": 0, "help": "random seed"})
    device: str = field(default="cpu", metadata={"help": "MLP device: cpu, cuda, auto"})
    out: str = field(default="runs/compute", metadata={"help": "output folder"})


def run_compute(cfg: ComputeConfig) -> dict[str, Any]:
    ds = load_from_config(cfg)
    Xp, yp, Xt, yt = split(ds, cfg.test_fraction, cfg.max_test)
    where = ds.source or ds.name
    n = cfg.n_train or len(yp)
    if n > len(yp):
        raise UsageError(f"{where}: --n-train {n} is larger than the {len(yp)} training rows available")
    if not cfg.widths or not cfg.epochs or min(cfg.widths) < 1 or min(cfg.epochs) < 1 or cfg.depth < 1:
        raise UsageError("--widths, --epochs and --depth need positive values")
    baselines = [b for b in cfg.baselines if b != "mlp"]
    baselines = [b for b in baselines if b in check_models(baselines, ds.task)] if baselines else []
    idx = subsample(yp, n, cfg.seed, ds.task)
    Xn, yn = Xp.iloc[idx], yp[idx]
    jobs = [(w, e) for w in sorted(set(cfg.widths)) for e in sorted(set(cfg.epochs))]
    points = []
    for w, e in progress(jobs, desc=f"compute {ds.name}", unit="fit"):
        pipe = make_model("mlp", ds, random_state=cfg.seed, hidden_layer_sizes=(w,) * cfg.depth, max_epochs=e,
                          n_iter_no_change=10**9, batch_size=cfg.batch_size, learning_rate=cfg.lr,
                          device=cfg.device)
        t0 = time.perf_counter()
        pipe.fit(Xn, yn)
        fit_s = time.perf_counter() - t0
        mlp = pipe[-1]
        points.append({"width": w, "depth": cfg.depth, "epochs": e, "flops": mlp.training_flops(),
                       "params": sum(p.numel() for p in mlp.model_.parameters()), "n_inputs": mlp.n_features_in_,
                       "score": score(ds.task, yt, pipe.predict(Xt)), "fit_seconds": fit_s})
    classical = {}
    for b in progress(baselines, desc="baselines", unit="fit"):
        pipe = make_model(b, ds, random_state=cfg.seed).fit(Xn, yn)
        classical[b] = score(ds.task, yt, pipe.predict(Xt))
    better = max if ds.task == "classification" else min
    best = None
    if classical:
        name = better(classical, key=classical.get)
        best = {"model": name, "score": classical[name], "linear": name in LINEAR}
    result = {"dataset": ds.name, "source": ds.source, "task": ds.task,
              "metric": "accuracy" if ds.task == "classification" else "mse",
              "greater_is_better": ds.task == "classification", "n_train": n, "n_test": len(yt),
              "points": points, "classical": classical, "best_classical": best, "floor": ds.floor,
              "best_mlp": better(points, key=lambda p: p["score"]), "config": to_dict(cfg)}
    out = Path(cfg.out)
    write_json(out / "compute.json", result)
    atomic_write_text(out / "compute.csv", pd.DataFrame(points).to_csv(index=False))
    from scalelab.tabular.plots import plot_compute

    plot_compute(result, out / "compute.png")
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['dataset']}: test {result['metric']} vs training FLOPs (n_train={result['n_train']})",
             f"  {'width':>6} {'epochs':>6} {'FLOPs':>10} {'score':>8} {'fit s':>7}"]
    for p in result["points"]:
        lines.append(f"  {p['width']:>6} {p['epochs']:>6} {p['flops']:>10.3g} {p['score']:>8.4f} "
                     f"{p['fit_seconds']:>7.2f}")
    for b, s in result["classical"].items():
        lines.append(f"  classical {b}: {s:.4f}")
    if result["floor"] is not None:
        lines.append(f"  floor: {result['floor']:.4f}")
    best = result["best_mlp"]
    lines.append(f"  best MLP: width {best['width']}, {best['epochs']} epochs, {best['flops']:.3g} FLOPs -> "
                 f"{best['score']:.4f}")
    return "\n".join(lines)


