"""Corpus sources: spec parsing, each source type, the shared corpora, exact dedup, the stable by-document split.

    .venv/bin/pytest -q tests/test_corpus.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import needs_sets, set_dir

from scalelab.common import UsageError
from scalelab.lm.data.corpus import (
    hash_fraction,
    iter_source,
    parse_source,
    scan,
    stdlib_dir,
    stdlib_python_files,
)


def docs(spec: str, **kw) -> list[str]:
    return list(iter_source(parse_source(spec), **kw))


def test_spec_syntax(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n')
    src = parse_source(f"{tmp_path}/d.jsonl#body:2.5")
    assert (src.path, src.field, src.weight, src.kind) == (f"{tmp_path}/d.jsonl", "body", 2.5, "files")
    assert parse_source("stdlib:0.5").weight == 0.5 and parse_source("stdlib").kind == "stdlib"
    assert parse_source("hf:roneneldan/TinyStories#text").kind == "hf_hub"
    with pytest.raises(UsageError, match="no such file"):
        parse_source(str(tmp_path / "missing.txt"))
    with pytest.raises(UsageError, match="no file matches"):
        parse_source(str(tmp_path / "*.nothing"))
    with pytest.raises(UsageError, match="weight"):
        parse_source("stdlib:-1")


def test_text_folder_recursive_and_exact_dedup(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha document\n")
    (tmp_path / "sub" / "b.md").write_text("beta document\n")
    (tmp_path / "sub" / "copy.txt").write_text("alpha document\n")  # exact duplicate of a.txt
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")               # not a text suffix: ignored in a folder
    (tmp_path / "blank.txt").write_text("\n \n")                       # blank: no document
    assert docs(str(tmp_path)) == ["alpha document\n", "beta document\n", "alpha document\n"]
    plan = scan([parse_source(str(tmp_path))], val_fraction=0.0)
    st = plan.stats[0]
    assert (st.documents, st.duplicates, st.bytes) == (2, 1, len("alpha document\nbeta document\n"))
    kept = [t for t, _, _ in plan.iter_unique(0)]
    assert kept == ["alpha document\n", "beta document\n"]


def test_dedup_across_sources(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("shared text\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "shared text\n"}) + "\n" + json.dumps({"text": "own"}) + "\n")
    plan = scan([parse_source(str(tmp_path / "a.txt")), parse_source(str(tmp_path / "b.jsonl"))], val_fraction=0.0)
    assert [s.duplicates for s in plan.stats] == [0, 1]
    assert [t for t, _, _ in plan.iter_unique(1)] == ["own"]


def test_jsonl_json_parquet_and_hf_disk_sources(tmp_path: Path) -> None:
    rows = [{"content": f"row {i} \u00e9\u00e8 text", "n": i} for i in range(30)]
    with open(tmp_path / "d.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    want = [r["content"] for r in rows]
    assert docs(f"{tmp_path}/d.jsonl#content") == want
    assert docs(f"{tmp_path}/d.json#content") == want

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": want, "n": list(range(30))}), tmp_path / "d.parquet", row_group_size=7)
    assert docs(f"{tmp_path}/d.parquet#content") == want

    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    src = parse_source(f"{tmp_path}/hf#content")
    assert src.kind == "hf_disk"
    assert list(iter_source(src)) == want
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:5])}).save_to_disk(str(tmp_path / "hfd"))
    assert docs(f"{tmp_path}/hfd#content") == want[:5]
    with pytest.raises(UsageError, match="no column 'text'"):
        docs(f"{tmp_path}/hf")


def test_bad_records_name_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": "ok2"\n')
    with pytest.raises(UsageError, match=r"bad\.jsonl:2: not valid JSON"):
        docs(str(tmp_path / "bad.jsonl"))
    (tmp_path / "nofield.jsonl").write_text('{"text": "ok"}\n\n{"body": "x"}\n')
    with pytest.raises(UsageError, match=r"nofield\.jsonl:3: no field 'text' \(found: body\)"):
        docs(str(tmp_path / "nofield.jsonl"))
    (tmp_path / "latin1.txt").write_bytes("line one\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin1\.txt:2: not UTF-8"):
        docs(str(tmp_path / "latin1.txt"))
    (tmp_path / "notparquet.parquet").write_text("hello")
    with pytest.raises(UsageError, match="not a Parquet file"):
        docs(f"{tmp_path}/notparquet.parquet#text")


def test_long_text_is_cut_at_blank_lines_and_round_trips(tmp_path: Path) -> None:
    paras = [f"paragraph {i} " + "word " * (i % 17 + 3) + "\n\n" for i in range(400)]
    (tmp_path / "long.txt").write_text("".join(paras))
    pieces = docs(str(tmp_path / "long.txt"), doc_max_bytes=1000)
    assert len(pieces) > 10 and "".join(pieces) == "".join(paras)
    assert all(p.endswith("\n\n") for p in pieces[:-1])  # cut after a blank line, never mid-paragraph
    assert max(len(p) for p in pieces) < 1000 + 200
    assert docs(str(tmp_path / "long.txt"), doc_max_bytes=0) == ["".join(paras)]
    # the streaming reader (files over WHOLE_FILE_BYTES) cuts identically
    import scalelab.lm.data.readers as corpus

    old = corpus.WHOLE_FILE_BYTES
    corpus.WHOLE_FILE_BYTES = 0
    try:
        assert docs(str(tmp_path / "long.txt"), doc_max_bytes=1000) == pieces
    finally:
        corpus.WHOLE_FILE_BYTES = old


def test_split_is_by_document_stable_and_near_the_fraction(tmp_path: Path) -> None:
    texts = [f"document number {i}: " + "x" * (i % 13) for i in range(3000)]
    with open(tmp_path / "a.jsonl", "w") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}) + "\n")
    plan = scan([parse_source(str(tmp_path / "a.jsonl"))], val_fraction=0.1)
    val = {t for t, _, v in plan.iter_unique(0) if v}
    assert 0.07 * len(texts) < len(val) < 0.13 * len(texts)
    # stable: another run, and a corpus with more documents (reordered), keep every old document on its side
    with open(tmp_path / "b.jsonl", "w") as fh:
        for t in reversed(texts + [f"extra {i}" for i in range(500)]):
            fh.write(json.dumps({"text": t}) + "\n")
    plan2 = scan([parse_source(str(tmp_path / "b.jsonl"))], val_fraction=0.1)
    val2 = {t for t, _, v in plan2.iter_unique(0) if v}
    assert val2 & set(texts) == val
    assert {t for t, _, v in plan.iter_unique(0) if v} == val


def test_val_never_empty_and_val_corpus(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(f"tiny doc {i}\n")
    plan = scan([parse_source(str(tmp_path))], val_fraction=0.001)
    assert plan.stats[0].val_documents == 1 and plan.stats[0].train_documents == 4
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "v.txt").write_text("held out\n")
    (tmp_path / "held" / "dup.txt").write_text("tiny doc 3\n")  # also in train: dropped from val
    plan = scan([parse_source(f"{tmp_path}/*.txt")], [parse_source(str(tmp_path / "held"))], val_fraction=0.5)
    assert plan.stats[0].train_documents == 5 and plan.stats[0].val_documents == 0
    assert [t for t, _ in plan.iter_split("val", 1)] == ["held out\n"]


def test_weights_repeat_train_documents(tmp_path: Path) -> None:
    with open(tmp_path / "a.jsonl", "w") as fh:
        for i in range(2000):
            fh.write(json.dumps({"text": f"doc {i}"}) + "\n")
    plan = scan([parse_source(f"{tmp_path}/a.jsonl:2.5")], val_fraction=0.05)
    n_train = plan.stats[0].train_documents
    counts = [sum(1 for _ in plan.iter_split("train", 0, r)) for r in range(plan.repeats(0))]
    assert counts[:2] == [n_train, n_train] and 0.4 * n_train < counts[2] < 0.6 * n_train
    assert sum(1 for _ in plan.iter_split("val", 0, 1)) == 0  # val documents come once
    assert abs(hash_fraction(12345, 1) - hash_fraction(12345, 2)) > 0  # salted draws differ


def test_empty_source_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="is empty"):
        scan([parse_source(str(tmp_path / "empty"))])


def test_stdlib_source() -> None:
    files = stdlib_python_files()
    assert len(files) > 200 and all(f.suffix == ".py" for f in files)
    rel = [f.relative_to(stdlib_dir()).parts for f in files]
    assert not any({"test", "tests", "site-packages", "idle_test"} & set(p) for p in rel)
    assert any(p[-1] == "json" or "json" in p for p in rel)
    first = next(iter_source(parse_source("stdlib")))
    assert first == files[0].read_text(encoding="utf-8")[: len(first)]


@needs_sets("tiny_shakespeare", "tinystories_sample", "gutenberg_books", "mbpp")
def test_shared_corpora_as_text_sources() -> None:
    shakespeare = set_dir("tiny_shakespeare") / "input.txt"
    pieces = docs(str(shakespeare))
    assert len(pieces) > 20 and "".join(pieces) == shakespeare.read_text(encoding="utf-8")
    stories = docs(str(set_dir("tinystories_sample") / "tinystories_sample_eot.txt"))
    assert len(stories) == 5 and all("<|endoftext|>" not in s for s in stories)
    books = docs(str(set_dir("gutenberg_books") / "*.txt"))
    assert len(books) > 100 and any("Elizabeth" in b for b in books)
    code = docs(str(set_dir("mbpp") / "mbpp.jsonl") + "#code")
    assert len(code) == 974 and all("def " in c or "lambda" in c or "class " in c for c in code[:50])
    plan = scan([parse_source(str(shakespeare)), parse_source(str(set_dir("mbpp") / "mbpp.jsonl") + "#code:2")])
    assert sum(s.val_documents for s in plan.stats) >= 1 and plan.stats[1].weight == 2.0
