"""Corpus sources for pretraining: the embedded ``stdlib`` default, text files/folders, JSONL, Parquet, HF datasets.

A source spec is ``PATH[#FIELD][:WEIGHT]``:

    stdlib                         the running Python's standard library (.py, tests left out) + pydoc topics, ~12 MB
    site-packages[/PKG]            the .py files the running Python has installed (or one package's), tests left out
    notes/ or 'books/*.txt'        text files (.txt .md .py ...), a folder (recursive) or a glob
    gutenberg_books                a named public set (scalelab/data_sources.py: `scalelab data list`)
    'gutenberg_books/*.txt'        a file, sub-folder or glob inside a named set
    data.jsonl#text:2              JSONL (or .jsonl.gz, .json list, .parquet) with a text field, weight 2
    my_dataset_dir#content         a Hugging Face dataset saved with ``save_to_disk`` (its "train" split if a dict)
    hf:roneneldan/TinyStories      a dataset on the Hugging Face hub (split "train", streamed; needs the network)

The weight says how many times a source's training documents are repeated (2.5 = twice, plus each document once
more with probability 0.5, chosen by hash). Documents are streamed, never all in memory: a text file is cut into
documents at ``<|endoftext|>`` markers and, past ``doc_max_bytes``, at the last blank line. ``scan`` reads every
source once, drops exact duplicates (content hash) and decides the split *by document* (val when the hash fraction is
below ``val_fraction``, so the split is stable across runs and machines), or takes the val split from separate
sources. ``CorpusPlan`` then re-streams each split. Used by ``scalelab tokenizer`` (scalelab/lm/data/shards.py).
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scalelab import data_sources
from scalelab.common import UsageError, print0, progress
from scalelab.lm.data.readers import (
    DEFAULT_DOC_MAX_BYTES,
    iter_hf,
    iter_json,
    iter_jsonl,
    iter_parquet,
    iter_text_file,
)

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst", ".py", ".pyi", ".tex", ".org", ".html", ".htm", ".xml",
                 ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js", ".ts", ".go", ".rs", ".sh", ".toml", ".yaml",
                 ".yml", ".cfg", ".ini", ".css", ".csv", ".tsv"}
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".json", ".parquet")


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_python_files() -> list[Path]:
    """Every .py file of the standard library, sorted, leaving out tests, site-packages and idlelib's test folders."""
    root = stdlib_dir()
    skip_parts = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune here rather than filter afterwards: site-packages alone can hold 10x the stdlib's files
        dirnames[:] = [d for d in dirnames if d not in skip_parts and not d.startswith("test_")]
        out.extend(Path(dirpath) / f for f in filenames if f.endswith(".py") and not f.startswith("test_"))
    return sorted(out)


def site_packages_python_files(package: str = "") -> list[Path]:
    """Every .py file the running interpreter has installed (or one package's), sorted, tests left out: a larger
    code corpus that needs no download and no particular folder layout."""
    root = Path(sysconfig.get_paths()["purelib"])
    start = root / package if package else root
    if not start.is_dir():
        raise UsageError(f"site-packages/{package}: no such installed package folder under {root}")
    skip_parts = {"test", "tests", "testing", "__pycache__"}
    out = []
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = [d for d in dirnames if d not in skip_parts and not d.startswith((".", "test_"))]
        out.extend(Path(dirpath) / f for f in filenames if f.endswith(".py") and not f.startswith("test_"))
    return sorted(out)


# ----------------------------------------------------------------------------------------------- source specs

@dataclass(frozen=True)
class Source:
    """One parsed ``PATH[#FIELD][:WEIGHT]`` spec."""

    spec: str
    path: str
    field: str | None = None
    weight: float = 1.0
    kind: str = "text"  # stdlib | site-packages | files | hf_disk | hf_hub


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def in_named_set(path: str) -> str:
    """``SET`` or ``SET/REL`` (a file, sub-folder or glob inside a named public set) as a path into the folder where
    the data layer finds the set; any other path, or one that exists here (a local folder wins), unchanged."""
    name, _, rel = path.partition("/")
    if name not in data_sources.SETS or not data_sources.SETS[name].files or glob.glob(path, recursive=True):
        return path
    folder = data_sources.require(name).path  # a UsageError saying where it looked and how to pull the set
    return str(folder / rel) if rel else str(folder)


