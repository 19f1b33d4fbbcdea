"""Supervised fine-tuning: the chat task mixture, rendered with loss masks, packed into rows, fed to the train loop.

SFT is not a second training loop: ``sft(cfg)`` builds an ``SFTSource`` (the batch-source protocol of
scalelab/lm/data/loader.py) and calls the pretraining loop ``train`` with stage ``chat`` and ``init_from`` ``base``, so
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

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scalelab.common import UsageError, dist_info, print0, progress
from scalelab.config import config_from_dict, load_yaml, to_dict
from scalelab.lm.checkpoint import resolve_start
from scalelab.lm.train.config import TrainConfig, batch_geometry
from scalelab.lm.train.loop import train
from scalelab.runs import RunDir

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
    """Batches of packed conversation rows (the ``BatchSource`` protocol of scalelab/lm/data/loader.py).

    Global row number n = step * (world * accum * B) + (rank * accum + micro_step) * B + b, as in TokenSource;
    epoch n // R reads the rows in its own seeded permutation.
    """

    def __init__(self, train_ids: np.ndarray, train_mask: np.ndarray, val_ids: np.ndarray | None,
                 val_mask: np.ndarray | None, batch_size: int, grad_accum: int = 1, rank: int = 0,
                 world_size: int = 1, seed: int = 0, stats: dict[str, Any] | None = None,
                 fingerprint: dict[str, Any] | None = None) -> None:
        if len(train_ids) == 0:
            raise UsageError("no training rows: every conversation was dropped (too long for --seq-len?)")
        self.ids, self.mask = train_ids, train_mask
        self.val_ids, self.val_mask = val_ids, val_mask
        self.B, self.accum, self.rank, self.world, self.seed = batch_size, grad_accum, rank, world_size, seed
        self.stats = stats or {}
        self.fingerprint = fingerprint or {}  # saved with each checkpoint: a resume must see the same data
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
                "sequences_per_step": self.sequences_per_step, **self.fingerprint}


# ----------------------------------------------------------------------------------------------- config and entry


def _like(name: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A TrainConfig field with a new default for SFT, keeping its help text."""
    meta = dict(TrainConfig.__dataclass_fields__[name].metadata)
    for key in ("help", "ge"):
        if key in kw:
            meta[key] = kw.pop(key)
    return field(default=default, metadata=meta, **kw) if default is not dataclasses.MISSING else field(
        metadata=meta, **kw)


