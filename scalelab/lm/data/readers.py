"""Readers of one corpus file format each: text (cut into documents), JSONL (.gz too), a JSON list, Parquet, and
Hugging Face datasets. Each yields the non-blank documents of one file, and names file:line and field on bad input.
``corpus.py`` decides which reader a source needs.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scalelab.common import UsageError

END_OF_TEXT = "<|endoftext|>"  # the GPT-2 document separator found in many plain-text corpora
DEFAULT_DOC_MAX_BYTES = 32768
WHOLE_FILE_BYTES = 16 * 2**20


def iter_text_file(path: Path, doc_max_bytes: int = DEFAULT_DOC_MAX_BYTES, strict: bool = True) -> Iterator[str]:
    """Documents of a UTF-8 text file: split at ``<|endoftext|>``, and past ``doc_max_bytes`` at the last blank line.

    Files up to 16 MiB are read whole (fast); larger ones line by line, so memory stays bounded by ``doc_max_bytes``
    (plus one line), not by the file size. With ``strict=False`` a non-UTF-8 file is skipped instead of raising.
    """
    try:
        is_gz = path.name.endswith(".gz")
        if not is_gz and path.stat().st_size <= WHOLE_FILE_BYTES:
            data = path.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                if strict:
                    line_start = data.rfind(b"\n", 0, e.start) + 1
                    lineno = data.count(b"\n", 0, e.start) + 1
                    raise UsageError(f"{path}:{lineno}: not UTF-8 text "
                                     f"(invalid byte at column {e.start - line_start + 1})") from None
                return
            text = text.removeprefix("\ufeff")
            if END_OF_TEXT not in text and (not doc_max_bytes or len(data) <= doc_max_bytes):
                if text.strip():
                    yield text
                return
            yield from _split_lines(text.split("\n"), doc_max_bytes, joined=True)
            return
        with (gzip.open if is_gz else open)(path, "rb") as fh:
            yield from _split_lines(_decoded_lines(fh, path, strict), doc_max_bytes)
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror or e})") from None


def _decoded_lines(fh: Any, path: Path, strict: bool) -> Iterator[str]:
    for lineno, raw in enumerate(fh, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if not strict:
                return
            raise UsageError(f"{path}:{lineno}: not UTF-8 text (invalid byte at column {e.start + 1})") from None
        yield line.removeprefix("\ufeff") if lineno == 1 else line


def _split_lines(lines: Iterator[str] | list[str], doc_max_bytes: int, joined: bool = False) -> Iterator[str]:
    """Group lines (with their '\\n', or without when ``joined``: pieces of text.split('\\n')) into documents."""
    buf: list[str] = []
    size = 0
    last_blank = 0  # len(buf) just after the most recent blank line

    def flush(upto: int) -> Iterator[str]:
        nonlocal buf, size, last_blank
        doc = "".join(buf[:upto])
        buf = buf[upto:]
        size = sum(_nbytes(s) for s in buf)
        last_blank = 0
        if doc.strip():
            yield doc

    pieces = iter(lines)
    nxt = next(pieces, None)
    while nxt is not None:
        line, nxt = nxt, next(pieces, None)
        if joined and nxt is not None:
            line += "\n"
        if END_OF_TEXT in line:
            parts = line.split(END_OF_TEXT)
            for part in parts[:-1]:
                buf.append(part)
                yield from flush(len(buf))
            line = parts[-1] if parts[-1].strip() else ""  # drop the newline after a marker
            if not line:
                continue
        buf.append(line)
        size += _nbytes(line)
        if not line.strip():
            last_blank = len(buf)
        if doc_max_bytes and size >= doc_max_bytes:
            yield from flush(last_blank if 0 < last_blank < len(buf) else len(buf))
    yield from flush(len(buf))


def _nbytes(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def _field_text(value: Any, path: Path, where: str, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{path}:{where}: field '{name}' holds {type(value).__name__}, expected text")
    return value


def iter_jsonl(path: Path, name: str) -> Iterator[str]:
    """The ``name`` field of each JSON line (split on '\\n' only); errors name file:line and the field."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        lines = enumerate(fh, 1)
        while True:
            try:
                lineno, raw = next(lines)
            except StopIteration:
                return
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a compressed file cut short or damaged
                raise UsageError(f"{path}: truncated or corrupt gzip file ({e})") from None
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise UsageError(f"{path}:{lineno}: not UTF-8 text (invalid byte at column {e.start + 1})") from None
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or name not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise UsageError(f"{path}:{lineno}: no field '{name}' (found: {keys}); choose one with {path}#FIELD")
            text = _field_text(record[name], path, str(lineno), name)
            if text and text.strip():
                yield text


def iter_json(path: Path, name: str) -> Iterator[str]:
    """A .json file holding a list of records (or strings); the list is loaded whole, so keep such files small."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON list of records (use .jsonl for one record per line)")
    for i, record in enumerate(data):
        if isinstance(record, str):
            text = record
        elif isinstance(record, dict) and name in record:
            text = _field_text(record[name], path, f"record {i}", name)
        else:
            keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise UsageError(f"{path}: record {i}: no field '{name}' (found: {keys})")
        if text and text.strip():
            yield text


def iter_parquet(path: Path, name: str, batch_size: int = 1024) -> Iterator[str]:
    """The ``name`` column of a Parquet file, streamed batch by batch."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{path}: reading Parquet needs pyarrow (pip install 'scalelab[data]')") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid for non-Parquet files
        raise UsageError(f"{path}: not a Parquet file ({e})") from None
    columns = pf.schema_arrow.names
    if name not in columns:
        raise UsageError(f"{path}: no column '{name}' (found: {', '.join(columns)}); choose one with {path}#COLUMN")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=[name]):
        for value in batch.column(0).to_pylist():
            row += 1
            text = _field_text(value, path, f"row {row}", name)
            if text and text.strip():
                yield text


def iter_hf(src: Any, batch_size: int = 1000) -> Iterator[str]:
    """A Hugging Face dataset: saved on disk (``save_to_disk``) or on the hub (``hf:NAME``, split train, streamed)."""
    try:
        import datasets
    except ImportError:
        raise UsageError(f"{src.path}: reading Hugging Face datasets needs `pip install datasets`") from None
    name = src.field or "text"
    if src.kind == "hf_hub":
        try:
            ds = datasets.load_dataset(src.path[3:], split="train", streaming=True)
        except Exception as e:  # network, missing dataset, ...
            raise UsageError(f"{src.path}: cannot load from the Hugging Face hub ({str(e).splitlines()[0]})") from None
    else:
        try:
            ds = datasets.load_from_disk(src.path)
        except Exception as e:
            raise UsageError(f"{src.path}: not a saved Hugging Face dataset ({str(e).splitlines()[0]})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" in ds:
                ds = ds["train"]
            elif len(ds) == 1:
                ds = next(iter(ds.values()))
            else:
                raise UsageError(f"{src.path}: a dataset dict without a 'train' split (splits: {', '.join(ds)})")
    columns = ds.column_names or []
    if columns and name not in columns:
        raise UsageError(f"{src.path}: no column '{name}' (found: {', '.join(columns)}); choose one with "
                         f"{src.path}#COLUMN")
    row = 0
    for batch in ds.iter(batch_size=batch_size):
        for value in batch[name]:
            row += 1
            text = _field_text(value, Path(src.path), f"row {row}", name)
            if text and text.strip():
                yield text
