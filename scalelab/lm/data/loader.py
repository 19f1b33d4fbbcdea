"""Batch sources for the training loop: deterministic, resumable, memory-mapped.

The loop (scalelab/lm/train/loop.py) only talks to the ``BatchSource`` protocol, so pretraining and SFT share it:

    source.next_batch(step, micro_step) -> (x, y)   # int64 (B, T) tensors on CPU; y == -1 where masked
    source.val_batches()                -> iterator of (x, y) for evaluation (this rank's share)
    source.state_dict()                 -> JSON-able facts saved in trainer_state.json (checked on resume)

``TokenSource`` serves pretraining from ``<run>/data/{train,val}.bin`` (flat uint16/uint32 token arrays). The
train split is cut into C = N // T - 1 windows of T + 1 tokens; window starts are ``shift_e + T * perm_e(i)``, where
epoch e has its own seeded shift in [0, T) and its own seeded affine permutation of 0..C-1. The global sequence
number of row b of micro-batch m on rank r at step s is

    n = s * (world * accum * B) + (r * accum + m) * B + b

so a batch is fully determined by (seed, step, micro-step, rank), resuming needs only the step, memory does not grow
with the corpus, and 2 ranks x accumulation k read exactly the sequences of 1 rank x accumulation 2k.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from scalelab.common import UsageError, print0, read_json
from scalelab.runs import RunDir


class BatchSource(Protocol):
    def next_batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...


def to_device(batch: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``batch`` on ``device``; to CUDA through pinned memory, so the copy runs without blocking the host and
    overlaps the GPU's work on the previous micro-step."""
    if torch.device(device).type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device, non_blocking=True)


def check_same_data(saved: dict[str, Any], now: dict[str, Any], where: Any, allow: bool) -> None:
    """A resume continues on the data it started on: a source's facts (row counts, data digest, mixture shares)
    must match the checkpoint's; ``allow`` (--resume-on-new-data) turns the refusal into a warning."""
    changed = [f"{k}: {saved[k]} -> {now[k]}" for k in now if k in saved and k != "sequences_per_step"
               and saved[k] != now[k]]
    if not changed:
        return
    if not allow:
        raise UsageError(f"{where}: the training data differ from the checkpoint's (" + "; ".join(changed)
                         + "); pass --resume-on-new-data to continue on the new data")
    print0("warning: resuming on different data (" + "; ".join(changed) + ")")


# ----------------------------------------------------------------------------------------------- token shards

def load_meta(run: RunDir) -> dict[str, Any]:
    """``<run>/data/meta.json``, with a hint when it is missing."""
    if not run.data_meta.is_file():
        raise UsageError(f"{run.data_meta}: no token data (run `{tokenize_command(run)}` first)")
    meta = read_json(run.data_meta)
    if "vocab_size" not in meta:
        raise UsageError(f"{run.data_meta}: missing field 'vocab_size'")
    return meta


def tokenize_command(run: RunDir) -> str:
    """The command that writes a run's token shards: reusing its tokenizer when it has one (an import), since
    `scalelab tokenizer` will not replace an existing tokenizer unasked."""
    reuse = f" --tokenizer {run.root}" if run.tokenizer_json.is_file() else ""
    return f"scalelab tokenizer --run {run.root}{reuse} --corpus stdlib"


def open_tokens(run: RunDir, split: str, meta: dict[str, Any] | None = None, required: bool = True) -> np.memmap | None:
    """Memory-map ``<run>/data/<split>.bin`` with the dtype of meta.json (uint16 or uint32)."""
    meta = meta if meta is not None else load_meta(run)
    path = run.data_file(split)
    if not path.is_file():
        if not required:
            return None
        raise UsageError(f"{path}: token shard not found (run `{tokenize_command(run)}` first)")
    dtype = np.dtype(meta.get("dtype", "uint16"))
    if dtype not in (np.uint16, np.uint32):
        raise UsageError(f"{run.data_meta}: field 'dtype' must be uint16 or uint32, got {meta.get('dtype')!r}")
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"{path}: empty token shard")
    if size % dtype.itemsize:
        raise UsageError(f"{path}: {size} bytes is not a whole number of {dtype} tokens (truncated file?)")
    tokens = np.memmap(path, dtype=dtype, mode="r")
    top = int(tokens.max())  # one pass over the map: an id past the vocabulary would crash the embedding mid-run
    vocab = int(meta["vocab_size"]) if isinstance(meta.get("vocab_size"), int) else 0
    if vocab and top >= vocab:
        at = int(np.argmax(tokens >= vocab))
        raise UsageError(f"{path}: token {at} has id {top if tokens[at] == top else int(tokens[at])} but "
                         f"{run.data_meta} says vocab_size {vocab} (shards from another tokenizer?)")
    return tokens