def parse_source(spec: str) -> Source:
    """Parse and check a source spec; UsageError for a bad weight or a path that does not exist."""
    spec = spec.strip()
    rest, weight = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            weight = float(tail)
            rest = head
        except ValueError:
            pass
    if not math.isfinite(weight) or weight < 0:
        raise UsageError(f"corpus source '{spec}': weight must be a number >= 0, got {weight}")
    path, _, field_name = rest.partition("#")
    field_name = field_name or None
    if not path:
        raise UsageError(f"corpus source '{spec}': empty path")
    if path == "stdlib":
        kind = "stdlib"
    elif path == "site-packages" or path.startswith("site-packages/"):
        kind = "site-packages"
        site_packages_python_files(path.partition("/")[2])  # a missing package fails now, with its name
    elif path.startswith("hf:"):
        kind = "hf_hub"
        if not path[3:]:
            raise UsageError(f"corpus source '{spec}': give a dataset name after 'hf:'")
    else:
        path = in_named_set(path)
        p = Path(path)
        if _has_glob(path):
            if not glob.glob(path, recursive=True):
                raise UsageError(f"{path}: no file matches this pattern")
        elif not p.exists():
            raise UsageError(f"{path}: no such file or folder")
        is_hf = p.is_dir() and any((p / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json"))
        kind = "hf_disk" if is_hf else "files"
    return Source(spec=spec, path=path, field=field_name, weight=weight, kind=kind)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else path.suffix.lower()


def _visible_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def note_skipped_files(src: Source) -> int:
    """Say which files of a folder source are left out (not a text or record suffix), so none vanish silently;
    returns how many."""
    if src.kind != "files" or _has_glob(src.path) or not Path(src.path).is_dir():
        return 0
    wanted = set(TEXT_SUFFIXES) | (set(RECORD_SUFFIXES) if src.field else set())
    skipped = Counter(_suffix(p) or "(no suffix)" for p in _visible_files(Path(src.path)) if _suffix(p) not in wanted)
    if skipped:
        kinds = ", ".join(f"{n} {ext}" for ext, n in skipped.most_common(6))
        records = "" if src.field else f"; JSONL/Parquet records are read with {src.path}#FIELD"
        print0(f"note: {src.path}: skipped {sum(skipped.values())} file(s) that are not text ({kinds}); text "
               f"suffixes read: {' '.join(sorted(TEXT_SUFFIXES))}{records}")
    return sum(skipped.values())


def source_files(src: Source) -> list[Path]:
    """The files of a ``files`` source: the file itself, or a folder's/glob's text (or record) files, sorted."""
    if src.kind != "files":
        return []
    wanted = set(TEXT_SUFFIXES) | (set(RECORD_SUFFIXES) if src.field else set())
    if _has_glob(src.path):
        cands = [Path(p) for p in sorted(glob.glob(src.path, recursive=True))]
        cands = [p for p in cands if p.is_file()]
    elif Path(src.path).is_dir():
        root = Path(src.path)
        cands = [p for p in _visible_files(root) if _suffix(p) in wanted]
    else:
        cands = [Path(src.path)]
    return cands


# ----------------------------------------------------------------------------------------------- streaming documents

def iter_source(src: Source, doc_max_bytes: int = DEFAULT_DOC_MAX_BYTES) -> Iterator[str]:
    """Stream the non-blank documents of one source, in a deterministic order."""
    if src.kind == "stdlib":
        for path in stdlib_python_files():
            yield from iter_text_file(path, doc_max_bytes, strict=False)
        import pydoc_data.topics

        for _, text in sorted(pydoc_data.topics.topics.items()):
            if text.strip():
                yield text
    elif src.kind == "site-packages":
        for path in site_packages_python_files(src.path.partition("/")[2]):
            yield from iter_text_file(path, doc_max_bytes, strict=False)
    elif src.kind == "files":
        for path in source_files(src):
            suffix = _suffix(path)
            if suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
                yield from iter_jsonl(path, src.field or "text")
            elif suffix == ".json":
                yield from iter_json(path, src.field or "text")
            elif suffix == ".parquet":
                yield from iter_parquet(path, src.field or "text")
            else:
                yield from iter_text_file(path, doc_max_bytes)
    elif src.kind in ("hf_disk", "hf_hub"):
        yield from iter_hf(src)
    else:
        raise ValueError(f"unknown source kind {src.kind!r}")


# ----------------------------------------------------------------------------------------------- dedup and split

def doc_hash(text: str) -> int:
    """64-bit content hash of a document (exact-duplicate detection and the split)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def hash_fraction(h: int, salt: int = 0) -> float:
    """A uniform number in [0, 1) derived from a document hash; ``salt`` gives independent draws."""
    if salt:
        h = int.from_bytes(hashlib.blake2b(h.to_bytes(8, "little") + salt.to_bytes(8, "little", signed=True),
                                           digest_size=8).digest(), "little")
    return h / 2.0**64


@dataclass
class SourceStats:
    spec: str
    weight: float
    documents: int = 0          # unique documents read from this source
    bytes: int = 0              # their UTF-8 bytes
    duplicates: int = 0         # exact duplicates dropped (of an earlier document of any source)
    train_documents: int = 0
    train_bytes: int = 0
    val_documents: int = 0
    val_bytes: int = 0


@dataclass
class CorpusPlan:
    """Where each unique document goes, decided by one streaming ``scan`` (memory: one small entry per document)."""

    sources: list[Source]
    val_sources: list[Source]
    val_fraction: float
    doc_max_bytes: int
    owner: dict[int, int] = field(default_factory=dict)   # content hash -> ordinal of its first occurrence
    starts: list[int] = field(default_factory=list)       # first ordinal of each source (train sources, then val)
    forced_val: int | None = None                         # hash moved to val so that val is never empty
    stats: list[SourceStats] = field(default_factory=list)

    @property
    def all_sources(self) -> list[Source]:
        return self.sources + self.val_sources

    def is_val(self, h: int, source_index: int) -> bool:
        if self.val_sources:
            return source_index >= len(self.sources)
        return h == self.forced_val or hash_fraction(h) < self.val_fraction

    def iter_unique(self, source_index: int) -> Iterator[tuple[str, int, bool]]:
        """(text, hash, is_val) for each kept (first-occurrence) document of one source."""
        src = self.all_sources[source_index]
        ordinal = self.starts[source_index]
        for text in iter_source(src, self.doc_max_bytes):
            h = doc_hash(text)
            if self.owner.get(h) == ordinal:
                yield text, h, self.is_val(h, source_index)
            ordinal += 1

    def iter_split(self, split: str, source_index: int, repeat: int = 0) -> Iterator[tuple[str, int]]:
        """(text, hash) of one source's documents in ``split`` for repetition ``repeat`` of its weight.

        Val documents come once (repeat 0) whatever the weight; train documents come in every whole repetition and,
        in the last fractional one, with probability equal to the fraction (by hash, so it is reproducible).
        """
        weight = self.all_sources[source_index].weight
        whole, frac = int(weight), weight - int(weight)
        for text, h, is_val in self.iter_unique(source_index):
            if split == "val":
                if is_val and repeat == 0:
                    yield text, h
            elif not is_val and (repeat < whole or (repeat == whole and hash_fraction(h, repeat + 1) < frac)):
                yield text, h

    def repeats(self, source_index: int) -> int:
        return math.ceil(self.all_sources[source_index].weight) if source_index < len(self.sources) else 1

    def weighted_train_bytes(self) -> float:
        return sum(s.train_bytes * src.weight for s, src in zip(self.stats, self.sources))


def scan(sources: list[Source], val_sources: list[Source] | None = None, val_fraction: float = 0.01,
         doc_max_bytes: int = DEFAULT_DOC_MAX_BYTES) -> CorpusPlan:
    """Read every source once: drop exact duplicates, decide train/val by document, count documents and bytes.

    Raises UsageError for an empty source or corpus, and for any bad file (named with its line).
    """
    if not sources:
        raise UsageError("no corpus source given (use --corpus stdlib or --corpus PATH)")
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    plan = CorpusPlan(list(sources), list(val_sources or []), val_fraction, doc_max_bytes)
    ordinal = 0
    best: tuple[float, int, int, int] | None = None  # the train document with the smallest hash fraction
    bar = progress(desc="scan corpus", unit="B", unit_scale=True)
    for i, src in enumerate(plan.all_sources):
        plan.starts.append(ordinal)
        st = SourceStats(src.spec, src.weight if i < len(plan.sources) else 1.0)
        seen_any = False
        for text in iter_source(src, doc_max_bytes):
            seen_any = True
            n = len(text.encode("utf-8"))
            bar.update(n)
            h = doc_hash(text)
            if h in plan.owner:
                st.duplicates += 1
            else:
                plan.owner[h] = ordinal
                st.documents += 1
                st.bytes += n
                if plan.is_val(h, i):
                    st.val_documents += 1
                    st.val_bytes += n
                else:
                    st.train_documents += 1
                    st.train_bytes += n
                    frac = hash_fraction(h)
                    if best is None or frac < best[0]:
                        best = (frac, i, h, n)
            ordinal += 1
        if not seen_any:
            raise UsageError(f"corpus source '{src.spec}' is empty (no non-blank documents found)")
        plan.stats.append(st)
    bar.close()
    n_train = sum(s.train_documents for s in plan.stats)
    n_val = sum(s.val_documents for s in plan.stats)
    if n_train + n_val == 0:
        raise UsageError("the corpus is empty: " + ", ".join(s.spec for s in plan.all_sources))
    if not plan.val_sources and val_fraction > 0 and n_val == 0 and n_train >= 2 and best is not None:
        _, i, h, n = best
        plan.forced_val = h
        st = plan.stats[i]
        st.train_documents, st.train_bytes = st.train_documents - 1, st.train_bytes - n
        st.val_documents, st.val_bytes = st.val_documents + 1, st.val_bytes + n
        n_train -= 1
    if n_train == 0:
        raise UsageError("no training documents left after the split: lower --val-fraction or add documents")
    return plan
