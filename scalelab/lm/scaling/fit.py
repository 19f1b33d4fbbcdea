"""Scaling-law fits: L(N, D) = E + A / N^alpha + B / D^beta, IsoFLOP parabolas, bootstrap intervals, held-out check.

(a) The parametric law, as Hoffmann et al. 2022 (approach 3) with the corrections of Besiroglu et al. 2024: minimise
the Huber loss (delta 1e-3) between the log of the predicted and the observed loss, with the prediction written as a
log-sum-exp, ``log L = LSE(a - alpha log N, b - beta log D, e)`` (A = e^a, B = e^b, E = e^e), by L-BFGS-B with an
analytic gradient and tight tolerances (Besiroglu et al. traced Hoffmann's implausibly narrow intervals to an
optimiser stopped early) from every point of a grid of starting values, keeping the best. Intervals come from a
bootstrap over the runs (resample the points with replacement, refit from the main fit's best few starts).

(b) IsoFLOP: per compute budget, a parabola in log N through that budget's losses gives the loss-optimal N*(C)
(the runs' D*(C) = C / flops_per_token(N*)); power laws N* ~ C^a and D* ~ C^b are straight lines in log-log.

    fit = fit_law(N, D, L)                      # {"E", "A", "B", "alpha", "beta", "at_bound", ...}
    ci = bootstrap_law(N, D, L, fit, n_boot=200)
    iso = isoflop_minima(points)                # per budget: N*, D*, L*
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize

PARAMS = ("a", "b", "e", "alpha", "beta")
# Hoffmann et al. 2022's initialisation grid (Besiroglu et al. 2024 use the same ranges); its e values suit losses of
# a few nats per token, so fit_law puts E's starts relative to the smallest observed loss instead (E_FRACTIONS)
GRID = {"a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        "e": (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5), "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
        "beta": (0.0, 0.5, 1.0, 1.5, 2.0)}
E_FRACTIONS = (0.02, 0.1, 0.3, 0.6, 0.85, 0.97)
BOUNDS = {"a": (-20.0, 60.0), "b": (-20.0, 60.0), "e": (-12.0, 5.0), "alpha": (0.0, 3.0), "beta": (0.0, 3.0)}
MIN_POINTS_LAW = 6  # five free constants need more points than constants to leave a residual
MIN_SIZES_PARABOLA = 3
PUBLISHED = {"chinchilla": {"alpha": 0.34, "beta": 0.28, "source": "Hoffmann et al. 2022, approach 3"},
             "epoch_ai": {"alpha": 0.3478, "beta": 0.3658, "source": "Besiroglu et al. 2024 (Epoch AI refit)"}}


class TooFewPoints(ValueError):
    """A fit was asked for with fewer points than it needs; the message says how many."""


# ----------------------------------------------------------------------------------------------- the law

def law(N: Any, D: Any, E: float, A: float, B: float, alpha: float, beta: float) -> np.ndarray:
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    return E + A / N**alpha + B / D**beta


def _objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Huber(log L_pred - log L) summed (divided by delta, which keeps the optimiser's tolerances meaningful)."""
    f, g = _batched_objective(theta[None, :], logN, logD, logL, delta)
    return float(f[0]), g[0]


def _starts(grid: dict[str, Sequence[float]] | None = None) -> np.ndarray:
    g = grid or GRID
    return np.array(list(itertools.product(*(g[p] for p in PARAMS))), dtype=float)


