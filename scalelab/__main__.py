"""`scalelab <command> [flags]`: one dict from command name to the module whose main(argv) runs it.

Modules are imported only when their command runs, so `scalelab --help` is instant.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from scalelab.common import UsageError, dist_info

COMMANDS: dict[str, tuple[str, str]] = {
    "curves": ("scalelab.cli.curves", "learning curves: MLP vs classical baselines over training-set size"),
    "tabular-bench": ("scalelab.cli.tabular_bench", "many data sets x every model: normalised scores, crossovers, "
                                                     "fitted floors, fit times"),
    "compute-curves": ("scalelab.cli.compute_curves", "test score vs training FLOPs over MLP width and epochs"),
    "tokenizer": ("scalelab.cli.tokenizer", "build the corpus, train a byte-level BPE tokenizer, write token shards"),
    "pretrain": ("scalelab.cli.pretrain", "pretrain a Llama-style Transformer on the token shards"),
    "scaling": ("scalelab.cli.scaling", "IsoFLOP sweep, scaling-law fits with intervals, n-gram baseline"),
    "plan": ("scalelab.cli.plan", "model size and tokens for a time or FLOP budget, from a fitted scaling law"),
    "sample": ("scalelab.cli.sample", "generate text from a checkpoint"),
    "sft": ("scalelab.cli.sft", "supervised fine-tuning on the chat task mixture"),
    "eval": ("scalelab.cli.evaluate", "score a checkpoint on every task"),
    "chat": ("scalelab.cli.chat", "chat with a model in the terminal"),
    "report": ("scalelab.cli.report", "render report.md and plots from a run's JSON files"),
    "export": ("scalelab.cli.export", "export a run to Hugging Face or GGUF format"),
    "import": ("scalelab.cli.import_", "import a Hugging Face Llama checkpoint as a scalelab run"),
    "serve": ("scalelab.cli.serve", "OpenAI-compatible HTTP server and web chat page"),
    "data": ("scalelab.cli.data", "named data sets: list where each is found, pull a public one into the cache"),
}


def version() -> str:
    """The installed distribution's version (pyproject.toml's, through the package metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("scalelab")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def usage() -> str:
    width = max(len(k) for k in COMMANDS)
    lines = ["usage: scalelab <command> [flags]   (scalelab <command> --help for its flags; scalelab --version)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    if dist_info().enabled and "torch.distributed" in sys.modules:
        # A torchrun worker ends here without interpreter finalization. Gloo's worker threads can still hold the last
        # reference to a finished collective (a barrier keeps weak references to earlier work); freeing it decrefs a
        # Python tensor, and doing that during finalization aborts the process ("terminate called without an active
        # exception", seen in about 1 in 15 CPU runs under load; pytorch/pytorch PR 179291). Everything the run
        # writes is closed and renamed into place by now, and the process group was destroyed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        print(f"scalelab {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (scalelab --help lists the commands)"
        print(f"scalelab: error: unknown command '{name}'{hint}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UsageError as e:
        print(f"scalelab {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nscalelab {name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's --help (0) and its one-line refusals (2)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2


if __name__ == "__main__":
    sys.exit(main())
