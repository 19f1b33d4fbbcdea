"""A tabular benchmark suite: learning curves of every model over a list of data sets, several seeds, one table.

    scalelab tabular-bench --out runs/tabular_bench --time-budget 60
    scalelab tabular-bench --datasets magic_gamma_telescope teacher@20000 my.csv:label --seeds 0 1 2

Each data set is ``NAME`` (see ``scalelab curves --help``) or ``FILE.csv:TARGET``, optionally ``@ROWS`` to let it use
sizes up to ROWS instead of ``--max-train``. Every (data set, model, size, seed) is a cell whose result is written to
``cells/<data set>/<model>/n<size>_s<seed>.json`` as soon as it is fitted, keyed by everything that shapes it, so a
killed or time-limited run started again fits only the cells it has not finished. Then, in the manner of Grinsztajn,
Oyallon and Varoquaux (NeurIPS 2022): scores normalised per data set and size (best model 1, worst 0) averaged per
model family against training size; per data set and pair of families the size where one overtakes the other, read
off power-law fits of the error with a bootstrap interval over seeds; each model's fitted error floor (against the
known one on synthetic sets) and fit time. Writes ``bench.json``, ``bench.md`` and ``bench.png``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.common import UsageError, atomic_write_text, progress, read_json, write_json
from scalelab.config import to_dict
from scalelab.tabular.baselines import DEFAULT_MODELS, FAMILY, MODELS, check_models, model_overrides, parse_weights
from scalelab.tabular.curves import error, fit_cell, split
from scalelab.tabular.datasets import TEACHER_KINDS, Dataset, load_csv, load_dataset
from scalelab.tabular.fits import bootstrap_fits, crossover_interval, fit_power_law

REAL_DEFAULT = ["magic_gamma_telescope", "uci_adult", "covertype_75k", "uci_letter_recognition", "uci_pendigits"]


@dataclass
class BenchConfig:
    """Learning curves of every model over many data sets: normalised scores per family, crossovers, floors."""

    datasets: list[str] = field(default_factory=lambda: [*REAL_DEFAULT, "teacher@20000", "synthetic_regression"],
                                metadata={"help": "NAME or FILE.csv:TARGET, each optionally @ROWS (its own size cap)"})
    models: list[str] = field(default_factory=list, metadata={
        "help": "models to run where they fit the task (empty = each task's default set; see scalelab curves)"})
    weights: list[str] = field(default_factory=list, metadata={"help": "MODEL=FILE weights for tabpfn / tabicl"})
    sizes: list[int] = field(default_factory=lambda: [50, 150, 500, 1500, 5000, 20000],
                             metadata={"ge": 2,
                                       "help": "training sizes (rows), shared by every data set up to its cap"})
    max_train: int = field(default=5000, metadata={"ge": 0,
        "help": "size cap for data sets without @ROWS (0 = no cap)"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"ge": 0, "help": "one fit per seed and size"})
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1,
        "help": "held-out fraction when a set has no test split"})
    max_test: int = field(default=5000, metadata={"ge": 0, "help": "cap on test rows (0 = no cap)"})
    n_samples: int = field(default=25000, metadata={"ge": 2, "help": "rows of each synthetic data set"})
    noise: float = field(default=0.1, metadata={"ge": 0, "lt": 1,
        "help": "teacher: label noise (Bayes accuracy is 1 - noise)"})
    teacher_kind: str = field(default=TEACHER_KINDS[0], metadata={
        "help": "teacher: even (h(x) + h(-x): linear models at the majority rate) or plain (h(x) alone)",
        "choices": list(TEACHER_KINDS)})
    n_features: int = field(default=6, metadata={"ge": 1, "help": "teacher input dimension"})
    sigma: float = field(default=0.5, metadata={"ge": 0,
        "help": "synthetic_regression: noise std (irreducible MSE sigma^2)"})
    synthetic_seed: int = field(default=1, metadata={"ge": 0,
        "help": "seed of the synthetic tasks (0 is the one tuned on)"})
    threads: int = field(default=1, metadata={"ge": 1,
        "help": "BLAS/OpenMP/torch threads per fit, the same for every model"})
    n_boot: int = field(default=200, metadata={"ge": 0,
        "help": "bootstrap resamples of the seeds for crossover intervals (0 = none)"})
    time_budget: float = field(default=0.0, metadata={"ge": 0,
        "help": "minutes; no new fit starts after it (0 = none)"})
    device: str = field(default="cpu", metadata={"help": "device of the neural models: cpu, cuda, auto"})
    out: str = field(default="runs/tabular_bench", metadata={"help": "output folder (cells/ makes it resumable)"})


@dataclass
class Entry:
    """One data set of the suite, loaded and split once."""

    name: str
    spec: str
    ds: Dataset
    split: tuple[Any, np.ndarray, Any, np.ndarray]
    sizes: list[int]
    models: list[str]


def parse_spec(spec: str) -> tuple[str, str | None, int]:
    """'name@ROWS' | 'file.csv:target@ROWS' -> (name or file, target or None, rows or 0)."""
    body, _, rows = spec.partition("@")
    if rows and not rows.isdigit():
        raise UsageError(f"data set '{spec}': @ROWS must be a whole number")
    path, sep, target = body.rpartition(":")
    if sep and path.lower().endswith(".csv"):
        return path, target, int(rows or 0)
    return body, None, int(rows or 0)


def load_entry(spec: str, cfg: BenchConfig, weights: dict[str, str]) -> Entry:
    what, target, rows = parse_spec(spec)
    if target is not None:
        ds = load_csv(what, target)
    else:
        kw: dict[str, Any] = {"n_samples": cfg.n_samples, "noise": cfg.noise, "sigma": cfg.sigma,
                              "seed": cfg.synthetic_seed, "teacher_kind": cfg.teacher_kind,
                              "n_features": 4 if what == "synthetic_regression" else cfg.n_features}
        ds = load_dataset(what, **kw)
    Xp, yp, Xt, yt = split(ds, cfg.test_fraction, cfg.max_test)
    cap = rows or cfg.max_train or max(cfg.sizes)  # no cap: every size in --sizes is asked of this set
    sizes = sorted({s for s in cfg.sizes if s <= cap})
    where = ds.source or ds.name
    if not sizes:
        raise UsageError(f"{where}: no size in --sizes is at most its cap of {cap} rows")
    if sizes[-1] > len(yp):
        raise UsageError(f"{where}: size {sizes[-1]} is larger than the {len(yp)} training rows available "
                         f"(after holding out {len(yt)} test rows); lower its @ROWS or --max-train")
    if ds.task == "classification" and len(np.unique(yp)) < 2:
        raise UsageError(f"{where}: the target has a single class; nothing to classify")
    wanted = cfg.models or DEFAULT_MODELS[ds.task]
    models = check_models([m for m in wanted if ds.task in MODELS.get(m, {ds.task: None})], ds.task, weights)
    if not models:
        raise UsageError(f"{where}: none of --models does {ds.task}")
    name = ds.name if target is None else Path(what).stem
    return Entry(name, spec, ds, (Xp, yp, Xt, yt), sizes, models)


def cell_key(entry: Entry, model: str, overrides: dict[str, Any], cfg: BenchConfig) -> str:
    """Everything that shapes a cell's result except its size and seed (in the file name)."""
    what = {"spec": entry.spec, "model": model, "overrides": overrides, "threads": cfg.threads,
            "split": [cfg.test_fraction, cfg.max_test], "n_test": len(entry.split[3])}
    if entry.ds.source == "synthetic":
        what["synthetic"] = [cfg.n_samples, cfg.noise, cfg.n_features, cfg.sigma, cfg.synthetic_seed]
        if cfg.teacher_kind != TEACHER_KINDS[0]:  # so cells fitted before the option keep their keys
            what["synthetic"].append(cfg.teacher_kind)
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Fit every missing cell (within the time budget), then summarise all finished cells."""
    if not cfg.seeds:
        raise UsageError("--seeds needs at least one seed")
    if not cfg.datasets:
        raise UsageError("--datasets needs at least one data set")
    weights = parse_weights(cfg.weights)
    for m in cfg.models:  # an unknown model or a missing extra is bad input, whatever the data sets' tasks
        if m not in MODELS:
            check_models([m], "classification")
        check_models([m], next(iter(MODELS[m])), weights)
    entries = [load_entry(spec, cfg, weights) for spec in cfg.datasets]  # all bad input surfaces before any fit
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise UsageError(f"--datasets names a data set twice: {', '.join(names)}")
    out = Path(cfg.out)
    jobs = [(e, m, n, s) for s in cfg.seeds for n in sorted({n for e in entries for n in e.sizes})
            for e in entries if n in e.sizes for m in e.models]
    deadline = time.monotonic() + 60 * cfg.time_budget if cfg.time_budget > 0 else None
    cells: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    fitted = skipped = 0
    bar = progress(jobs, desc="tabular-bench", unit="cell")
    for e, m, n, s in bar:
        kw = model_overrides(m, n, None, weights, cfg.device, e.ds.task)
        if m in ("mlp", "mlp_ple"):
            kw["num_threads"] = cfg.threads  # torch's own pool, which threadpoolctl does not govern
        key = cell_key(e, m, {k: v for k, v in kw.items() if k != "device"}, cfg)
        path = out / "cells" / e.name / m / f"n{n}_s{s}.json"
        old = read_json(path) if path.is_file() else None
        if old and old.get("key") == key:
            cells[(e.name, m, n, s)] = old
            continue
        if deadline is not None and time.monotonic() > deadline:
            skipped += 1
            continue
        bar.set_postfix_str(f"{e.name} {m} n={n} seed={s}")
        Xp, yp, Xt, yt = e.split
        cell = {"key": key, "dataset": e.name, "model": m, "size": n, "seed": s,
                **fit_cell(e.ds, m, Xp, yp, Xt, yt, n, s, kw, threads=cfg.threads)}
        write_json(path, cell)
        cells[(e.name, m, n, s)] = cell
        fitted += 1
    result = summarize(entries, cells, cfg)
    result.update(cells_fitted_now=fitted, cells_left=skipped, complete=skipped == 0)
    write_json(out / "bench.json", result)
    atomic_write_text(out / "bench.md", format_report(result) + "\n")
    from scalelab.tabular.plots import plot_bench

    plot_bench(result, out / "bench.png")
    return result


def _errors(e: Entry, m: str, cells: dict, seeds: list[int]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Sizes where every seed is done, with (n_sizes, n_seeds) scores and fit seconds."""
    sizes = [n for n in e.sizes if all((e.name, m, n, s) in cells for s in seeds)]
    shape = (len(sizes), len(seeds))
    scores = np.array([[cells[(e.name, m, n, s)]["score"] for s in seeds] for n in sizes]).reshape(shape)
    secs = np.array([[cells[(e.name, m, n, s)]["fit_seconds"] for s in seeds] for n in sizes]).reshape(shape)
    return sizes, scores, secs


