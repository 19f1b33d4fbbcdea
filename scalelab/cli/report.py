"""`scalelab report`: render report.md and PNG plots from a run's metrics.jsonl, eval/*.json and config.json.

    scalelab report --run runs/demo            # writes report.md + PNGs, prints the per-task table
    scalelab report --run runs/demo --table    # only print the per-task table (base vs chat), from eval/*.json
"""

from __future__ import annotations

from pathlib import Path

from scalelab.common import UsageError, print0
from scalelab.config import ArgumentParser
from scalelab.report import load_evals, render_report
from scalelab.runs import RunDir


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scalelab report", description=__doc__.splitlines()[0])
    parser.add_argument("--run", "--run-dir", dest="run", required=True, metavar="DIR",
                        help="run folder, e.g. runs/demo (--run-dir: the same, for torchrun)")
    parser.add_argument("--table", action="store_true", help="only print the per-task table; write nothing")
    args = parser.parse_args(argv)
    if not Path(args.run).is_dir():
        raise UsageError(f"{args.run}: run folder not found")
    if not args.table:
        path = render_report(args.run)
        pngs = sorted(p.name for p in path.parent.glob("*.png"))
        print0(f"wrote {path}" + (f" and {', '.join(pngs)}" if pngs else ""))
    evals = load_evals(RunDir(args.run))
    if evals:
        from scalelab.lm.posttrain.evaluate import compare_table

        print0("per-task scores, base (few-shot prompts) vs chat (chat template):")
        print0(compare_table(evals.get("base"), evals.get("chat")))
    elif args.table:
        print0(f"{args.run}: no eval/*.json yet (run `scalelab eval --run {args.run}`)")
    return 0
