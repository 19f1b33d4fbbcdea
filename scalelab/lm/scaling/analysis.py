"""From finished sweep points to ``scaling.json``: the L(N, D) fit with intervals, the IsoFLOP minima and laws, a
held-out prediction, the exact-entropy check (synthetic source) and the n-gram vs Transformer learning curves.

Every fit is on bits per byte (a tokenizer-independent unit, and the unit of the synthetic source's exact entropy);
N is ``fit_params`` (non-embedding by default: the parameters that cost FLOPs) and D the tokens trained on.

    from scalelab.lm.scaling.analysis import analyse
    result = analyse(cfg, sweep)       # sweep = run_sweep(cfg); also writes <out>/scaling.json
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.common import print0, write_json
from scalelab.lm.data.loader import load_meta, load_token_bytes, open_tokens
from scalelab.lm.scaling import fit as F
from scalelab.lm.scaling.ngram import KneserNey, bits_per_byte
from scalelab.lm.scaling.sweep import ScalingConfig, context_source, point_dir, truth
from scalelab.runs import RunDir


def _n(p: dict[str, Any], cfg: ScalingConfig) -> float:
    return float(p["params_non_embedding"] if cfg.fit_params == "non_embedding" else p["params"])


def law_fit(cfg: ScalingConfig, pts: list[dict[str, Any]], boot: bool = True) -> dict[str, Any]:
    """The L(N, D) fit (or ``{"error": ...}`` saying how many points it needs) with bootstrap intervals."""
    N = [_n(p, cfg) for p in pts]
    D = [p["tokens"] for p in pts]
    L = [p["val_bpb"] for p in pts]
    try:
        fit = F.fit_law(N, D, L)
    except F.TooFewPoints as e:
        return {"error": str(e)}
    out: dict[str, Any] = {k: fit[k] for k in ("E", "A", "B", "alpha", "beta", "rms_log_residual", "at_bound",
                                               "n_points", "delta")}
    out.update(F.optimal_exponents(fit["alpha"], fit["beta"]))
    if boot:
        b = F.bootstrap_law(N, D, L, fit, n_boot=cfg.n_boot, seed=cfg.seed)
        out["bootstrap"] = b
        out["E_verdict"] = F.e_verdict(fit, b, cfg.e_max_rel_width)
    return out


def holdout(cfg: ScalingConfig, pts: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit on every budget but the largest; predict the best loss among the largest budget's runs."""
    budgets = sorted({p["budget"] for p in pts})
    if len(budgets) < 2:
        return {"error": f"a held-out prediction needs at least 2 budgets, got {len(budgets)}"}
    top = budgets[-1]
    train_pts = [p for p in pts if p["budget"] < top]
    test_pts = [p for p in pts if p["budget"] == top]
    fit = law_fit(cfg, train_pts, boot=False)
    if "error" in fit:
        return {"error": f"fit on the smaller budgets: {fit['error']}"}
    pred = {p["name"]: float(F.law(_n(p, cfg), p["tokens"], fit["E"], fit["A"], fit["B"], fit["alpha"],
                                   fit["beta"])) for p in test_pts}
    best_pred_name = min(pred, key=pred.get)
    best_meas = min(test_pts, key=lambda p: p["val_bpb"])
    errs = [abs(pred[p["name"]] - p["val_bpb"]) / p["val_bpb"] for p in test_pts]
    return {"held_out_budget": top, "fit": {k: fit[k] for k in ("E", "A", "B", "alpha", "beta")},
            "predicted_best_bpb": pred[best_pred_name], "predicted_best_point": best_pred_name,
            "measured_best_bpb": best_meas["val_bpb"], "measured_best_point": best_meas["name"],
            "relative_error": (pred[best_pred_name] - best_meas["val_bpb"]) / best_meas["val_bpb"],
            "mean_abs_relative_error_per_point": float(np.mean(errs)),
            "per_point": {p["name"]: {"predicted": pred[p["name"]], "measured": p["val_bpb"]} for p in test_pts}}


def isoflop(pts: list[dict[str, Any]], n_key: str) -> dict[str, Any]:
    try:
        minima = F.isoflop_minima(pts, n_key=n_key)
    except F.TooFewPoints as e:
        return {"error": str(e)}
    out: dict[str, Any] = {"minima": minima}
    if len(minima) >= 2:
        out["laws"] = F.isoflop_laws(minima)
    else:
        out["laws_error"] = f"N*(C) and D*(C) need at least 2 budgets, got {len(minima)}"
    return out


# ----------------------------------------------------------------------------------------------- n-gram baseline

