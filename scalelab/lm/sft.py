"""Supervised fine-tuning: the chat task mixture, rendered with loss masks, packed into rows, fed to the train loop.

SFT is not a second training loop: ``sft(cfg)`` builds an ``SFTSource`` (the batch-source protocol of
scalelab/lm/loader.py) and calls the pretraining loop ``train`` with stage ``chat`` and ``init_from`` ``base``, so
checkpoints, resume, torchrun, progress bars, metrics.jsonl and the loss PNG are the same as pretraining's.

Rows: each conversation is rendered by ``chat.render`` (ids + mask: 1 on assistant content and its ``<|end|>``).
With ``pack`` (default) whole conversations are laid end to end into rows of ``seq_len + 1`` tokens, a conversation
never split across rows, the rest padded with ``<|pad|>``; without it every row holds one conversation. Targets are
the next token where the mask is 1 and -1 (ignored) everywhere else, padding included. A conversation longer than
the row is truncated when its kept part still has assistant tokens, else dropped (``--overlong drop`` drops all);
both are counted and printed. Row order is a seeded permutation per epoch, so a batch depends only on (seed, step,
micro-step, rank): resume needs only the step, as in pretraining.

    scalelab sft --run runs/demo                               # task mixture from configs/defaults
    scalelab sft --run runs/demo --data my_chats.jsonl:2        # plus your own conversations, weight 2
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scalelab.common import UsageError

Encoded = tuple[list[int], list[int]]  # (ids, loss mask)
PACK_WINDOW = 64  # open rows searched for room when packing


@dataclass
class PackStats:
    conversations: int = 0  # rendered conversations offered
    kept: int = 0
    truncated: int = 0  # longer than a row, kept part still has assistant tokens
    dropped: int = 0  # longer than a row with nothing to learn in the kept part (or --overlong drop)
    no_target: int = 0  # no assistant token at all (cannot happen with validated training data)
    rows: int = 0
    tokens: int = 0  # real (non-pad) tokens in the rows
    target_tokens: int = 0  # tokens the loss is computed on
    row_len: int = 0

    @property
    def fill(self) -> float:
        """Fraction of row positions holding real tokens (the rest is padding)."""
        return self.tokens / max(1, self.rows * self.row_len)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("conversations", "kept", "truncated", "dropped", "no_target", "rows",
                                           "tokens", "target_tokens")}
        d["fill"] = round(self.fill, 4)
        return d


def fit_conversation(ids: list[int], mask: list[int], row_len: int, overlong: str = "truncate"
                     ) -> tuple[Encoded | None, str]:
    """(ids, mask) cut to ``row_len`` or None, with what happened: ok, truncated, dropped or no_target."""
    if not any(mask[1:]):
        return None, "no_target"
    if len(ids) <= row_len:
        return (ids, mask), "ok"
    if overlong == "drop":
        return None, "dropped"
    ids, mask = ids[:row_len], mask[:row_len]
    if not any(mask[1:]):  # only the prompt fits: nothing to learn
        return None, "dropped"
    return (ids, mask), "truncated"


def pack_rows(encoded: Sequence[Encoded], seq_len: int, pad_id: int, pack: bool = True, seed: int = 0,
              overlong: str = "truncate") -> tuple[np.ndarray, np.ndarray, PackStats]:
    """Rows of ``seq_len + 1`` ids and masks (int32, uint8), padded with ``pad_id`` (mask 0); see the module doc."""
    if overlong not in ("truncate", "drop"):
        raise UsageError(f"--overlong must be truncate or drop, got {overlong!r}")
    row_len = seq_len + 1
    stats = PackStats(conversations=len(encoded), row_len=row_len)
    fitted: list[Encoded] = []
    for ids, mask in encoded:
        got, what = fit_conversation(list(ids), list(mask), row_len, overlong)
        if what == "truncated":
            stats.truncated += 1
        elif what == "dropped":
            stats.dropped += 1
        elif what == "no_target":
            stats.no_target += 1
        if got is not None:
            fitted.append(got)
    stats.kept = len(fitted)
    order = np.random.default_rng([seed, 0x5F7]).permutation(len(fitted)) if fitted else []
    rows: list[tuple[list[int], list[int]]] = []  # closed rows
    open_rows: list[tuple[list[int], list[int]]] = []  # rows that may still take a conversation
    for k in order:
        ids, mask = fitted[int(k)]
        target = None
        if pack:  # first fit among the most recent open rows: dense rows, and bounded work per conversation
            target = next((r for r in open_rows if len(r[0]) + len(ids) <= row_len), None)
        if target is None:
            target = ([], [])
            open_rows.append(target)
            if len(open_rows) > (PACK_WINDOW if pack else 0):
                rows.append(open_rows.pop(0))
        target[0].extend(ids)
        target[1].extend(mask)
    rows.extend(open_rows)
    rows_ids = [np.array(r[0] + [pad_id] * (row_len - len(r[0])), dtype=np.int32) for r in rows]
    rows_mask = [np.array(r[1] + [0] * (row_len - len(r[1])), dtype=np.uint8) for r in rows]
    if not rows_ids:
        return np.zeros((0, row_len), np.int32), np.zeros((0, row_len), np.uint8), stats
    ids_arr, mask_arr = np.stack(rows_ids), np.stack(rows_mask)
    stats.rows = len(ids_arr)
    stats.tokens = int(sum(len(e[0]) for e in fitted))
    stats.target_tokens = int(mask_arr[:, 1:].sum())
    return ids_arr, mask_arr, stats


def rows_to_xy(ids: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) rows -> inputs x (B, T) and targets y (B, T), y = next token where its mask is 1, else -1."""
    x = torch.from_numpy(ids[:, :-1].astype(np.int64))
    y = torch.from_numpy(ids[:, 1:].astype(np.int64))
    y[torch.from_numpy(mask[:, 1:] == 0)] = -1
    return x, y