def load_token_bytes(run: RunDir, vocab_size: int) -> np.ndarray | None:
    """UTF-8 byte length of each token id (0 for special tokens), or None when the run has no token_bytes.npy."""
    path = run.data_dir / "token_bytes.npy"
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable ({e})") from None
    if arr.ndim != 1:
        raise UsageError(f"{path}: expected one entry per token id, found shape {arr.shape}")
    if arr.shape[0] < vocab_size:  # a padded vocabulary (an imported model): the extra ids never occur as targets
        arr = np.pad(arr, (0, vocab_size - arr.shape[0]))
    return arr[:vocab_size].astype(np.int64)


# ----------------------------------------------------------------------------------------------- the source

def _epoch_params(seed: int, epoch: int, num_windows: int, seq_len: int) -> tuple[int, int, int]:
    """(multiplier, offset, shift) of epoch ``epoch``: i -> (a * i + c) mod C is a bijection when gcd(a, C) = 1."""
    rng = np.random.default_rng([seed, epoch, 0x5CA1E])
    if num_windows == 1:
        return 1, 0, int(rng.integers(seq_len))
    while True:
        a = int(rng.integers(1, num_windows))
        if math.gcd(a, num_windows) == 1:
            break
    return a, int(rng.integers(num_windows)), int(rng.integers(seq_len))


class TokenSource:
    """Pretraining batches from memory-mapped token arrays (see the module docstring for the indexing)."""

    def __init__(self, train: np.ndarray, val: np.ndarray | None, seq_len: int, batch_size: int, grad_accum: int,
                 rank: int = 0, world_size: int = 1, seed: int = 1337, eval_tokens: int = 0,
                 eval_batch_size: int | None = None, name: str = "train.bin") -> None:
        self.train, self.val = train, val
        self.T, self.B, self.accum = seq_len, batch_size, grad_accum
        self.rank, self.world, self.seed = rank, world_size, seed
        self.eval_tokens, self.eval_B = eval_tokens, eval_batch_size or batch_size
        self.num_windows = len(train) // seq_len - 1
        if self.num_windows < 1:
            raise UsageError(f"{name}: only {len(train)} tokens; --seq-len {seq_len} needs at least {2 * seq_len}")
        self._epoch_cache: tuple[int, tuple[int, int, int]] | None = None

    @property
    def sequences_per_step(self) -> int:
        return self.world * self.accum * self.B

    def _start(self, n: int) -> int:
        epoch, i = divmod(n, self.num_windows)
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, _epoch_params(self.seed, epoch, self.num_windows, self.T))
        a, c, shift = self._epoch_cache[1]
        return shift + self.T * ((a * i + c) % self.num_windows)

    def next_batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = step * self.sequences_per_step + (self.rank * self.accum + micro_step) * self.B
        rows = np.stack([self.train[s:s + self.T + 1] for s in map(self._start, range(first, first + self.B))])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows from the start of val.bin, up to ``eval_tokens``, split evenly across ranks."""
        if self.val is None or len(self.val) < self.T + 1:
            return
        count = (len(self.val) - 1) // self.T
        if self.eval_tokens > 0:
            count = min(count, max(1, self.eval_tokens // self.T))
        count -= count % self.world  # every rank runs the same number of forward passes (FSDP needs lockstep)
        mine = list(range(self.rank, count, self.world))
        for i in range(0, len(mine), self.eval_B):
            rows = np.stack([self.val[k * self.T:k * self.T + self.T + 1] for k in mine[i:i + self.eval_B]])
            rows = torch.from_numpy(rows.astype(np.int64))
            yield rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "tokens", "seed": self.seed, "seq_len": self.T,
                "sequences_per_step": self.sequences_per_step, "num_windows": self.num_windows}


def token_source(run: RunDir, seq_len: int, batch_size: int, grad_accum: int, rank: int, world_size: int,
                 seed: int, eval_tokens: int, meta: dict[str, Any] | None = None) -> TokenSource:
    """The pretraining source of a run directory."""
    meta = meta if meta is not None else load_meta(run)
    train = open_tokens(run, "train", meta)
    val = open_tokens(run, "val", meta, required=False)
    return TokenSource(train, val, seq_len, batch_size, grad_accum, rank, world_size, seed, eval_tokens,
                       name=str(Path(run.data_file("train"))))