def training_stream(cfg: ScalingConfig, p: dict[str, Any], tokens: int) -> np.ndarray:
    """The windows the Transformer at point ``p`` trains on, in order, up to one pass over the training split:
    (rows, seq_len + 1) token ids. A count model learns nothing from text it has seen, and a later pass's shifted
    windows would count the same text twice (which also skews Kneser-Ney's discounts)."""
    src = context_source(cfg, p).base
    rows = []
    per_step = cfg.batch_size * cfg.seq_len
    steps = max(1, min(tokens // per_step, -(-src.num_windows // cfg.batch_size)))
    for step in range(steps):
        x, y = src.next_batch(step, 0)
        rows.append(np.concatenate([x.numpy(), y[:, -1:].numpy()], axis=1))
    return np.concatenate(rows)[:src.num_windows]


def ngram_curve(cfg: ScalingConfig, pts: list[dict[str, Any]], size: str) -> dict[str, Any]:
    """Kneser-Ney bits per byte at each D the Transformer of ``size`` ran, on its exact training stream; the
    Transformer's curve; the crossover D (below it the n-gram model is better)."""
    tf = sorted((p for p in pts if p["size"] == size), key=lambda p: p["tokens"])
    if not tf:
        return {"error": f"no finished points of size {size}"}
    run = RunDir(point_dir(cfg, tf[0]["name"]))
    meta = load_meta(run)
    vocab = int(meta["vocab_size"])
    token_bytes = load_token_bytes(run, vocab)
    val_span = context_source(cfg, tf[0]).val_span()
    val = np.asarray(open_tokens(run, "val", meta)[:val_span], dtype=np.int64)
    curves: dict[str, list[float]] = {str(o): [] for o in cfg.ngram_orders}
    seen = []
    t0 = time.perf_counter()
    for p in tf:
        stream = training_stream(cfg, p, p["tokens"])
        seen.append(int(stream.shape[0] * cfg.seq_len))
        for o in cfg.ngram_orders:
            lm = KneserNey(o, vocab).fit(stream)
            curves[str(o)].append(bits_per_byte(lm, val, token_bytes))
    D = [p["tokens"] for p in tf]
    tf_bpb = [p["val_bpb"] for p in tf]
    best_ng = [min(curves[str(o)][i] for o in cfg.ngram_orders) for i in range(len(D))]
    return {"size": size, "tokens": D, "ngram_tokens": seen, "transformer_bpb": tf_bpb, "ngram_bpb": curves,
            "ngram_best_bpb": best_ng, "crossover": crossover(D, best_ng, tf_bpb),
            "seconds": time.perf_counter() - t0}


def crossover(D: list[int], ngram: list[float], tf: list[float]) -> dict[str, Any]:
    """Where the Transformer starts to beat the n-gram model (interpolated in log D between the bracketing runs)."""
    diff = [t - g for t, g in zip(tf, ngram)]  # > 0: the n-gram model is better
    if all(d > 0 for d in diff):
        return {"tokens": None, "note": f"the n-gram model is better at every D run (up to {D[-1]:,} tokens)"}
    if all(d <= 0 for d in diff):
        return {"tokens": None, "note": f"the Transformer is better at every D run (from {D[0]:,} tokens)"}
    i = next(k for k in range(1, len(diff)) if diff[k - 1] > 0 >= diff[k])
    x0, x1 = math.log(D[i - 1]), math.log(D[i])
    x = x0 + (x1 - x0) * diff[i - 1] / (diff[i - 1] - diff[i])
    later = [d for d in diff[i:] if d > 0]
    return {"tokens": float(math.exp(x)), "between": [D[i - 1], D[i]],
            "note": "the n-gram model is better below this D, the Transformer above" + (
                "" if not later else " (though the n-gram model wins again at some larger D)")}


# ----------------------------------------------------------------------------------------------- all of it

def analyse(cfg: ScalingConfig, sweep: dict[str, Any]) -> dict[str, Any]:
    pts = sweep["points"]
    iso_pts = [p for p in pts if p["kind"] == "isoflop"]
    n_key = "params_non_embedding" if cfg.fit_params == "non_embedding" else "params"
    result: dict[str, Any] = {"config": sweep["config"], "vocab_size": sweep["vocab_size"], "points": pts,
                              "planned_points": sweep["planned"], "notes": sweep["notes"], "units": {
                                  "loss": "validation bits per byte", "N": cfg.fit_params + " parameters",
                                  "D": "training tokens", "C": "training FLOPs"},
                              "published": F.PUBLISHED}
    t0 = time.perf_counter()
    fit_pts = [p for p in iso_pts if p["steps"] >= cfg.fit_min_steps]
    result["law_points"] = [p["name"] for p in fit_pts]
    result["law"] = law_fit(cfg, fit_pts)
    result["isoflop"] = isoflop(iso_pts, n_key)
    result["holdout"] = holdout(cfg, fit_pts)
    result["fit_seconds"] = time.perf_counter() - t0
    tr = truth(cfg)
    if tr is not None:
        result["truth"] = {k: tr[k] for k in ("bits_per_byte", "entropy_rate_bits_per_byte",
                                              "entropy_rate_bits_per_word", "sample_bits_per_byte")}
        law = result["law"]
        if "E_verdict" in law:
            ci = law["E_verdict"]["interval"]
            exact = tr["bits_per_byte"]
            pinned = bool(law["E_verdict"]["pinned"])
            inside = bool(ci and ci[0] <= exact <= ci[1])
            close = abs(law["E"] - exact) / exact <= 0.03
            result["truth_check"] = {
                "exact_bits_per_byte": exact, "E_pinned": pinned, "fitted_E": law["E"] if pinned else None,
                "fitted_E_unpinned": None if pinned else law["E"], "interval": ci,
                "relative_error": (law["E"] - exact) / exact if pinned else None,
                "interval_contains_exact": inside, "within_3_percent": close if pinned else None,
                "passed": pinned and inside and close}
    sizes = {p["size"] for p in pts}
    curve_size = cfg.curve_size or _first_full_size(cfg, iso_pts)
    if curve_size in sizes:
        result["ngram"] = ngram_curve(cfg, pts, curve_size)
    write_json(Path(cfg.out) / "scaling.json", result)
    return result


def _first_full_size(cfg: ScalingConfig, pts: list[dict[str, Any]]) -> str:
    budgets = {p["budget"] for p in pts}
    for spec in cfg.sizes:
        if {p["budget"] for p in pts if p["size"] == spec} == budgets:
            return spec
    return cfg.sizes[0]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What the command prints: the constants with intervals, E's verdict, the laws, the checks."""
    lines = []
    law = result.get("law", {})
    if "error" in law:
        lines.append(f"L(N, D) fit: {law['error']}")
    elif law:
        ci = (law.get("bootstrap") or {}).get("intervals", {})
        def iv(k: str) -> str:
            return f" [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else ""
        lines.append(f"L(N, D) = E + A/N^alpha + B/D^beta on {law['n_points']} points (bits per byte; "
                     f"95% bootstrap intervals):")
        lines.append(f"  alpha {law['alpha']:.3f}{iv('alpha')}, beta {law['beta']:.3f}{iv('beta')} "
                     f"(Chinchilla 0.34 / 0.28, Epoch AI refit 0.35 / 0.37)")
        lines.append(f"  A {law['A']:.4g}{iv('A')}, B {law['B']:.4g}{iv('B')}; N* ~ C^{law['a']:.3f}{iv('a')}, "
                     f"D* ~ C^{law['b']:.3f}{iv('b')}")
        v = law.get("E_verdict") or {}
        if v.get("pinned"):
            lines.append(f"  E (irreducible loss) {law['E']:.4f}{iv('E')} bits per byte")
        else:
            lines.append(f"  E (irreducible loss): not pinned down by these points ({v.get('why')})")
        if law.get("at_bound"):
            lines.append(f"  at a bound of the search: {', '.join(law['at_bound'])}")
    iso = result.get("isoflop", {})
    if "error" in iso:
        lines.append(f"IsoFLOP: {iso['error']}")
    elif iso:
        for m in iso["minima"]:
            flag = "" if m["inside"] else f" ({m['note']})"
            lines.append(f"IsoFLOP C={m['budget']:.3g}: N* {m['N_opt']:,.0f}, D* {m['D_opt']:,.0f}, "
                         f"{m['tokens_per_param']:.1f} tokens/param, best {m['L_opt']:.4f} bpb{flag}")
        if "laws" in iso:
            la = iso["laws"]
            lines.append(f"IsoFLOP laws: N* ~ C^{la['N_opt']['exponent']:.3f}, D* ~ C^{la['D_opt']['exponent']:.3f}")
    ho = result.get("holdout", {})
    if "error" in ho:
        lines.append(f"held-out prediction: {ho['error']}")
    elif ho:
        lines.append(f"held-out budget {ho['held_out_budget']:.3g}: predicted best {ho['predicted_best_bpb']:.4f} "
                     f"bpb, measured {ho['measured_best_bpb']:.4f} ({100 * ho['relative_error']:+.2f}%)")
    tc = result.get("truth_check")
    if tc:
        lines.append(truth_line(tc))
    ng = result.get("ngram", {})
    if ng and "error" not in ng:
        cr = ng["crossover"]
        at = f"{cr['tokens']:,.0f} tokens" if cr["tokens"] else "none"
        lines.append(f"n-gram vs Transformer ({ng['size']}): crossover {at} ({cr['note']})")
        one_pass = max(ng.get("ngram_tokens", [0]))
        if one_pass and one_pass < ng["tokens"][-1]:
            lines.append(f"  D past one pass ({one_pass:,} tokens) repeats the text: the Transformer sees it again, "
                         f"the n-gram model counts it once")
    return lines


def truth_line(tc: dict[str, Any]) -> str:
    """The exact-entropy check in one sentence (no E printed when the points do not pin it down)."""
    head = f"exact entropy {tc['exact_bits_per_byte']:.5f} bits per byte"
    ci = tc.get("interval")
    iv = f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "none"
    if not tc["E_pinned"]:
        return f"{head}; E not pinned down (interval {iv}), so the check fails"
    verdict = "passed" if tc["passed"] else "failed"
    return (f"{head}; fitted E {tc['fitted_E']:.5f} ({100 * tc['relative_error']:+.2f}%), interval {iv} "
            f"{'contains' if tc['interval_contains_exact'] else 'misses'} it: check {verdict}")


def print_summary(result: dict[str, Any]) -> None:
    for line in summary_lines(result):
        print0(line)
