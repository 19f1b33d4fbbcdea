"""Learning curves: every model on log-spaced training-set sizes, several seeds, one fixed held-out test set.

    scalelab curves --dataset teacher --out runs/curves_teacher
    scalelab curves --data my.csv --target label --models mlp svm logreg --sizes 25 100 1000 --seeds 0 1 2

Writes to --out: ``curves.json`` (per model: sizes, mean/std score, fit seconds, a power-law fit of the error with
its floor; ``crossover_n`` from the fitted curves with a bootstrap interval over seeds; ``floor``),
``curves.csv`` (one row per fit), ``curves.png`` and ``points.jsonl``. Each finished fit is appended to
``points.jsonl`` at once, so a killed run resumes where it stopped when started again with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, mean_squared_error

from scalelab.common import UsageError, append_jsonl, atomic_write_text, progress, read_jsonl, write_json
from scalelab.config import to_dict
from scalelab.tabular.baselines import check_models, make_model, model_overrides, parse_weights
from scalelab.tabular.datasets import TEACHER_KINDS, Dataset, load_csv, load_dataset
from scalelab.tabular.fastnet import ACTIVATIONS
from scalelab.tabular.fits import PowerLawFit, bootstrap_fits, crossover_vs_all, fit_power_law
from scalelab.tabular.mlp import CLASSIFIER_LOSSES, GCE_Q, LR_SCHEDULES


@dataclass
class DataFields:
    """The test split and the synthetic tasks' shape: shared by the curves and compute-curves configs."""

    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1,
        "help": "held-out fraction when the data has no test split"})
    max_test: int = field(default=5000, metadata={"ge": 0, "help": "cap on test rows (0 = no cap)"})
    n_samples: int = field(default=20000, metadata={"ge": 2, "help": "rows of a synthetic data set"})
    noise: float = field(default=0.1, metadata={"ge": 0, "lt": 1,
        "help": "teacher: fraction of labels replaced by another class"})
    teacher_kind: str = field(default=TEACHER_KINDS[0], metadata={
        "help": "teacher: even (h(x) + h(-x): linear models at the majority rate) or plain (h(x) alone)",
        "choices": list(TEACHER_KINDS)})
    sigma: float = field(default=0.5, metadata={"ge": 0, "help": "synthetic_regression: noise standard deviation"})
    n_features: int = field(default=0, metadata={"ge": 0, "help": "synthetic input dimension (0 = the task's default)"})


@dataclass
class CurvesConfig(DataFields):
    """Learning curves: test score against training-set size for the MLP and classical baselines."""

    dataset: str | None = field(default=None, metadata={"help": "data set by name (sklearn, ../shared/data or "
                                                                "synthetic: teacher, synthetic_regression)"})
    data: str | None = field(default=None, metadata={"help": "your own CSV file (with --target)"})
    target: str | None = field(default=None, metadata={"help": "target column of --data"})
    task: str = field(default="auto", metadata={"help": "auto, classification or regression (for --data)",
                                                "choices": ["auto", "classification", "regression"]})
    models: list[str] = field(default_factory=list, metadata={
        "help": "models to compare: mlp mlp_ple hgb svm logreg (classification) | linear ridge (regression); "
                "lightgbm xgboost catboost with the [trees] extra; tabpfn tabicl with [pfn] and --weights; "
                "empty = the task's default set"})
    weights: list[str] = field(default_factory=list, metadata={
        "help": "MODEL=FILE weights of a pretrained model (tabpfn, tabicl); never downloaded"})
    sizes: list[int] = field(default_factory=list, metadata={"ge": 2,
        "help": "training-set sizes (rows); empty = log-spaced from --min-size to all"})
    n_sizes: int = field(default=8, metadata={"ge": 1, "help": "number of log-spaced sizes when --sizes is empty"})
    min_size: int = field(default=25, metadata={"ge": 2, "help": "smallest training-set size when --sizes is empty"})
    max_train: int = field(default=0, metadata={"ge": 0, "help": "cap on the training pool in rows (0 = no cap)"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"ge": 0, "help": "one fit per seed and size"})
    mlp_hidden: list[int] = field(default_factory=lambda: [128, 128], metadata={"ge": 1,
        "help": "MLP hidden layer widths"})
    mlp_epochs: int = field(default=0, metadata={"ge": 0, "help": "MLP max epochs (0 = by data size: 100 to 300)"})
    mlp_lr: float = field(default=2e-3, metadata={"gt": 0, "le": 10, "help": "MLP Adam learning rate"})
    mlp_loss: str = field(default="auto", metadata={
        "help": "MLP classifier loss: auto (gce), log_loss (cross-entropy) or gce "
                "(generalised cross-entropy, robust to noisy labels)", "choices": ["auto", *CLASSIFIER_LOSSES]})
    mlp_gce_q: float = field(default=GCE_Q, metadata={"gt": 0, "le": 1,
        "help": "q of the gce loss: larger resists label noise more, smaller learns many classes faster"})
    mlp_activation: str = field(default="relu", metadata={
        "help": "MLP hidden activation", "choices": list(ACTIVATIONS)})
    mlp_schedule: str = field(default="auto", metadata={
        "help": "MLP learning-rate schedule: auto (cosine for a classifier, else constant), "
                "constant, or cosine to zero over the epochs", "choices": ["auto", *LR_SCHEDULES]})
    mlp_early_stopping: str = field(default="auto", metadata={
        "help": "MLP early stopping on a held-out tenth: auto (a regressor: on from 1,000 rows; a classifier: "
                "refit), on, off (train every epoch), refit (choose the epochs on the tenth, then train on all rows)",
        "choices": ["auto", "on", "off", "refit"]})
    n_boot: int = field(default=200, metadata={"ge": 0,
        "help": "bootstrap resamples of the seeds for the crossover interval (0 = no interval)"})
    device: str = field(default="cpu", metadata={"help": "MLP device: cpu, cuda, auto"})
    out: str = field(default="runs/curves", metadata={"help": "output folder"})


