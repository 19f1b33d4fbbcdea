"""Token shards: corpus -> (trained or reused) tokenizer -> ``<run>/data/{train,val}.bin`` + ``meta.json``.

Each document becomes ``[<|bos|>] + its tokens``; documents are concatenated into a flat ``uint16`` array (``uint32``
when the vocabulary needs it), streamed to disk in chunks so memory does not grow with the corpus. Everything is built
in a staging folder and moved into place at the end (``meta.json`` last), so a killed or failed run never leaves a
half shard that looks complete, nor destroys what an earlier run wrote. ``data/token_bytes.npy`` holds each token's
UTF-8 byte length (0 for special tokens) for exact bits-per-byte. Readers: ``load_data_meta`` and ``open_split``.

    scalelab tokenizer --run runs/demo --corpus stdlib --vocab-size 4096
    python -c "from scalelab.lm.data.shards import open_split; print(open_split('runs/demo', 'train')[:20])"
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from scalelab.common import RunLock, UsageError, print0, progress, read_json, space_for, write_json
from scalelab.config import save_config
from scalelab.lm.data.corpus import (
    DEFAULT_DOC_MAX_BYTES,
    CorpusPlan,
    hash_fraction,
    note_skipped_files,
    parse_source,
    scan,
)
from scalelab.lm.data.tokenizer import (
    MIN_VOCAB_SIZE,
    check_vocab_size,
    copy_tokenizer,
    load_tokenizer,
    replace_dir,
    save_tokenizer,
    token_byte_lengths,
    token_dtype,
    tokenizer_sha256,
    train_tokenizer,
)
from scalelab.lm.special_tokens import BOS
from scalelab.runs import RunDir

SPLITS = ("train", "val")
_TOKENIZER_SAMPLE_SALT = 7  # the tokenizer's training sample is drawn independently of the split and the weights


@dataclass
class TokenizerConfig:
    """Build the corpus, train a byte-level BPE tokenizer (or reuse one) and write the token shards of a run."""

    run: str = field(default="", metadata={"help": "run folder to write tokenizer/ and data/ into, e.g. runs/demo"})
    corpus: list[str] = field(default_factory=lambda: ["stdlib"], metadata={
        "cli": False, "help": "corpus source PATH[#FIELD][:WEIGHT]; repeat the flag to mix sources"})
    val_corpus: list[str] = field(default_factory=list, metadata={
        "cli": False, "help": "validate on these sources instead of a --val-fraction of the corpus"})
    val_fraction: float = field(default=0.01, metadata={"ge": 0, "lt": 1,
        "help": "fraction of documents (chosen by content hash) held out for validation; 0 = none"})
    vocab_size: int = field(default=4096, metadata={"ge": MIN_VOCAB_SIZE, "le": 2**32 - 1,
        "help": "tokens in the vocabulary, special tokens included"})
    max_train_bytes: int = field(default=50_000_000, metadata={"ge": 0,
        "help": "bytes of training text the tokenizer learns from (a hash-chosen sample, weights applied); 0 = all"})
    min_frequency: int = field(default=2, metadata={"ge": 1, "help": "a pair must occur this many times to be merged"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "reuse this tokenizer (run folder, tokenizer folder or tokenizer.json) and only encode shards"})
    doc_max_bytes: int = field(default=DEFAULT_DOC_MAX_BYTES, metadata={"ge": 0,
        "help": "text files are cut into documents of about this many bytes at blank lines; 0 = whole files"})
    batch_bytes: int = field(default=2_000_000, metadata={"ge": 1,
        "help": "bytes of text encoded per batch (multi-threaded); bounds memory while encoding"})
    overwrite: bool = field(default=False, metadata={"help": "replace the run's existing tokenizer"})


# ----------------------------------------------------------------------------------------------- writing shards

class _ShardWriter:
    """Appends token arrays to a file; ``copy_range`` re-appends an earlier stretch (for repeated sources)."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype = path, dtype
        self.fh: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.tokens = 0
        self.documents = 0
        self.bytes = 0

    def write(self, arr: np.ndarray) -> None:
        self.fh.write(arr.astype(self.dtype, copy=False).tobytes())
        self.tokens += len(arr)

    def copy_range(self, start: int, end: int, chunk: int = 1 << 22) -> None:
        self.fh.flush()
        item = self.dtype.itemsize
        with open(self.path, "rb") as src:
            src.seek(start * item)
            left = end - start
            while left > 0:
                buf = src.read(min(left, chunk) * item)
                self.fh.write(buf)
                left -= len(buf) // item
        self.tokens += end - start

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


