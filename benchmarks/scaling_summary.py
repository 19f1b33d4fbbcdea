"""Record a finished scaling sweep's headline figures in benchmarks/results/scaling_<name>.json.

    /usr/bin/time -f %e scalelab scaling --config configs/cpu_scaling.yaml --out runs/scaling   # note the wall time
    .venv/bin/python benchmarks/scaling_summary.py --sweep runs/scaling --name cpu --wall-s 1234 \\
        --command "scalelab scaling --config configs/cpu_scaling.yaml --out runs/scaling" --note "shared 2 cores"

Copies from <sweep>/scaling.json: the fitted constants with their intervals and E's verdict, the IsoFLOP minima and
laws, the held-out prediction, the exact-entropy check (synthetic source), the n-gram crossover, and the summed
training time of the points; the wall time is what the caller measured (it includes data preparation and fits).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def summarise(res: dict, wall_s: float | None, command: str, note: str) -> dict:
    law = res.get("law", {})
    keep = ("E", "A", "B", "alpha", "beta", "a", "b", "n_points", "rms_log_residual", "at_bound")
    out = {"command": command, "note": note, "machine": {"cpus": platform.processor() or platform.machine()},
           "wall_s": wall_s, "train_s_summed": sum(p.get("elapsed_s") or 0.0 for p in res["points"]),
           "points": len(res["points"]), "config": {k: res["config"][k] for k in (
               "source", "budgets", "sizes", "seq_len", "batch_size", "lr", "vocab_size", "fit_params",
               "fit_min_steps") if k in res["config"]},
           "law": {k: law[k] for k in keep if k in law} | {
               "intervals_95": (law.get("bootstrap") or {}).get("intervals"),
               "E_verdict": law.get("E_verdict")} if "E" in law else law,
           "isoflop": res.get("isoflop"), "holdout": {k: v for k, v in (res.get("holdout") or {}).items()
                                                      if k != "per_point"},
           "truth_check": res.get("truth_check"), "truth": res.get("truth")}
    ng = res.get("ngram") or {}
    if ng and "error" not in ng:
        out["ngram"] = {k: ng[k] for k in ("size", "tokens", "transformer_bpb", "ngram_bpb", "crossover")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", required=True, help="the sweep folder (holds scaling.json)")
    ap.add_argument("--name", required=True, help="writes benchmarks/results/scaling_<name>.json")
    ap.add_argument("--wall-s", type=float, default=None, help="measured wall time of the sweep command, seconds")
    ap.add_argument("--command", default="", help="the command that ran the sweep")
    ap.add_argument("--note", default="", help="conditions worth knowing (load, resumed runs...)")
    args = ap.parse_args()
    res = json.loads((Path(args.sweep) / "scaling.json").read_text())
    path = Path(__file__).parent / "results" / f"scaling_{args.name}.json"
    path.write_text(json.dumps(summarise(res, args.wall_s, args.command, args.note), indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