class SFTSource:
    """Batches of packed conversation rows (the ``BatchSource`` protocol of scalelab/lm/loader.py).

    Global row number n = step * (world * accum * B) + (rank * accum + micro_step) * B + b, as in TokenSource;
    epoch n // R reads the rows in its own seeded permutation.
    """

    def __init__(self, train_ids: np.ndarray, train_mask: np.ndarray, val_ids: np.ndarray | None,
                 val_mask: np.ndarray | None, batch_size: int, grad_accum: int = 1, rank: int = 0,
                 world_size: int = 1, seed: int = 0, stats: dict[str, Any] | None = None) -> None:
        if len(train_ids) == 0:
            raise UsageError("no training rows: every conversation was dropped (too long for --seq-len?)")
        self.ids, self.mask = train_ids, train_mask
        self.val_ids, self.val_mask = val_ids, val_mask
        self.B, self.accum, self.rank, self.world, self.seed = batch_size, grad_accum, rank, world_size, seed
        self.stats = stats or {}
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def sequences_per_step(self) -> int:
        return self.world * self.accum * self.B

    def _row(self, n: int) -> int:
        epoch, i = divmod(n, self.num_rows)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 0x5F7]).permutation(self.num_rows))
        return int(self._perm[1][i])

    def next_batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = step * self.sequences_per_step + (self.rank * self.accum + micro_step) * self.B
        rows = [self._row(n) for n in range(first, first + self.B)]
        return rows_to_xy(self.ids[rows], self.mask[rows])

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.val_ids is None or len(self.val_ids) == 0:
            return
        count = len(self.val_ids) - len(self.val_ids) % self.world
        mine = list(range(self.rank, count, self.world))
        for i in range(0, len(mine), self.B):
            rows = mine[i:i + self.B]
            yield rows_to_xy(self.val_ids[rows], self.val_mask[rows])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "sft", "seed": self.seed, "rows": self.num_rows, "seq_len": int(self.ids.shape[1] - 1),
                "sequences_per_step": self.sequences_per_step}