class _Encoder:
    """Batches documents for one shard and encodes them with ``encode_batch_fast`` (multi-threaded in Rust)."""

    def __init__(self, tok: Any, out: _ShardWriter, bos_id: int, batch_bytes: int, bar: Any) -> None:
        self.tok, self.out, self.bos_id, self.batch_bytes, self.bar = tok, out, bos_id, batch_bytes, bar
        self.texts: list[str] = []
        self.pending = 0

    def add(self, text: str) -> None:
        n = len(text.encode("utf-8"))
        self.texts.append(text)
        self.pending += n
        self.out.documents += 1
        self.out.bytes += n
        if self.pending >= self.batch_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.texts:
            return
        encs = self.tok.encode_batch_fast(self.texts, add_special_tokens=False)
        lengths = [len(e.ids) for e in encs]
        arr = np.empty(sum(lengths) + len(encs), dtype=self.out.dtype)
        pos = 0
        for e, n in zip(encs, lengths):
            arr[pos] = self.bos_id
            arr[pos + 1:pos + 1 + n] = e.ids
            pos += 1 + n
        self.out.write(arr)
        self.bar.update(self.pending)
        self.texts, self.pending = [], 0


def encode_shards(plan: CorpusPlan, tok: Any, data_dir: Path, batch_bytes: int = 2_000_000) -> dict[str, Any]:
    """Stream every split of ``plan`` through ``tok`` into ``data_dir/{train,val}.bin``; returns the split stats.

    Special-token strings inside documents are encoded as plain text (``tok.encode_special_tokens`` is set), so
    the model only ever sees the special tokens the pipeline inserts. A source of weight w is written floor(w) times
    (the repeats are copied from the file, not re-encoded), plus each document once more with probability
    w - floor(w). Validation documents are written once whatever the weight.
    """
    dtype = np.dtype(token_dtype(tok.get_vocab_size()))
    bos_id = tok.token_to_id(BOS)
    # a document that happens to contain "<|end|>" is text, not a turn boundary: encode such strings as bytes
    was_encoding_special, tok.encode_special_tokens = tok.encode_special_tokens, True
    data_dir.mkdir(parents=True, exist_ok=True)
    train, val = (_ShardWriter(data_dir / f"{s}.bin", dtype) for s in SPLITS)
    total = plan.weighted_train_bytes() + sum(st.val_bytes for st in plan.stats)
    bar = progress(total=int(total), desc="encode shards", unit="B", unit_scale=True)
    enc_train, enc_val = _Encoder(tok, train, bos_id, batch_bytes, bar), _Encoder(tok, val, bos_id, batch_bytes, bar)
    per_source = []
    try:
        for i, src in enumerate(plan.all_sources):
            weight = src.weight if i < len(plan.sources) else 1.0
            whole, frac = int(weight), weight - int(weight)
            t0, d0, b0 = train.tokens, train.documents, train.bytes
            for text, h, is_val in plan.iter_unique(i):  # pass 0
                if is_val:
                    enc_val.add(text)
                elif whole >= 1 or hash_fraction(h, 1) < frac:
                    enc_train.add(text)
            enc_train.flush()
            enc_val.flush()
            t1, d1, b1 = train.tokens, train.documents, train.bytes
            for _ in range(1, whole):  # whole repetitions: copy the tokens just written
                train.copy_range(t0, t1)
                train.documents += d1 - d0
                train.bytes += b1 - b0
                bar.update(b1 - b0)
            if whole >= 1 and frac > 0:  # the fractional repetition
                for text, _h in plan.iter_split("train", i, repeat=whole):
                    enc_train.add(text)
                enc_train.flush()
            per_source.append({"train_tokens": train.tokens - t0, "train_documents": train.documents - d0})
    finally:
        tok.encode_special_tokens = was_encoding_special
        train.close()
        val.close()
        bar.close()
    out: dict[str, Any] = {s: {"tokens": w.tokens, "documents": w.documents, "bytes": w.bytes}
                           for s, w in zip(SPLITS, (train, val))}
    out["per_source"] = per_source
    out["dtype"] = dtype.name
    return out


# ----------------------------------------------------------------------------------------------- the whole stage

def _tokenizer_sample(plan: CorpusPlan, max_bytes: int):
    """Train-split documents for the tokenizer: all of them, or a hash-chosen sample of about ``max_bytes``."""
    total = plan.weighted_train_bytes()
    p = 1.0 if not max_bytes or total <= max_bytes else max_bytes / total
    for i, src in enumerate(plan.sources):
        keep = p * src.weight
        for text, h, is_val in plan.iter_unique(i):
            if not is_val and (keep >= 1.0 or hash_fraction(h, _TOKENIZER_SAMPLE_SALT) < keep):
                yield text


