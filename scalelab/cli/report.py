"""`scalelab report`: render report.md and PNG plots from a run's metrics.jsonl, eval/*.json and config.json.

    scalelab report --run runs/demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scalelab.common import UsageError, print0
from scalelab.report import render_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scalelab report", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, metavar="DIR", help="run folder, e.g. runs/demo")
    args = parser.parse_args(argv)
    if not Path(args.run).is_dir():
        raise UsageError(f"{args.run}: run folder not found")
    path = render_report(args.run)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    print0(f"wrote {path}" + (f" and {', '.join(pngs)}" if pngs else ""))
    return 0