def _coarse(starts: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float,
            steps: int = 200, lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Every start at once: ``steps`` of Adam on the same objective, clipped to the box (vectorised over starts, so
    the whole grid is explored at the cost of a few L-BFGS runs); returns the end points and their objectives."""
    x = starts.copy()
    lo = np.array([BOUNDS[p][0] for p in PARAMS])
    hi = np.array([BOUNDS[p][1] for p in PARAMS])
    m, v = np.zeros_like(x), np.zeros_like(x)
    for t in range(1, steps + 1):
        f, g = _batched_objective(x, logN, logD, logL, delta)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        x = np.clip(x - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-12), lo, hi)
    f, _ = _batched_objective(x, logN, logD, logL, delta)
    return x, f


def _batched_objective(X: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                       delta: float) -> tuple[np.ndarray, np.ndarray]:
    """``_objective`` for a batch of parameter vectors X (S, 5): objectives (S,) and gradients (S, 5)."""
    a, b, e, alpha, beta = (X[:, i:i + 1] for i in range(5))
    u0, u1 = a - alpha * logN, b - beta * logD  # (S, n); the third term is e
    m = np.maximum(np.maximum(u0, u1), e)
    w0, w1, w2 = np.exp(u0 - m), np.exp(u1 - m), np.exp(e - m)
    z = w0 + w1 + w2
    pred = m + np.log(z)  # log-sum-exp, written out: scipy's is slower on these small arrays
    w = (w0 / z, w1 / z, w2 / z)  # softmax weights: d pred / d u
    r = pred - logL
    quad = np.abs(r) <= delta
    f = np.where(quad, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1) / delta
    g_r = np.where(quad, r, delta * np.sign(r)) / delta
    grad = np.stack([(g_r * w[0]).sum(1), (g_r * w[1]).sum(1), (g_r * w[2]).sum(1),
                     -(g_r * w[0] * logN).sum(1), -(g_r * w[1] * logD).sum(1)], axis=1)
    return f, grad


def _optimise(starts: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
              delta: float) -> list[tuple[float, np.ndarray]]:
    bounds = [BOUNDS[p] for p in PARAMS]
    out = []
    for x0 in starts:
        res = minimize(_objective, x0, args=(logN, logD, logL, delta), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-10})
        if np.all(np.isfinite(res.x)) and math.isfinite(res.fun):
            out.append((float(res.fun), res.x))
    out.sort(key=lambda t: t[0])
    return out


def _unpack(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def _at_bound(theta: np.ndarray, tol: float = 1e-3) -> list[str]:
    hit = []
    for name, v in zip(PARAMS, theta):
        lo, hi = BOUNDS[name]
        if v - lo < tol * (hi - lo) or hi - v < tol * (hi - lo):
            hit.append({"a": "A", "b": "B", "e": "E"}.get(name, name))
    return hit


def fit_law(N: Sequence[float], D: Sequence[float], L: Sequence[float], delta: float = 1e-3,
            grid: dict[str, Sequence[float]] | None = None, keep_starts: int = 2,
            refine: int = 12) -> dict[str, Any]:
    """Fit E, A, B, alpha, beta to losses ``L`` (> 0) at parameters ``N`` and tokens ``D``.

    Every start of the grid is first improved by a vectorised Adam pass; the ``refine`` best end points then go to
    L-BFGS-B with tight tolerances. Returns the constants, the Huber objective, the residuals' RMS in log-loss,
    which constants ended at a bound of the search box (``at_bound``), and the best ``keep_starts`` starting points
    (the bootstrap refits from them).
    """
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    if len(L) < MIN_POINTS_LAW:
        raise TooFewPoints(f"the L(N, D) fit needs at least {MIN_POINTS_LAW} points (5 constants), got {len(L)}")
    if np.any(L <= 0) or np.any(N <= 0) or np.any(D <= 0):
        raise ValueError("losses, parameter counts and token counts must all be positive")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    # the whole grid, coarsely and all at once; then L-BFGS-B to convergence from the best ``refine`` end points
    g = dict(grid or GRID)
    if grid is None:
        g["e"] = tuple(float(np.log(L.min() * q)) for q in E_FRACTIONS)
    ends, f = _coarse(_starts(g), logN, logD, logL, delta)
    order = np.argsort(np.where(np.isfinite(f), f, np.inf))
    results = _optimise(ends[order[:refine]], logN, logD, logL, delta)
    if not results:
        raise ValueError("the L(N, D) fit failed from every starting point")
    best_f, best = results[0]
    pred = law(N, D, **_unpack(best))
    out = {**_unpack(best), "objective": best_f, "rms_log_residual": float(np.sqrt(np.mean((np.log(pred) - logL)**2))),
           "at_bound": _at_bound(best), "n_points": int(len(L)), "delta": delta,
           "starts": [r[1].tolist() for r in results[:keep_starts]]}
    return out


def bootstrap_law(N: Sequence[float], D: Sequence[float], L: Sequence[float], fit: dict[str, Any],
                  n_boot: int = 200, seed: int = 0, delta: float = 1e-3, level: float = 0.95) -> dict[str, Any]:
    """Percentile intervals of each constant (and of the compute-optimal exponents) over ``n_boot`` resamples of the
    runs; each resample is refitted from the main fit's best starting points."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    rng = np.random.default_rng(seed)
    starts = np.array(fit["starts"], dtype=float)
    samples: list[dict[str, float]] = []
    bound_hits = 0
    for _ in range(n_boot):
        idx = rng.integers(0, len(L), len(L))
        if len(np.unique(idx)) < MIN_POINTS_LAW:
            continue
        res = _optimise(starts, np.log(N[idx]), np.log(D[idx]), np.log(L[idx]), delta)
        if not res:
            continue
        theta = res[0][1]
        bound_hits += bool(_at_bound(theta))
        s = _unpack(theta)
        s.update(optimal_exponents(s["alpha"], s["beta"]))
        samples.append(s)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    keys = ("E", "A", "B", "alpha", "beta", "a", "b")
    ci = {k: [float(np.quantile([s[k] for s in samples], lo_q)), float(np.quantile([s[k] for s in samples], hi_q))]
          for k in keys} if samples else {}
    return {"level": level, "n_boot": len(samples), "intervals": ci, "resamples_at_bound": bound_hits}


def optimal_exponents(alpha: float, beta: float) -> dict[str, float]:
    """Under C = 6ND the law's compute-optimal N* ~ C^a, D* ~ C^b with a = beta / (alpha + beta), b = 1 - a."""
    s = alpha + beta
    if s <= 0:
        return {"a": float("nan"), "b": float("nan")}
    return {"a": beta / s, "b": alpha / s}


def e_verdict(fit: dict[str, Any], boot: dict[str, Any], max_rel_width: float) -> dict[str, Any]:
    """Whether the points pin E down: not at a bound of the search, and a bootstrap interval narrower than
    ``max_rel_width`` of E. When they do not, ``E`` is None and ``why`` says what failed."""
    ci = (boot.get("intervals") or {}).get("E")
    why = []
    if "E" in fit["at_bound"]:
        why.append("the fitted E sits at a bound of the search")
    if ci is None:
        why.append("no bootstrap interval")
    else:
        width = (ci[1] - ci[0]) / max(fit["E"], 1e-12)
        if width > max_rel_width:
            why.append(f"its {100 * boot['level']:.0f}% interval [{ci[0]:.4g}, {ci[1]:.4g}] is {100 * width:.0f}% of "
                       f"E wide (limit {100 * max_rel_width:.0f}%)")
    return {"pinned": not why, "E": None if why else fit["E"], "interval": ci, "why": "; ".join(why) or None}


# ----------------------------------------------------------------------------------------------- IsoFLOP

def parabola_minimum(logN: np.ndarray, L: np.ndarray) -> dict[str, Any]:
    """Least-squares parabola L = c2 (log N)^2 + c1 log N + c0; its minimum, and whether it is a minimum inside
    the sampled range (a flat or upside-down parabola, or a vertex outside, is flagged, not extrapolated)."""
    if len(L) < MIN_SIZES_PARABOLA:
        raise TooFewPoints(f"a parabola in log N needs at least {MIN_SIZES_PARABOLA} model sizes, got {len(L)}")
    c2, c1, c0 = np.polyfit(logN, L, 2)
    if c2 <= 0:
        i = int(np.argmin(L))
        return {"logN": float(logN[i]), "L": float(L[i]), "coef": [c2, c1, c0], "inside": False,
                "note": "no curvature: the smallest measured loss is used"}
    x = -c1 / (2 * c2)
    inside = bool(logN.min() <= x <= logN.max())
    if not inside:
        x = float(np.clip(x, logN.min(), logN.max()))
    return {"logN": float(x), "L": float(np.polyval([c2, c1, c0], x)), "coef": [float(c2), float(c1), float(c0)],
            "inside": inside, "note": None if inside else "the vertex lies outside the sizes run; clipped to the edge"}


def isoflop_minima(points: list[dict[str, Any]], loss_key: str = "val_bpb", n_key: str = "params") -> list[dict]:
    """Per budget: the parabola's N*, the loss there, and D* = C / (flops per token at N*, interpolated in log)."""
    out = []
    for C in sorted({p["budget"] for p in points}):
        rows = sorted((p for p in points if p["budget"] == C), key=lambda p: p[n_key])
        logN = np.log([p[n_key] for p in rows])
        L = np.array([p[loss_key] for p in rows])
        par = parabola_minimum(logN, L)
        fpt = float(np.exp(np.interp(par["logN"], logN, np.log([p["flops_per_token"] for p in rows]))))
        out.append({"budget": C, "N_opt": math.exp(par["logN"]), "D_opt": C / fpt, "L_opt": par["L"],
                    "tokens_per_param": C / fpt / math.exp(par["logN"]), "inside": par["inside"],
                    "note": par["note"], "coef": par["coef"], "sizes": len(rows)})
    return out


def power_law(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """y = k x^p by least squares in log-log; ``p`` with its standard error."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    if len(lx) < 2:
        raise TooFewPoints(f"a power law needs at least 2 budgets, got {len(lx)}")
    A = np.vstack([lx, np.ones_like(lx)]).T
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    p, logk = float(coef[0]), float(coef[1])
    se = float("nan")
    if len(lx) > 2:
        resid = ly - A @ coef
        s2 = float(resid @ resid) / (len(lx) - 2)
        se = math.sqrt(s2 / float(((lx - lx.mean())**2).sum()))
    return {"exponent": p, "coefficient": math.exp(logk), "stderr": se}


def isoflop_laws(minima: list[dict[str, Any]]) -> dict[str, Any]:
    """N*(C) ~ C^a and D*(C) ~ C^b from the per-budget minima, and the mean tokens per parameter there."""
    C = [m["budget"] for m in minima]
    return {"N_opt": power_law(C, [m["N_opt"] for m in minima]), "D_opt": power_law(C, [m["D_opt"] for m in minima]),
            "tokens_per_param": [m["tokens_per_param"] for m in minima]}


# ----------------------------------------------------------------------------------------------- allocation

def best_allocation(fit: dict[str, float], C: float, flops_per_token, candidates: Sequence[float]) -> dict[str, float]:
    """The candidate N (with ``flops_per_token(N)``) minimising the law's loss at compute ``C``; D = C / fpt(N)."""
    best = None
    for n in candidates:
        d = C / flops_per_token(n)
        loss = float(law(n, d, fit["E"], fit["A"], fit["B"], fit["alpha"], fit["beta"]))
        if best is None or loss < best["L"]:
            best = {"N": float(n), "D": float(d), "L": loss}
    if best is None:
        raise ValueError("no candidate model sizes")
    return best