def prepare(cfg: TokenizerConfig) -> dict[str, Any]:
    """Corpus -> tokenizer -> shards for ``cfg.run``; returns a summary. Nothing is replaced unless all succeeded."""
    t_start = time.perf_counter()
    if not cfg.run:
        raise UsageError("--run is required (the run folder, e.g. runs/demo)")
    run = RunDir(cfg.run)
    if run.root.exists() and not run.root.is_dir():
        raise UsageError(f"{run.root}: exists and is not a folder")
    reuse = cfg.tokenizer
    if reuse is None:
        check_vocab_size(cfg.vocab_size)
        if run.tokenizer_json.is_file() and not cfg.overwrite:
            raise UsageError(f"{run.tokenizer_json} already exists: pass --overwrite to train a new tokenizer, or "
                             f"--tokenizer {run.root} to reuse it and only re-encode the shards")
    else:
        load_tokenizer(reuse)  # fail fast on a missing or foreign tokenizer
        if (run.tokenizer_json.is_file() and not cfg.overwrite
                and tokenizer_sha256(reuse) != tokenizer_sha256(run.tokenizer_json)):
            raise UsageError(f"{run.tokenizer_json} already exists and differs from {reuse}: pass --overwrite to "
                             f"replace it, or use another --run folder")
    if cfg.min_frequency < 1 or cfg.batch_bytes < 1 or cfg.doc_max_bytes < 0 or cfg.max_train_bytes < 0:
        raise UsageError("--min-frequency and --batch-bytes must be >= 1; --doc-max-bytes, --max-train-bytes >= 0")
    sources = [parse_source(s) for s in cfg.corpus]
    val_sources = [parse_source(s) for s in cfg.val_corpus]
    for src in sources + val_sources:
        note_skipped_files(src)
    plan = scan(sources, val_sources, cfg.val_fraction, cfg.doc_max_bytes)

    run.root.mkdir(parents=True, exist_ok=True)
    with RunLock(run.root), space_for(run.root, "the tokenizer and token shards"):
        meta, t_tok, t_enc, bpt = _build(cfg, run, plan, reuse)
    save_config(cfg, run.config_json, section="tokenizer")
    return {"run": str(run.root), "tokenizer": str(run.tokenizer_json), "vocab_size": meta["vocab_size"],
            "documents": {s: meta["splits"][s]["documents"] for s in SPLITS},
            "tokens": {s: meta["splits"][s]["tokens"] for s in SPLITS},
            "bytes": {s: meta["splits"][s]["bytes"] for s in SPLITS},
            "bytes_per_token_val": bpt, "seconds": {"tokenizer": t_tok, "encode": t_enc,
                                                     "total": time.perf_counter() - t_start}}


