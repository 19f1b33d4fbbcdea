"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``): train, save, load, and the facts other modules need.

The special tokens of ``scalelab.lm.special_tokens`` get ids 0..5. Encoding adds nothing (no BOS post-processor):
``encode(text)`` is exactly the text's tokens and the data pipeline inserts ``<|bos|>`` itself. The pre-tokenizer is
ByteLevel with ``add_prefix_space=False``, so ``encode("A<|end|>B") == encode("A") + [end] + encode("B")`` and decoding
round-trips any UTF-8 text exactly. Saved as ``<run>/tokenizer/tokenizer.json`` plus ``tokenizer_config.json``
(bos/eos/pad and the chat template) so ``transformers.AutoTokenizer.from_pretrained(<run>/tokenizer)`` loads it.

Trained by ``scalelab tokenizer --run runs/NAME --corpus stdlib --vocab-size 4096`` (see scalelab/lm/data/shards.py).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from scalelab.common import UsageError, usual_mode
from scalelab.lm.special_tokens import BOS, END, PAD, SPECIAL_TOKENS

TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # the special tokens plus one token per byte


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with scalelab's pre-tokenizer and decoder (no post-processor)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = None
    return tok


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB_SIZE:
        raise UsageError(f"--vocab-size {vocab_size} is too small: it must hold the {len(SPECIAL_TOKENS)} special "
                         f"tokens and the 256 byte tokens (at least {MIN_VOCAB_SIZE})")
    if vocab_size > 2**32 - 1:
        raise UsageError(f"--vocab-size {vocab_size} is too large (at most 4294967295)")


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, length: int | None = None,
                    show_progress: bool = True) -> Tokenizer:
    """Train byte-level BPE from an iterator of documents (streamed; ``length`` only sizes the progress bar)."""
    check_vocab_size(vocab_size)
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_batched(texts), trainer=trainer, length=length)
    ids = special_token_ids(tok)
    if [ids[t] for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return tok


def _batched(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_tokenizer_files(tok: Tokenizer, directory: Path) -> None:
    """tokenizer.json + tokenizer_config.json (bos/eos/pad, chat template) + chat_template.jinja into ``directory``."""
    import json

    from transformers import PreTrainedTokenizerFast

    from scalelab.lm.chat import CHAT_TEMPLATE

    tok.save(str(directory / TOKENIZER_FILE))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(directory / TOKENIZER_FILE), bos_token=BOS, eos_token=END,
                                 pad_token=PAD, chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)
    hf.save_pretrained(str(directory))
    # transformers may rewrite tokenizer.json; keep ours byte-for-byte so its sha256 is the trained one
    tok.save(str(directory / TOKENIZER_FILE))
    # older transformers (4.x) read the template and class from tokenizer_config.json; newer ones accept both
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` (+ chat template) into ``directory``, atomically.

    Everything is written into a temporary sibling folder first, then swapped in, so a kill or an error never leaves
    a half-written (or a destroyed) tokenizer folder behind. Returns the path of tokenizer.json.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_dir(directory)
    try:
        _write_tokenizer_files(tok, tmp)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory / TOKENIZER_FILE


def _staging_dir(directory: Path) -> Path:
    """A fresh sibling folder to build ``directory`` in (same file system, so the final rename is atomic)."""
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    usual_mode(tmp)  # mkdtemp makes it private; the installed folder should be like any other
    return tmp


def replace_dir(new: Path, target: Path) -> None:
    """Replace ``target`` by ``new`` with renames only (the old folder is removed after the new one is in place)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{new.name}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_tokenizer(src: str | Path, directory: str | Path) -> Path:
    """Copy an existing tokenizer folder (tokenizer.json and its HF config files) into ``directory``, atomically."""
    src_file = resolve_tokenizer_path(src)
    directory = Path(directory)
    if src_file.parent.resolve() == directory.resolve():
        return directory / TOKENIZER_FILE
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_dir(directory)
    try:
        if src_file.name == TOKENIZER_FILE and (src_file.parent / "tokenizer_config.json").is_file():
            for f in src_file.parent.iterdir():
                if f.is_file() and f.suffix in (".json", ".jinja"):
                    shutil.copy2(f, tmp / f.name)
        else:  # a bare tokenizer.json: write the HF side too
            _write_tokenizer_files(load_tokenizer(src_file), tmp)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory / TOKENIZER_FILE


def find_tokenizer(path: str | Path, step_dir: Path | None = None) -> Path | None:
    """tokenizer.json from a file, a tokenizer folder, or a run folder; with ``step_dir``, also from the checkpoint's
    stage and run folders (a step folder passed as ``path``). None when there is none."""
    p = Path(path)
    if p.is_file():
        return p
    bases = [p] + ([step_dir, step_dir.parent, step_dir.parent.parent] if step_dir is not None else [])
    for base in bases:
        for cand in (base / TOKENIZER_FILE, base / "tokenizer" / TOKENIZER_FILE):
            if cand.is_file():
                return cand
    return None


def resolve_tokenizer_path(path_or_run_dir: str | Path) -> Path:
    """find_tokenizer, or a UsageError that says where it looked."""
    found = find_tokenizer(path_or_run_dir)
    if found is not None:
        return found
    p = Path(path_or_run_dir)
    raise UsageError(f"{p}: no tokenizer found (expected {p / 'tokenizer' / TOKENIZER_FILE}, "
                     f"{p / TOKENIZER_FILE} or a tokenizer.json file; run `scalelab tokenizer` first)")


def load_tokenizer(path_or_run_dir: str | Path) -> Tokenizer:
    """Load a scalelab tokenizer (tokenizer.json, its folder, or a run folder); UsageError if missing or foreign."""
    path = resolve_tokenizer_path(path_or_run_dir)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
        raise UsageError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0] if str(e) else e})") from None
    ids = special_token_ids(tok)
    want = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    if ids != want:
        raise UsageError(f"{path}: special tokens must have ids {want}, found {ids} (not a scalelab tokenizer)")
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Id of each scalelab special token (missing tokens are left out)."""
    out = {}
    for t in SPECIAL_TOKENS:
        i = tok.token_to_id(t)
        if i is not None:
            out[t] = int(i)
    return out


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte -> printable-unicode table, inverted: each ByteLevel character stands for one byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tok: Tokenizer, token_id: int) -> bytes:
    """The exact bytes a (non-special) token stands for; b"" for special tokens."""
    table = _byte_decoder()
    piece = tok.id_to_token(token_id)
    if piece is None or piece in SPECIAL_TOKENS:
        return b""
    if all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return piece.encode("utf-8")


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 byte length of each token id (0 for special tokens): sum over targets gives exact bits-per-byte."""
    table = _byte_decoder()
    specials = {i for i, t in enumerate(SPECIAL_TOKENS) if tok.token_to_id(t) == i}
    specials |= {int(i) for i, added in tok.get_added_tokens_decoder().items() if added.special}
    out = np.zeros(tok.get_vocab_size(), dtype=np.int32)
    for piece, i in tok.get_vocab().items():
        if i in specials:
            continue
        out[i] = len(piece) if all(ch in table for ch in piece) else len(piece.encode("utf-8"))
    return out


def tokenizer_sha256(path: str | Path) -> str:
    """sha256 of a tokenizer.json (a tokenizer or run folder is resolved to its tokenizer.json)."""
    return hashlib.sha256(resolve_tokenizer_path(path).read_bytes()).hexdigest()


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype holding every id: uint16 up to 65,536 tokens, else uint32."""
    return "uint16" if vocab_size <= 2**16 else "uint32"