def load_from_config(cfg: Any) -> Dataset:
    """The data set a curves/compute config names (exactly one of --dataset and --data)."""
    if bool(cfg.dataset) == bool(cfg.data):
        raise UsageError("give exactly one of --dataset NAME and --data FILE.csv")
    if cfg.data:
        if not cfg.target:
            raise UsageError(f"{cfg.data}: --target COLUMN is required with --data")
        return load_csv(cfg.data, cfg.target, task=cfg.task)
    kw: dict[str, Any] = {"n_samples": cfg.n_samples, "noise": cfg.noise, "sigma": cfg.sigma,
                          "teacher_kind": cfg.teacher_kind}
    if cfg.n_features:
        kw["n_features"] = cfg.n_features
    elif cfg.dataset == "synthetic_regression":
        kw["n_features"] = 4
    else:
        kw["n_features"] = 2
    return load_dataset(cfg.dataset, **kw)


def split(ds: Dataset, test_fraction: float, max_test: int, max_train: int = 0,
          seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """(X_pool, y_pool, X_test, y_test): the data set's own test split, else a random held-out fraction."""
    rng = np.random.default_rng(seed)
    if ds.X_test is not None:
        Xp, yp, Xt, yt = ds.X, ds.y, ds.X_test, ds.y_test
    else:
        if not 0.0 < test_fraction < 1.0:
            raise UsageError(f"test_fraction must be in (0, 1), got {test_fraction}")
        perm = rng.permutation(len(ds.y))
        k = max(1, int(round(len(perm) * test_fraction)))
        Xp, yp = ds.X.iloc[perm[k:]], ds.y[perm[k:]]
        Xt, yt = ds.X.iloc[perm[:k]], ds.y[perm[:k]]
    if max_test and len(yt) > max_test:
        keep = rng.choice(len(yt), max_test, replace=False)
        Xt, yt = Xt.iloc[keep], yt[keep]
    if max_train and len(yp) > max_train:
        keep = rng.choice(len(yp), max_train, replace=False)
        Xp, yp = Xp.iloc[keep], yp[keep]
    return Xp.reset_index(drop=True), np.asarray(yp), Xt.reset_index(drop=True), np.asarray(yt)


def log_sizes(n_max: int, n: int = 8, n_min: int = 25) -> list[int]:
    n_min = min(n_min, n_max)
    return sorted({int(round(v)) for v in np.geomspace(n_min, n_max, max(n, 1))})


def score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy for classification (higher is better), MSE for regression (lower is better)."""
    return float(accuracy_score(y_true, y_pred)) if task == "classification" else float(
        mean_squared_error(y_true, y_pred))


def subsample(y_pool: np.ndarray, n: int, seed: int, task: str) -> np.ndarray:
    """n random rows; for classification, redraw until at least two classes are present."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        idx = rng.choice(len(y_pool), n, replace=False)
        if task != "classification" or len(np.unique(y_pool[idx])) >= 2:
            return idx
    raise UsageError(f"cannot draw {n} training rows with two classes or more; use larger --sizes")


def mlp_flags(cfg: CurvesConfig) -> dict[str, Any]:
    """The plain MLP's settings from the --mlp-* flags."""
    kw: dict[str, Any] = {"hidden_layer_sizes": tuple(cfg.mlp_hidden), "learning_rate": cfg.mlp_lr,
                          "activation": cfg.mlp_activation}
    if cfg.mlp_epochs:
        kw["max_epochs"] = cfg.mlp_epochs
    if cfg.mlp_schedule != "auto":  # auto: the task's rule in default_mlp_params
        kw["lr_schedule"] = cfg.mlp_schedule
    if cfg.mlp_loss != "auto":  # only for classification (a regression task is refused before this)
        kw["loss"] = cfg.mlp_loss
    if cfg.mlp_gce_q != GCE_Q:
        kw["gce_q"] = cfg.mlp_gce_q
    if cfg.mlp_early_stopping != "auto":  # auto: the size rule of default_mlp_params
        kw["early_stopping"] = {"on": True, "off": False, "refit": "refit"}[cfg.mlp_early_stopping]
    return kw


def error(task: str, score_: float) -> float:
    """What the power law is fitted to: 1 - accuracy, or the MSE."""
    return 1.0 - score_ if task == "classification" else score_


def fit_cell(ds: Dataset, model: str, Xp: pd.DataFrame, yp: np.ndarray, Xt: pd.DataFrame, yt: np.ndarray,
             n: int, seed: int, overrides: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Fit ``model`` on ``n`` rows drawn with ``seed`` and score it on the test rows: one cell of a curve.
    ``threads`` caps BLAS/OpenMP threads for the fit (every model the same, so fit times compare)."""
    from threadpoolctl import threadpool_limits

    idx = subsample(yp, n, seed, ds.task)
    pipe = make_model(model, ds, random_state=seed, **overrides)
    with threadpool_limits(threads):
        t0 = time.perf_counter()
        pipe.fit(Xp.iloc[idx], yp[idx])
        fit_s = time.perf_counter() - t0
        s = score(ds.task, yt, pipe.predict(Xt))
    return {"score": s, "fit_seconds": fit_s}


def curve_fits(task: str, models: list[str], sizes: list[int], points: list[dict[str, Any]], n_boot: int,
               seeds: list[int]) -> tuple[dict[str, PowerLawFit | None], dict[str, list[PowerLawFit | None]]]:
    """Power-law fits to each model's mean error over seeds, and ``n_boot`` bootstrap refits (paired over models)."""
    fits, boots = {}, {}
    for m in models:
        errs = np.array([[error(task, next(p["score"] for p in points if p["model"] == m and p["size"] == n
                                           and p["seed"] == s)) for s in seeds] for n in sizes])
        fits[m] = fit_power_law(sizes, errs.mean(1))
        boots[m] = bootstrap_fits(sizes, errs, n_boot, seed=0)
    return fits, boots


def run_curves(cfg: CurvesConfig) -> dict[str, Any]:
    """Fit every (model, size, seed), write the outputs, return the summary (what curves.json holds)."""
    ds = load_from_config(cfg)
    weights = parse_weights(cfg.weights)
    models = check_models(cfg.models, ds.task, weights)
    Xp, yp, Xt, yt = split(ds, cfg.test_fraction, cfg.max_test, cfg.max_train)
    where = ds.source or ds.name
    if cfg.mlp_loss != "auto" and ds.task != "classification":
        raise UsageError(f"{where}: --mlp-loss {cfg.mlp_loss} is for classification (a regression MLP uses "
                         "squared error)")
    if cfg.mlp_gce_q != GCE_Q and (ds.task != "classification" or cfg.mlp_loss == "log_loss"):
        raise UsageError(f"{where}: --mlp-gce-q is the q of the gce loss; it needs a classification task and "
                         f"--mlp-loss gce or auto (got {ds.task}, --mlp-loss {cfg.mlp_loss})")
    sizes = sorted(set(cfg.sizes)) if cfg.sizes else log_sizes(len(yp), cfg.n_sizes, cfg.min_size)
    if sizes[0] < 2:
        raise UsageError(f"{where}: sizes must be >= 2, got {sizes[0]}")
    if sizes[-1] > len(yp):
        raise UsageError(f"{where}: size {sizes[-1]} is larger than the {len(yp)} training rows available "
                         f"(after holding out {len(yt)} test rows)")
    if not cfg.seeds:
        raise UsageError("--seeds needs at least one seed")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    points_path = out / "points.jsonl"
    done = {(p["model"], p["size"], p["seed"]): p for p in read_jsonl(points_path) if p.get("config") == key}
    jobs = [(m, n, s) for s in cfg.seeds for n in sizes for m in models]
    bar = progress(jobs, desc=f"curves {ds.name}", unit="fit")
    for m, n, s in bar:
        if (m, n, s) in done:
            continue
        bar.set_postfix_str(f"{m} n={n} seed={s}")
        kw = model_overrides(m, n, mlp_flags(cfg), weights, cfg.device, ds.task)
        point = {"config": key, "model": m, "size": n, "seed": s, **fit_cell(ds, m, Xp, yp, Xt, yt, n, s, kw)}
        append_jsonl(points_path, point)
        done[(m, n, s)] = point
    points = [done[j] for j in jobs]
    result = summarize(points, models, sizes, ds, cfg, n_test=len(yt), n_pool=len(yp))
    write_outputs(result, points, out)
    return result


def summarize(points: list[dict[str, Any]], models: list[str], sizes: list[int], ds: Dataset, cfg: Any,
              n_test: int, n_pool: int) -> dict[str, Any]:
    classification = ds.task == "classification"
    summary: dict[str, dict[str, Any]] = {}
    for m in models:
        rows = {n: [p for p in points if p["model"] == m and p["size"] == n] for n in sizes}
        summary[m] = {"sizes": sizes,
                      "mean": [float(np.mean([p["score"] for p in rows[n]])) for n in sizes],
                      "std": [float(np.std([p["score"] for p in rows[n]])) for n in sizes],
                      "fit_seconds": [float(np.mean([p["fit_seconds"] for p in rows[n]])) for n in sizes]}
    fits, boots = curve_fits(ds.task, models, sizes, points, getattr(cfg, "n_boot", 200), list(cfg.seeds))
    for m in models:
        summary[m]["fit"] = fits[m].to_dict() if fits[m] else None
        summary[m]["fitted_floor"] = fits[m].floor if fits[m] else None  # as an error: 1 - accuracy, or MSE
    cross = None
    if "mlp" in models and len(models) > 1 and len(sizes) >= 3:
        cross = crossover_vs_all(sizes, fits["mlp"], boots["mlp"], [(fits[m], boots[m]) for m in models if m != "mlp"])
    # one test set: the score's own sampling error (binomial for accuracy), to judge gaps to the floor
    se = None
    if classification and ds.floor is not None:
        se = float(np.sqrt(ds.floor * (1 - ds.floor) / n_test))
    return {"dataset": ds.name, "source": ds.source, "task": ds.task,
            "metric": "accuracy" if classification else "mse", "greater_is_better": classification,
            "n_train_pool": n_pool, "n_test": n_test, "seeds": list(cfg.seeds), "models": summary,
            "crossover_n": round(cross["n"]) if cross and cross["n"] else None,
            "crossover_interval": [cross["low"], cross["high"]] if cross else None,
            "crossover_found": cross["found"] if cross else None,
            "floor": ds.floor, "floor_standard_error": se,
            "config": to_dict(cfg)}


def write_outputs(result: dict[str, Any], points: list[dict[str, Any]], out: Path) -> None:
    from scalelab.tabular.plots import plot_curves

    write_json(out / "curves.json", result)
    df = pd.DataFrame(points).drop(columns=["config"])
    atomic_write_text(out / "curves.csv", df.to_csv(index=False))
    plot_curves(result, out / "curves.png")


def format_table(result: dict[str, Any]) -> str:
    """A short text table: score at the smallest and largest size, and fit time at the largest."""
    metric = result["metric"]
    lines = [f"{result['dataset']}: {metric} on {result['n_test']} test rows "
             f"(mean over seeds {result['seeds']})",
             f"  {'model':<8} {'n=' + str(result['models'][next(iter(result['models']))]['sizes'][0]):>10} "
             f"{'n=' + str(result['models'][next(iter(result['models']))]['sizes'][-1]):>10} {'fit s':>8} "
             f"{'fitted floor':>12}"]
    for m, s in result["models"].items():
        floor = s.get("fitted_floor")
        shown = "-" if floor is None else f"{(1 - floor if metric == 'accuracy' else floor):.4f}"
        lines.append(f"  {m:<8} {s['mean'][0]:>10.4f} {s['mean'][-1]:>10.4f} {s['fit_seconds'][-1]:>8.2f} "
                     f"{shown:>12}")
    if result["floor"] is not None:
        lines.append(f"  floor ({'Bayes accuracy' if metric == 'accuracy' else 'noise variance'}): "
                     f"{result['floor']:.4f}")
    interval = result.get("crossover_interval")
    ci = (f" (90% interval over seeds {interval[0]:,.0f}-{interval[1]:,.0f}, in {result['crossover_found']:.0%} of "
          f"resamples)") if interval and interval[0] is not None else ""
    lines.append(f"  crossover_n (fitted MLP error below every other model's from here on): "
                 f"{result['crossover_n']}{ci}")
    return "\n".join(lines)