def _build(cfg: TokenizerConfig, run: RunDir, plan: CorpusPlan, reuse: str | None) -> tuple[dict, float, float, Any]:
    """Train (or copy) the tokenizer and encode the shards in a staging folder, then install both; the staging
    folder is removed whatever happens, so a full disk leaves the run as it was."""
    stage = Path(tempfile.mkdtemp(dir=run.root, prefix=".tokenizer-stage-"))
    try:
        t0 = time.perf_counter()
        if reuse is None:
            sample = _tokenizer_sample(plan, cfg.max_train_bytes)
            tok = train_tokenizer(sample, cfg.vocab_size, cfg.min_frequency, show_progress=_show_progress())
            tok_file = save_tokenizer(tok, stage / "tokenizer")
        else:
            tok_file = copy_tokenizer(reuse, stage / "tokenizer")
            tok = load_tokenizer(tok_file)
        t_tok = time.perf_counter() - t0
        if reuse is None and tok.get_vocab_size() < cfg.vocab_size:
            print0(f"note: the corpus only supports {tok.get_vocab_size()} tokens (asked for {cfg.vocab_size})")

        t0 = time.perf_counter()
        splits = encode_shards(plan, tok, stage / "data", cfg.batch_bytes)
        t_enc = time.perf_counter() - t0
        val_content_tokens = splits["val"]["tokens"] - splits["val"]["documents"]  # minus one <|bos|> per document
        bpt = splits["val"]["bytes"] / val_content_tokens if val_content_tokens > 0 else None
        lengths = token_byte_lengths(tok)
        np.save(stage / "data" / "token_bytes.npy", lengths.astype(np.int32))
        meta = {
            "dtype": splits["dtype"], "vocab_size": tok.get_vocab_size(),
            "tokenizer_sha256": tokenizer_sha256(tok_file), "bos_id": tok.token_to_id(BOS),
            "splits": {s: splits[s] for s in SPLITS},
            "sources": [{"spec": src.spec, "split": "train+val" if i < len(plan.sources) else "val",
                         "weight": st.weight, "documents": st.documents, "bytes": st.bytes,
                         "duplicates": st.duplicates, "val_documents": st.val_documents, "val_bytes": st.val_bytes,
                         **splits["per_source"][i]}
                        for i, (src, st) in enumerate(zip(plan.all_sources, plan.stats))],
            "bytes_per_token_val": bpt,
            "val_fraction": 0.0 if plan.val_sources else cfg.val_fraction,
            "doc_max_bytes": cfg.doc_max_bytes,
            "token_bytes": "token_bytes.npy",
        }
        write_json(stage / "data" / "meta.json", meta)
        _install(stage, run, replace_tokenizer=reuse is None or tok_file.parent != run.tokenizer_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta, t_tok, t_enc, bpt


def _show_progress() -> bool:
    return os.environ.get("SCALELAB_NO_PROGRESS") != "1"


def _install(stage: Path, run: RunDir, replace_tokenizer: bool) -> None:
    """Move the staged tokenizer and shards into the run: meta.json goes first out and last in."""
    if replace_tokenizer:
        replace_dir(stage / "tokenizer", run.tokenizer_dir)
    run.data_dir.mkdir(parents=True, exist_ok=True)
    run.data_meta.unlink(missing_ok=True)  # from here until the end, the old shards no longer look complete
    for name in ("train.bin", "val.bin", "token_bytes.npy", "meta.json"):
        os.replace(stage / "data" / name, run.data_dir / name)


# ----------------------------------------------------------------------------------------------- readers

def load_data_meta(run_dir: str | Path) -> dict[str, Any]:
    """``<run>/data/meta.json``, checked against the run's tokenizer. UsageError if missing or inconsistent."""
    run = RunDir(run_dir)
    if not run.data_meta.is_file():
        raise UsageError(f"{run.data_meta}: not found (run `scalelab tokenizer --run {run.root}` first)")
    meta = read_json(run.data_meta)
    missing = [k for k in ("dtype", "vocab_size", "tokenizer_sha256", "bos_id", "splits") if k not in meta]
    if missing:
        raise UsageError(f"{run.data_meta}: missing field(s) {', '.join(missing)}")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise UsageError(f"{run.data_meta}: field 'dtype' must be uint16 or uint32, got {meta['dtype']!r}")
    if run.tokenizer_json.is_file() and tokenizer_sha256(run.tokenizer_json) != meta["tokenizer_sha256"]:
        raise UsageError(f"{run.data_meta}: the shards were encoded with another tokenizer than "
                         f"{run.tokenizer_json} (rerun `scalelab tokenizer --run {run.root} --tokenizer {run.root}`)")
    return meta


def open_split(run_dir: str | Path, split: str) -> np.ndarray:
    """The tokens of one split as a read-only memmap (an empty array for an empty split)."""
    run = RunDir(run_dir)
    meta = load_data_meta(run.root)
    if split not in meta["splits"]:
        raise UsageError(f"{run.data_meta}: no split '{split}' (splits: {', '.join(meta['splits'])})")
    path = run.data_file(split)
    if not path.is_file():
        raise UsageError(f"{path}: not found (rerun `scalelab tokenizer --run {run.root}`)")
    dtype = np.dtype(meta["dtype"])
    tokens = int(meta["splits"][split]["tokens"])
    size = path.stat().st_size
    if size != tokens * dtype.itemsize:
        raise UsageError(f"{path}: {size} bytes, but meta.json says {tokens} {dtype.name} tokens "
                         f"({tokens * dtype.itemsize} bytes); rerun `scalelab tokenizer --run {run.root}`")
    if tokens == 0:
        arr = np.empty(0, dtype=dtype)
        arr.flags.writeable = False
        return arr
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))


def load_token_bytes(run_dir: str | Path) -> np.ndarray:
    """``<run>/data/token_bytes.npy``: UTF-8 byte length per token id (0 for special tokens)."""
    path = RunDir(run_dir).data_dir / "token_bytes.npy"
    if not path.is_file():
        raise UsageError(f"{path}: not found (rerun `scalelab tokenizer --run {run_dir}`)")
    return np.load(path, allow_pickle=False)