CHAT_SAMPLES = ["<|user|>What is 12 plus 7?<|end|><|assistant|>", "<|user|>Hello! Who are you?<|end|><|assistant|>"]


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning of the base model on the chat task mixture (the pretraining loop, stage chat)."""

    stage: str = _like("stage", "chat")
    init_from: str = _like("init_from", "base")
    seq_len: int = _like("seq_len", 0, help="row length in tokens; 0 = the base model's context", ge=0)
    lr: float = _like("lr", 1e-3)
    warmup_steps: int = _like("warmup_steps", 20)
    max_steps: int = _like("max_steps", 300)
    eval_every: int = _like("eval_every", 50)
    sample_prompts: list[str] = _like("sample_prompts", default_factory=lambda: list(CHAT_SAMPLES))
    sample_max_tokens: int = _like("sample_max_tokens", 32)
    # ---- data
    mixture_config: str = field(default="", metadata={
        "help": "MixtureConfig YAML (e.g. configs/tiny_mixture.yaml); '' = the default mixture"})
    tasks: list[str] = field(default_factory=list, metadata={
        "help": "tasks as name:weight, replacing the mixture's (empty = the mixture's)"})
    data: list[str] = field(default_factory=list, metadata={
        "help": "your conversation files (JSONL messages, Alpaca, ShareGPT) as FILE[:WEIGHT], added to the mixture"})
    conversations: int = field(default=0, metadata={"ge": 0,
        "help": "training conversations drawn (0 = the mixture's n_train)"})
    val_conversations: int = field(default=100, metadata={"ge": 0,
        "help": "conversations held out of training for the validation loss (at most a tenth of them)"})
    pack: bool = field(default=True, metadata={"help": "pack several conversations per row (else one per row)"})
    overlong: str = field(default="truncate", metadata={
        "help": "a conversation longer than a row: truncate (if assistant tokens remain) or drop",
        "choices": ["truncate", "drop"]})


def mixture_from(cfg: SFTConfig) -> Any:
    """The MixtureConfig: the YAML (or defaults), with --tasks / --data / --conversations applied."""
    from scalelab.lm.posttrain.tasks.mixture import MixtureConfig

    data: dict[str, Any] = {}
    if cfg.mixture_config:
        data = load_yaml(cfg.mixture_config)
        data.pop("_target", None)
    where = cfg.mixture_config or "flags"
    if cfg.tasks:
        data["tasks"] = list(cfg.tasks)
    if cfg.data:
        data["user_files"] = list(data.get("user_files") or []) + list(cfg.data)
    if cfg.conversations > 0:
        data["n_train"] = cfg.conversations
    return config_from_dict(MixtureConfig, data, where=where)


def check_data_files(specs: list[str]) -> None:
    """Read and validate each FILE[:WEIGHT] now: errors name the file, line and field (UsageError)."""
    from scalelab.lm.chat import load_conversations
    from scalelab.lm.posttrain.tasks.mixture import parse_weighted

    for spec in specs:
        path, _ = parse_weighted(spec, "--data")
        load_conversations(path)


def build_source(cfg: SFTConfig, run: RunDir, seq_len: int) -> tuple[SFTSource, dict[str, Any]]:
    """Mixture -> rendered conversations -> packed train/val rows -> the batch source (+ what happened, counted)."""
    from scalelab.lm.chat import render
    from scalelab.lm.data.tokenizer import load_tokenizer, token_byte_lengths
    from scalelab.lm.posttrain.tasks.mixture import build_mixture, planned_counts
    from scalelab.lm.special_tokens import PAD

    tok = load_tokenizer(run.root)
    mixture = mixture_from(cfg)
    convs, _ = build_mixture(mixture)
    if len(convs) < 2:
        raise UsageError("the SFT mixture has fewer than 2 conversations (raise --conversations)")
    n_val = min(cfg.val_conversations, len(convs) // 10)
    train_convs, val_convs = convs[:len(convs) - n_val], convs[len(convs) - n_val:]
    # No text past this many characters can reach a row (each token holds at least one byte of at most the
    # longest token's): clipping first keeps a 10 MB conversation from being tokenized whole only to be cut.
    max_chars = 2 * (seq_len + 1) * max(1, int(token_byte_lengths(tok).max()))
    encoded = [render(tok, clip_conversation(m, max_chars), where=f"conversation {i}") for i, m in
               enumerate(progress(train_convs, desc="render", unit="conv", leave=False))]
    val_encoded = [render(tok, clip_conversation(m, max_chars), where=f"val conversation {i}")
                   for i, m in enumerate(val_convs)]
    pad_id = tok.token_to_id(PAD)
    ids, mask, stats = pack_rows(encoded, seq_len, pad_id, cfg.pack, cfg.seed, cfg.overlong)
    vids, vmask, vstats = pack_rows(val_encoded, seq_len, pad_id, cfg.pack, cfg.seed, cfg.overlong)
    info = dist_info()
    accum, _ = batch_geometry(cfg.batch_size, seq_len, info.world_size, cfg.total_batch_tokens)
    sources = planned_counts(mixture)
    digest = hashlib.sha256()
    for arr in (ids, mask, vids, vmask):
        digest.update(np.ascontiguousarray(arr).tobytes())
    fingerprint = {"data_sha256": digest.hexdigest()[:16], "sources": sources}
    source = SFTSource(ids, mask, vids, vmask, cfg.batch_size, accum, info.rank, info.world_size, cfg.seed,
                       fingerprint=fingerprint)
    report = {"train": stats.as_dict(), "val": vstats.as_dict(), "mixture": to_dict(mixture), "sources": sources}
    return source, report


def clip_conversation(messages: list[dict[str, str]], max_chars: int) -> list[dict[str, str]]:
    """The conversation with its text cut after ``max_chars`` characters in all (later messages dropped)."""
    out, left = [], max_chars
    for msg in messages:
        if left <= 0:
            break
        out.append(msg if len(msg["content"]) <= left else {**msg, "content": msg["content"][:left]})
        left -= len(msg["content"])
    return out


def sft(cfg: SFTConfig, given: frozenset[str] | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.init_from`` into stage ``cfg.stage`` with the shared loop; returns train()'s summary + data.

    ``given``: the fields a command line set (the rest come from a resumed checkpoint); None = all of ``cfg``."""
    if not cfg.run:
        raise UsageError("--run is required (the run folder with a base checkpoint, e.g. runs/demo)")
    run = RunDir(cfg.run)
    if not run.root.is_dir():
        raise UsageError(f"{run.root}: run folder not found")
    check_data_files(cfg.data)  # malformed files fail in a second, before any model is built
    given = frozenset(dataclasses.asdict(cfg)) if given is None else given
    start = resolve_start(cfg, given)
    cfg = start.config
    if start.step_dir is None:
        raise UsageError(f"{run.stage_dir('base')}: no checkpoint to fine-tune (run `scalelab pretrain --run "
                         f"{run.root}` first, or pass --init-from)")
    if cfg.seq_len <= 0:  # rows as long as the model's context
        cfg.seq_len = int(start.saved_model_config["max_seq_len"])
    source, report = build_source(cfg, run, cfg.seq_len)
    s = report["train"]
    print0(f"SFT data: {s['conversations']:,} conversations -> {s['rows']:,} rows of {cfg.seq_len + 1} tokens "
           f"({100 * s['fill']:.0f}% filled, {s['target_tokens']:,} target tokens); "
           f"{s['truncated']} truncated, {s['dropped']} dropped as longer than a row; "
           f"{report['val']['conversations']} held out for validation")
    for name, count in report["sources"].items():
        if name.startswith("file:"):
            print0(f"SFT data: {count:,} conversations drawn from your {name[5:]} (before the validation split)")
    if (run.tokenizer_dir / "tokenizer_config.json").is_file() or run.tokenizer_dir.is_dir():
        from scalelab.lm.chat import has_chat_template, install_chat_template

        if not has_chat_template(run.tokenizer_dir):
            install_chat_template(run.tokenizer_dir)
            print0(f"installed the chat template into {run.tokenizer_dir}")
    # eval reads the task options from sft_mixture; sft_data says what the packing kept and cut
    extra = {"sft_mixture": to_dict(mixture_from(cfg)), "sft_data": {"train": report["train"], "val": report["val"]}}
    summary = train(cfg, source, given=given | {"seq_len"}, start=start, extra_config=extra)
    return {**summary, "sft_data": report}
