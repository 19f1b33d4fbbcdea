"""Plan a run before it trains: model size, tokens and predicted loss for a wall-clock (or FLOP) budget.

Reads a sweep's fitted law (``<sweep>/scaling.json``), measures this machine's training speed with the training
loop's own preflight (a few dry steps, nothing trained or written) on the sweep's data, and picks, among the sweep's
sizes and the project's depth dial (width 64 x depth), the model whose predicted loss L(N, D) is lowest when it
trains for the budget at its measured speed. Speed is measured on one size and carried to the others as FLOP/s,
then re-measured on the chosen size (and the choice redone once), because small models reach fewer FLOP/s.

    scalelab plan --scaling runs/scaling --minutes 60
    scalelab plan --scaling runs/scaling --flops 1e15 --device cuda
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab.common import UsageError, print0, read_json
from scalelab.lm.scaling import fit as F
from scalelab.lm.scaling.sweep import parse_size, size_config, size_stats


@dataclass
class PlanConfig:
    """Model size and token count for a time or FLOP budget, from a sweep's fitted scaling law."""

    scaling: str = field(default="", metadata={"help": "sweep folder holding scaling.json (scalelab scaling --out)"})
    minutes: float = field(default=0.0, metadata={"ge": 0,
        "help": "wall-clock training budget in minutes (0 = use --flops)"})
    flops: float = field(default=0.0, metadata={"ge": 0,
        "help": "training compute budget in FLOPs (0 = use --minutes)"})
    device: str = field(default="auto", metadata={"help": "device the run will use: auto, cpu, cuda, mps"})
    dtype: str = field(default="", metadata={"help": "autocast dtype ('' = the sweep's)"})
    tokens_per_s: float = field(default=0.0, metadata={"ge": 0,
        "help": "skip the measurement and assume this speed for every size (0 = measure with preflight)"})
    max_depth: int = field(default=16, metadata={"ge": 1,
        "help": "largest depth-dial model considered (width 64 x depth)"})
    preflight_steps: int = field(default=5, metadata={"ge": 1, "help": "dry steps timed per measurement"})


def candidates(sweep_cfg: dict[str, Any], vocab: int, max_depth: int) -> dict[str, dict[str, int]]:
    seq_len = int(sweep_cfg["seq_len"])
    specs = list(dict.fromkeys([*sweep_cfg["sizes"], *(f"{d}x{64 * d}" for d in range(1, max_depth + 1))]))
    return {s: size_stats(size_config(s, vocab, seq_len), seq_len) for s in specs}