def summarize(entries: list[Entry], cells: dict, cfg: BenchConfig) -> dict[str, Any]:
    seeds = list(cfg.seeds)
    datasets: dict[str, Any] = {}
    for e in entries:
        task = e.ds.task
        per_model: dict[str, Any] = {}
        boots: dict[str, Any] = {}
        for m in e.models:
            sizes, scores, secs = _errors(e, m, cells, seeds)
            errs = np.array([[error(task, v) for v in row] for row in scores]).reshape(scores.shape)
            fit = fit_power_law(sizes, errs.mean(1)) if len(sizes) >= 3 else None
            boots[m] = bootstrap_fits(sizes, errs, cfg.n_boot) if fit else []
            floor = fit.floor if fit else None
            per_model[m] = {"family": FAMILY[m], "sizes": sizes, "mean": scores.mean(1).tolist() if sizes else [],
                            "std": scores.std(1).tolist() if sizes else [],
                            "fit_seconds": secs.mean(1).tolist() if sizes else [],
                            "errors": errs.tolist(), "fit": fit.to_dict() if fit else None,
                            "fitted_floor_error": floor,
                            "fitted_floor_score": None if floor is None else (1 - floor if task == "classification"
                                                                              else floor)}
        datasets[e.name] = {"spec": e.spec, "source": e.ds.source, "task": task,
                            "metric": "accuracy" if task == "classification" else "mse",
                            "n_train_pool": len(e.split[1]), "n_test": len(e.split[3]), "sizes": e.sizes,
                            "floor": e.ds.floor, "models": per_model,
                            "families": representatives(per_model, task),
                            "crossovers": family_crossovers(per_model, boots, task)}
    return {"config": to_dict(cfg), "datasets": datasets, "normalised": normalised_scores(datasets),
            "fit_time": fit_times(datasets)}


