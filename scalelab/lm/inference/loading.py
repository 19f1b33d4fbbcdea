"""Loading a model for generation: the checkpoint, its tokenizer, the inference dtype, and the thread to load in.

    from scalelab.lm.inference.loading import load_for_inference
    model, tokenizer, step_dir = load_for_inference("runs/demo")      # chat if present, else base
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from scalelab.common import UsageError, resolve_device, resolve_dtype, torch_dtype
from scalelab.lm.model import GPT

T = TypeVar("T")

def last_level_cache_bytes() -> int:
    """The CPU's largest cache in bytes, from sysfs (32 MiB when it cannot be read)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            sizes.append(int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1))
        except (OSError, ValueError):
            continue
    return max(sizes, default=32 << 20)


DTYPE_HELP = "auto (bf16 where fast; fp32 on CPU for models the cache holds), fp32, bf16 or fp16"


def resolve_dtype_for(name: str, device: str, n_params: int | None) -> str:
    """``resolve_dtype`` for generation: on CPU, 'auto' keeps fp32 while the fp32 weights fit in the last-level cache.

    ``n_params`` None (the size not known yet) gives the dtype to load in: fp32 where the size will decide.

    Decoding reads every weight once per step: weights that stay in the cache are read fast, and there bf16's
    conversions and oneDNN's fixed cost per matmul lose; beyond the cache, halving the bytes wins (the figures are
    in the README).
    """
    chosen = resolve_dtype(name, device)
    if (name or "auto").lower() == "auto" and device == "cpu" and chosen == "bf16":
        return "fp32" if n_params is None or 4 * n_params <= last_level_cache_bytes() else "bf16"
    return chosen


def run_in_fresh_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a new thread that ends right after (its result returned, its error raised).

    Why: libgomp (PyTorch's OpenMP on Linux) keeps one worker team per thread that ever ran a parallel op, and once
    it manages more threads than cores its workers stop spin-waiting and sleep between kernels. A model loaded in
    the main thread gives the main thread a team for good, and the engine thread's decoding then pays a futex
    wake-up per kernel. Loading in a thread that exits frees its team.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scalelab-load") as pool:  # its thread ends on exit
        return pool.submit(fn, *args, **kwargs).result()


def load_for_inference(run: str | Path, stage: str | None = None, device: str = "auto", dtype: str = "auto",
                       ) -> tuple[GPT, Any, Path]:
    """(model in eval mode, tokenizer, step folder) from a run, stage or step folder.

    The tokenizer is the run's ``tokenizer/tokenizer.json``, looked up from the given folder and the checkpoint's
    parents. ``device`` as in ``scalelab.common``; ``dtype`` "auto" is ``resolve_dtype_for`` (bf16 where the
    device does it fast, but fp32 on a CPU whose last-level cache holds the fp32 weights).
    """
    from scalelab.lm.checkpoint import load_model
    from scalelab.lm.data.tokenizer import find_tokenizer, load_tokenizer

    dev = resolve_device(device)
    wanted = resolve_dtype_for(dtype, dev, None)  # checks the name before anything loads; fp32 if size decides
    model, _meta, step_dir = load_model(run, stage=stage, device=dev, dtype=torch_dtype(wanted))
    chosen = resolve_dtype_for(dtype, dev, model.num_params())
    if chosen != wanted:
        model.to(torch_dtype(chosen))
    tok_json = find_tokenizer(run, step_dir)
    if tok_json is None:
        raise UsageError(f"{run}: no tokenizer found (expected tokenizer/tokenizer.json in the run folder)")
    tokenizer = load_tokenizer(tok_json)
    tok_dir = tok_json.parent
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise UsageError(f"{tok_dir}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                         f"{model.config.vocab_size}: they do not belong together")
    return model.eval(), tokenizer, step_dir