def measure_tokens_per_s(cfg: PlanConfig, sweep_cfg: dict[str, Any], spec: str) -> float:
    """Tokens/s of one size on this machine: the training loop's preflight (memory check + timed dry steps)."""
    from scalelab.lm.train.config import TrainConfig
    from scalelab.lm.train.loop import train

    layers, width = parse_size(spec)
    heads = max(1, width // 64)
    tc = TrainConfig(run=cfg.scaling, stage="plan-preflight", n_layer=layers, n_embd=width, n_head=heads,
                     n_kv_head=heads, seq_len=int(sweep_cfg["seq_len"]), batch_size=int(sweep_cfg["batch_size"]),
                     device=cfg.device, dtype=cfg.dtype or sweep_cfg.get("dtype", "auto"),
                     compile=bool(sweep_cfg.get("compile", False)), preflight_only=True,
                     preflight_steps=max(1, cfg.preflight_steps), sample_max_tokens=0)
    s = train(tc)["preflight"]
    return float(s["tokens_per_s"])


def _choose(law: dict[str, Any], cands: dict[str, dict[str, int]], key: str, C: float) -> tuple[str, dict]:
    best_spec, best = "", None
    for spec, st in cands.items():
        D = C / st["flops_per_token"]
        L = float(F.law(st[key], D, law["E"], law["A"], law["B"], law["alpha"], law["beta"]))
        if best is None or L < best["L"]:
            best_spec, best = spec, {"N": st[key], "D": D, "L": L}
    return best_spec, best


def plan(cfg: PlanConfig) -> dict[str, Any]:
    if not cfg.scaling:
        raise UsageError("--scaling is required (a sweep folder with scaling.json)")
    if (cfg.minutes > 0) == (cfg.flops > 0):
        raise UsageError("give exactly one of --minutes and --flops (a positive number)")
    path = Path(cfg.scaling) / "scaling.json"
    result = read_json(path)
    law = result.get("law") or {}
    if "E" not in law:
        raise UsageError(f"{path}: no fitted law ({law.get('error', 'run scalelab scaling first')})")
    sweep_cfg = result["config"]
    key = "params_non_embedding" if sweep_cfg.get("fit_params") == "non_embedding" else "params"
    cands = candidates(sweep_cfg, int(result["vocab_size"]), cfg.max_depth)
    out: dict[str, Any] = {"law": {k: law[k] for k in ("E", "A", "B", "alpha", "beta")},
                           "E_pinned": bool((law.get("E_verdict") or {}).get("pinned"))}
    if cfg.flops > 0:
        spec, best = _choose(law, cands, key, cfg.flops)
        out.update(size=spec, flops=cfg.flops, tokens_per_s=None, minutes=None)
    else:
        seconds = 60 * cfg.minutes
        ref = max(sweep_cfg["sizes"], key=lambda s: cands[s]["flops_per_token"])
        speed = {ref: cfg.tokens_per_s or measure_tokens_per_s(cfg, sweep_cfg, ref)}
        flops_per_s = speed[ref] * cands[ref]["flops_per_token"]
        spec, best = _choose(law, cands, key, seconds * flops_per_s)
        for _ in range(2):  # re-measure on the chosen size; stop when the choice holds
            if spec not in speed:
                speed[spec] = cfg.tokens_per_s or measure_tokens_per_s(cfg, sweep_cfg, spec)
            flops_per_s = speed[spec] * cands[spec]["flops_per_token"]
            new_spec, _ = _choose(law, cands, key, seconds * flops_per_s)
            if new_spec == spec:
                break
            spec = new_spec
        if spec not in speed:
            speed[spec] = cfg.tokens_per_s or measure_tokens_per_s(cfg, sweep_cfg, spec)
        D = seconds * speed[spec]
        best = {"N": cands[spec][key], "D": D, "L": float(F.law(cands[spec][key], D, law["E"], law["A"], law["B"],
                                                                 law["alpha"], law["beta"]))}
        out.update(size=spec, minutes=cfg.minutes, tokens_per_s=speed[spec], measured=speed,
                   flops=D * cands[spec]["flops_per_token"])
    st = cands[spec]
    steps = round(best["D"] / (int(sweep_cfg["batch_size"]) * int(sweep_cfg["seq_len"])))
    layers, width = parse_size(spec)
    out.update(n_layer=layers, n_embd=width, params=st["params"], params_non_embedding=st["params_non_embedding"],
               tokens=int(best["D"]), steps=steps, predicted_bpb=best["L"],
               extrapolated=best["N"] > 2 * max(p[key] for p in result["points"]))
    meta = Path(cfg.scaling) / "data" / "meta.json"
    if meta.is_file():  # the law was fitted on this corpus; many epochs over it are outside what it measured
        train_tokens = int(read_json(meta)["splits"]["train"]["tokens"])
        out["epochs"] = out["tokens"] / max(1, train_tokens)
    return out


def plan_lines(p: dict[str, Any]) -> list[str]:
    lines = [f"model: {p['size']} ({p['n_layer']} layers, width {p['n_embd']}): {p['params']:,} parameters "
             f"({p['params_non_embedding']:,} without the embedding)",
             f"data: {p['tokens']:,} tokens ({p['steps']:,} steps), {p['flops']:.3g} FLOPs"]
    if p.get("tokens_per_s"):
        lines.append(f"speed: {p['tokens_per_s']:,.0f} tokens/s measured on this machine; {p['minutes']:g} minutes")
    lines.append(f"predicted validation loss: {p['predicted_bpb']:.4f} bits per byte")
    if not p["E_pinned"]:
        lines.append("caution: the sweep did not pin down E, so the prediction's floor is uncertain")
    if p.get("epochs", 0) > 4:
        lines.append(f"caution: {p['epochs']:.0f} epochs over the sweep's corpus; repeated data helps less than "
                     "the law (fitted on few epochs) predicts")
    if p["extrapolated"]:
        lines.append("caution: this model is more than twice the largest the sweep ran; the law is extrapolated")
    return lines


def print_plan(p: dict[str, Any]) -> None:
    for line in plan_lines(p):
        print0(line)
