"""Learning-curve fits: test error as a power law in the training-set size plus a floor, and crossovers from them.

    from scalelab.tabular.fits import fit_power_law, crossover_from_fits, bootstrap_crossover
    fit = fit_power_law(sizes, errors)              # err(n) = E + A * n**-alpha, E the estimated floor
    n_x = crossover_from_fits(fit_mlp, fit_svm, lo=25, hi=20000)
    bootstrap_crossover(sizes, errs_mlp, errs_svm)  # errs: (n_sizes, n_seeds) -> {n, low, high, found}

Error is 1 - accuracy for classification and the MSE for regression. The fit is least squares in log error (small
errors matter as much as large ones) with E bounded to [0, the smallest error seen], so the floor cannot sit above
the data. The crossover of two fitted curves is where their difference changes sign inside the measured range:
reading it off a smooth fit instead of the first grid point where the seed means cross keeps one noisy point from
moving it by a grid step. Its interval comes from refitting on bootstrap resamples of the seeds at every size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit


@dataclass
class PowerLawFit:
    """err(n) = floor + scale * n**-exponent, fitted on ``n_points`` sizes."""

    floor: float
    scale: float
    exponent: float
    n_points: int
    rmse_log: float  # root-mean-square residual in log error

    def __call__(self, n: Any) -> np.ndarray:
        return self.floor + self.scale * np.asarray(n, dtype=np.float64) ** -self.exponent

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _model(log_n: np.ndarray, floor: float, log_scale: float, exponent: float) -> np.ndarray:
    return np.log(floor + np.exp(log_scale - exponent * log_n))


def fit_power_law(sizes: Any, errors: Any) -> PowerLawFit | None:
    """Fit err(n) = E + A n^-a to mean errors at each size (None with fewer than 3 sizes or a failed fit)."""
    n = np.asarray(sizes, dtype=np.float64)
    e = np.clip(np.asarray(errors, dtype=np.float64), 1e-9, None)
    if len(n) < 3 or len(n) != len(e):
        return None
    log_n, log_e = np.log(n), np.log(e)
    e_min = float(e.min())
    best = None
    # a few starting floors: the fit is non-convex in (E, a), and a floor near the last error is a different basin
    for f0 in (0.0, 0.5 * e_min, 0.9 * e_min):
        slope = -np.polyfit(log_n, np.log(np.clip(e - f0, 1e-9, None)), 1)[0]
        a0 = float(np.clip(slope, 0.05, 2.0))
        s0 = float(np.log(max(e[0] - f0, 1e-9)) + a0 * log_n[0])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                p, _ = curve_fit(_model, log_n, log_e, p0=[f0, s0, a0], maxfev=20000,
                                 bounds=([0.0, -50.0, 0.01], [e_min, 50.0, 3.0]))
        except (RuntimeError, ValueError):
            continue
        rmse = float(np.sqrt(np.mean((_model(log_n, *p) - log_e) ** 2)))
        if best is None or rmse < best[1] - 1e-12:
            best = (p, rmse)
    if best is None:
        return None
    (floor, log_scale, exponent), rmse = best
    return PowerLawFit(float(floor), float(math.exp(log_scale)), float(exponent), len(n), rmse)


def crossover_from_fits(a: PowerLawFit, b: PowerLawFit, lo: float, hi: float,
                        from_start: bool = False) -> float | None:
    """The size in [lo, hi] where fitted curve ``a`` goes from worse (higher error) than ``b`` to better, and stays
    better up to ``hi``; None when ``a`` is not better at ``hi``. When ``a`` is better all along: ``lo`` with
    ``from_start``, else None (no crossing to report)."""
    grid = np.geomspace(lo, hi, 400)
    diff = a(grid) - b(grid)  # > 0: a is worse
    if diff[-1] >= 0:
        return None
    if not (diff > 0).any():
        return float(lo) if from_start else None
    last_worse = int(np.nonzero(diff > 0)[0][-1])
    n0, n1 = grid[last_worse], grid[last_worse + 1]
    d0, d1 = diff[last_worse], diff[last_worse + 1]
    # interpolate the sign change in log n
    t = d0 / (d0 - d1)
    return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))


def bootstrap_fits(sizes: Any, errors: Any, n_boot: int = 200, seed: int = 0) -> list[PowerLawFit | None]:
    """Fits to ``n_boot`` resamples of the seeds: at every size, draw the seeds' errors with replacement and refit the
    mean. ``errors`` is (n_sizes, n_seeds). The same ``seed`` draws the same seed indices for every model with the
    same shape, so two models' resamples stay paired (a seed's training rows are shared by all models)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    err = np.asarray(errors, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        pick = rng.integers(0, err.shape[1], err.shape)
        out.append(fit_power_law(sizes, np.take_along_axis(err, pick, 1).mean(1)))
    return out


def crossover_interval(sizes: Any, fit_a: PowerLawFit | None, fit_b: PowerLawFit | None,
                       boots_a: list[PowerLawFit | None], boots_b: list[PowerLawFit | None]) -> dict[str, Any]:
    """Crossover of ``a`` over ``b`` (fits to the seed means) with a 90% interval over paired bootstrap fits.

    Returns {"n": the point estimate or None, "low", "high": 5th and 95th percentiles over the resamples that have a
    crossover, "found": the fraction of resamples that have one}.
    """
    lo, hi = float(np.min(sizes)), float(np.max(sizes))
    point = crossover_from_fits(fit_a, fit_b, lo, hi) if fit_a and fit_b else None
    xs = [crossover_from_fits(a, b, lo, hi) if a and b else None for a, b in zip(boots_a, boots_b)]
    hits = np.array([x for x in xs if x is not None])
    return {"n": point, "low": float(np.percentile(hits, 5)) if len(hits) else None,
            "high": float(np.percentile(hits, 95)) if len(hits) else None,
            "found": float(len(hits) / max(len(xs), 1))}


def bootstrap_crossover(sizes: Any, errors_a: Any, errors_b: Any, n_boot: int = 200,
                        seed: int = 0) -> dict[str, Any]:
    """``crossover_interval`` from raw (n_sizes, n_seeds) errors of two models."""
    ea, eb = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    return crossover_interval(sizes, fit_power_law(sizes, ea.mean(1)), fit_power_law(sizes, eb.mean(1)),
                              bootstrap_fits(sizes, ea, n_boot, seed), bootstrap_fits(sizes, eb, n_boot, seed))


def crossover_vs_all(sizes: Any, fit: PowerLawFit | None, boots: list[PowerLawFit | None],
                     others: list[tuple[PowerLawFit | None, list[PowerLawFit | None]]]) -> dict[str, Any]:
    """The size from which one model's fitted curve stays below every other model's (the latest of its pairwise
    crossovers; the smallest size when it is best all along), with the same bootstrap interval as
    ``crossover_interval``. ``others`` holds (fit, bootstrap fits) per other model."""
    lo, hi = float(np.min(sizes)), float(np.max(sizes))

    def latest(a: PowerLawFit | None, bs: list[PowerLawFit | None]) -> float | None:
        xs = []
        for b in bs:
            x = crossover_from_fits(a, b, lo, hi, from_start=True) if a and b else None
            if x is None:
                return None
            xs.append(x)
        return max(xs) if xs else None

    point = latest(fit, [f for f, _ in others])
    xs = [latest(boots[i], [bs[i] for _, bs in others]) for i in range(len(boots))]
    hits = np.array([x for x in xs if x is not None])
    return {"n": point, "low": float(np.percentile(hits, 5)) if len(hits) else None,
            "high": float(np.percentile(hits, 95)) if len(hits) else None,
            "found": float(len(hits) / max(len(xs), 1))}