def representatives(per_model: dict[str, Any], task: str) -> dict[str, str]:
    """family -> its member with the best mean score over the sizes it finished (the family's curve here)."""
    sign = 1.0 if task == "classification" else -1.0
    best: dict[str, tuple[float, str]] = {}
    for m, s in per_model.items():
        if not s["sizes"]:
            continue
        v = sign * float(np.mean(s["mean"]))
        if s["family"] not in best or v > best[s["family"]][0]:
            best[s["family"]] = (v, m)
    return {f: m for f, (_, m) in best.items()}


def family_crossovers(per_model: dict[str, Any], boots: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """For each pair of families (their representatives): who is better at the smallest and largest size, and where
    the fitted curves cross, with the bootstrap interval."""
    reps = representatives(per_model, task)
    rows = []
    for fa, fb in combinations(sorted(reps), 2):
        a, b = per_model[reps[fa]], per_model[reps[fb]]
        if a["sizes"] != b["sizes"] or len(a["sizes"]) < 3 or not a["fit"] or not b["fit"]:
            continue
        sizes = a["sizes"]
        ea, eb = np.asarray(a["errors"]).mean(1), np.asarray(b["errors"]).mean(1)
        fit_a, fit_b = fit_power_law(sizes, ea), fit_power_law(sizes, eb)
        ab = crossover_interval(sizes, fit_a, fit_b, boots[reps[fa]], boots[reps[fb]])
        ba = crossover_interval(sizes, fit_b, fit_a, boots[reps[fb]], boots[reps[fa]])
        if ab["n"] is not None or (ba["n"] is None and ab["found"] >= ba["found"]):
            winner, loser, cross = fa, fb, ab
        else:
            winner, loser, cross = fb, fa, ba
        rows.append({"families": [fa, fb], "models": [reps[fa], reps[fb]],
                     "better_at_smallest": fa if ea[0] < eb[0] else fb,
                     "better_at_largest": fa if ea[-1] < eb[-1] else fb,
                     "overtaker": winner, "overtaken": loser, "crossover_n": cross["n"],
                     "interval": [cross["low"], cross["high"]], "found": cross["found"]})
    return rows


def normalised_scores(datasets: dict[str, Any]) -> dict[str, Any]:
    """Per size: every model's and family's score normalised per data set (best 1, worst 0), averaged over sets."""
    by_model: dict[str, dict[int, list[float]]] = {}
    by_family: dict[str, dict[int, list[float]]] = {}
    for d in datasets.values():
        sign = 1.0 if d["task"] == "classification" else -1.0
        reps = d["families"]
        for n in d["sizes"]:
            here = {m: sign * s["mean"][s["sizes"].index(n)] for m, s in d["models"].items() if n in s["sizes"]}
            if len(here) < 2:
                continue
            lo, hi = min(here.values()), max(here.values())
            for m, v in here.items():
                z = (v - lo) / (hi - lo) if hi > lo else 1.0
                by_model.setdefault(m, {}).setdefault(n, []).append(z)
                if reps.get(FAMILY[m]) == m:
                    by_family.setdefault(FAMILY[m], {}).setdefault(n, []).append(z)

    def collapse(table: dict[str, dict[int, list[float]]]) -> dict[str, Any]:
        return {k: {"sizes": sorted(v), "mean": [float(np.mean(v[n])) for n in sorted(v)],
                    "n_datasets": [len(v[n]) for n in sorted(v)]} for k, v in table.items()}

    return {"models": collapse(by_model), "families": collapse(by_family)}


def fit_times(datasets: dict[str, Any]) -> dict[str, Any]:
    """Per model: mean fit seconds at each data set's largest finished size, and the total over all its cells."""
    out: dict[str, Any] = {}
    for name, d in datasets.items():
        for m, s in d["models"].items():
            if not s["sizes"]:
                continue
            row = out.setdefault(m, {"at_largest": {}, "total_seconds": 0.0})
            row["at_largest"][name] = {"size": s["sizes"][-1], "seconds": s["fit_seconds"][-1]}
            row["total_seconds"] += float(np.sum(s["fit_seconds"])) * len(d["models"][m]["errors"][0])
    return out


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def format_report(result: dict[str, Any]) -> str:
    """Markdown: scores at the smallest and largest size per data set, crossovers, floors, fit times."""
    lines = ["# tabular-bench", "", "Mean test score over seeds (accuracy, or MSE for regression) at the smallest / "
             "largest size; fitted floor (the power law's E as a score) where the fit converged.", ""]
    models = sorted({m for d in result["datasets"].values() for m in d["models"]}, key=lambda m: (FAMILY[m], m))
    lines.append("| data set | sizes | " + " | ".join(models) + " |")
    lines.append("|---|---|" + "---|" * len(models))
    for name, d in result["datasets"].items():
        cells = []
        for m in models:
            s = d["models"].get(m)
            if not s or not s["sizes"]:
                cells.append("")
                continue
            cells.append(f"{s['mean'][0]:.3f} / {s['mean'][-1]:.3f}")
        lines.append(f"| {name} | {d['sizes'][0]:,}-{d['sizes'][-1]:,} | " + " | ".join(cells) + " |")
    lines += ["", "## Crossovers between families (fitted curves; 90% interval over seed resamples)", "",
              "| data set | pair | better at smallest | better at largest | overtakes | at n | interval | found |",
              "|---|---|---|---|---|---|---|---|"]
    for name, d in result["datasets"].items():
        for c in d["crossovers"]:
            pair = " vs ".join(f"{f} ({m})" for f, m in zip(c["families"], c["models"]))
            lo, hi = c["interval"]
            over = f"{c['overtaker']} over {c['overtaken']}" if c["crossover_n"] is not None else "no crossing"
            lines.append(f"| {name} | {pair} | {c['better_at_smallest']} | {c['better_at_largest']} | {over} | "
                         f"{_n(c['crossover_n'])} | {_n(lo)}-{_n(hi)} | {c['found']:.0%} |")
    lines += ["", "## Fitted floors (err(n) = E + A n^-a) against the known floor", "",
              "| data set | known floor | model | fitted floor | exponent a | last score |",
              "|---|---|---|---|---|---|"]
    for name, d in result["datasets"].items():
        for m, s in d["models"].items():
            if s["fit"] is None:
                continue
            known = "-" if d["floor"] is None else f"{d['floor']:.4f}"
            lines.append(f"| {name} | {known} | {m} | {s['fitted_floor_score']:.4f} | {s['fit']['exponent']:.2f} | "
                         f"{s['mean'][-1]:.4f} |")
    lines += ["", "## Fit time (seconds, mean over seeds, at each data set's largest size)", "",
              "| model | " + " | ".join(result["datasets"]) + " | total |",
              "|---|" + "---|" * (len(result["datasets"]) + 1)]
    for m, row in result["fit_time"].items():
        cols = [f"{row['at_largest'][n]['seconds']:.2f}" if n in row["at_largest"] else "" for n in result["datasets"]]
        lines.append(f"| {m} | " + " | ".join(cols) + f" | {row['total_seconds']:.0f} |")
    if not result.get("complete", True):
        lines += ["", f"Incomplete: {result['cells_left']} cells left by the time budget; rerun to finish them."]
    return "\n".join(lines)
