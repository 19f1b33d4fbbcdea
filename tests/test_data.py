"""`scalelab tokenizer` end to end on tiny corpora: shards and meta agree, weights, reuse, atomicity, bad input.

    .venv/bin/pytest -q tests/test_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import needs_sets, set_dir

from scalelab.__main__ import main
from scalelab.common import UsageError
from scalelab.lm.data.corpus import iter_source, parse_source
from scalelab.lm.data.shards import load_data_meta, load_token_bytes, open_split
from scalelab.lm.data.tokenizer import load_tokenizer, tokenizer_sha256

VOCAB = ["--vocab-size", "320"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALELAB_NO_PROGRESS", "1")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    for i in range(40):
        (root / "notes" / f"n{i:02d}.txt").write_text(f"Note {i}: caf\u00e9 \u65e5\u672c {'lorem ipsum ' * (i + 3)}\n")
    (root / "notes" / "special.md").write_text("literal <|end|> and <|bos|> inside a document\n")
    with open(root / "code.jsonl", "w", encoding="utf-8") as fh:
        for i in range(60):
            fh.write(json.dumps({"code": f"def f{i}(x):\n    return x * {i}\n", "id": i}) + "\n")
    return root


def run_cli(*args: str) -> int:
    return main(["tokenizer", *args])


def split_docs(tok, arr: np.ndarray, bos: int) -> list[str]:
    starts = np.flatnonzero(arr == bos).tolist() + [len(arr)]
    return [tok.decode(arr[a + 1:b].tolist(), skip_special_tokens=False) for a, b in zip(starts[:-1], starts[1:])]


def test_shards_and_meta_are_consistent(tmp_path: Path, corpus: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("--run", str(run), "--corpus", str(corpus / "notes"), "--corpus", f"{corpus}/code.jsonl#code",
                   *VOCAB, "--val-fraction", "0.1") == 0
    meta = load_data_meta(run)
    tok = load_tokenizer(run)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.get_vocab_size() == 320 and meta["bos_id"] == 0
    assert meta["tokenizer_sha256"] == tokenizer_sha256(run)
    lengths = load_token_bytes(run)
    assert np.array_equal(lengths, np.load(run / "data" / "token_bytes.npy")) and lengths.dtype == np.int32
    all_docs = [d for s in (str(corpus / "notes"), f"{corpus}/code.jsonl#code") for d in iter_source(parse_source(s))]
    seen: list[str] = []
    for split in ("train", "val"):
        arr = open_split(run, split)
        info = meta["splits"][split]
        assert isinstance(arr, np.memmap) and not arr.flags.writeable and len(arr) == info["tokens"]
        assert arr[0] == 0 and int((arr == 0).sum()) == info["documents"]
        assert int(lengths[arr].sum()) == info["bytes"]  # exact bytes, special-token strings included
        docs = split_docs(tok, np.asarray(arr), 0)
        assert sum(len(d.encode()) for d in docs) == info["bytes"]
        seen += docs
    assert sorted(seen) == sorted(all_docs) and meta["splits"]["val"]["documents"] >= 1
    assert "literal <|end|> and <|bos|> inside a document\n" in seen
    val = meta["splits"]["val"]
    assert meta["bytes_per_token_val"] == pytest.approx(val["bytes"] / (val["tokens"] - val["documents"]))
    assert [s["spec"] for s in meta["sources"]] == [str(corpus / "notes"), f"{corpus}/code.jsonl#code"]
    assert json.loads((run / "config.json").read_text())["tokenizer"]["vocab_size"] == 320
    assert not list(run.glob(".tokenizer-stage-*"))


def test_weights_reuse_and_val_corpus(tmp_path: Path, corpus: Path) -> None:
    base = tmp_path / "base"
    assert run_cli("--run", str(base), "--corpus", f"{corpus}/code.jsonl#code", *VOCAB) == 0
    m1 = load_data_meta(base)
    # the same corpus at weight 3 with the same tokenizer: train is three copies, val unchanged
    rep = tmp_path / "rep"
    assert run_cli("--run", str(rep), "--tokenizer", str(base), "--corpus", f"{corpus}/code.jsonl#code:3") == 0
    m3 = load_data_meta(rep)
    assert m3["tokenizer_sha256"] == m1["tokenizer_sha256"] == tokenizer_sha256(rep)
    assert m3["splits"]["train"]["tokens"] == 3 * m1["splits"]["train"]["tokens"]
    assert m3["splits"]["val"] == m1["splits"]["val"]
    t1, t3 = np.asarray(open_split(base, "train")), np.asarray(open_split(rep, "train"))
    assert np.array_equal(t3, np.concatenate([t1, t1, t1]))
    # a fractional weight draws about that share of the documents
    half = tmp_path / "half"
    assert run_cli("--run", str(half), "--tokenizer", str(base / "tokenizer"),
                   "--corpus", f"{corpus}/code.jsonl#code:1.5") == 0
    n1, nh = m1["splits"]["train"]["documents"], load_data_meta(half)["splits"]["train"]["documents"]
    assert n1 < nh < 2 * n1
    # validation on a separate corpus
    sep = tmp_path / "sep"
    assert run_cli("--run", str(sep), "--tokenizer", str(base), "--corpus", f"{corpus}/code.jsonl#code",
                   "--val-corpus", str(corpus / "notes")) == 0
    ms = load_data_meta(sep)
    assert ms["splits"]["train"]["documents"] == 60 and ms["splits"]["val"]["documents"] == 41


@needs_sets("tiny_shakespeare", "tinystories_sample")
def test_shared_corpora_through_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("--run", str(run), "--corpus", str(set_dir("tiny_shakespeare") / "input.txt"),
                   "--corpus", str(set_dir("tinystories_sample") / "tinystories_sample_eot.txt") + ":2",
                   "--vocab-size", "512", "--doc-max-bytes", "8192") == 0
    meta = load_data_meta(run)
    assert meta["splits"]["val"]["documents"] >= 1 and 1.5 < meta["bytes_per_token_val"] < 4.0


def test_failed_run_destroys_nothing(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert run_cli("--run", str(run), "--corpus", str(corpus / "notes"), *VOCAB) == 0
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    # training again without --overwrite is refused before any work
    assert run_cli("--run", str(run), "--corpus", str(corpus / "notes"), *VOCAB) == 2
    assert "--overwrite" in capsys.readouterr().err
    # a failure late in the stage (a bad line at the end of a source) leaves the old run as it was
    (corpus / "late.jsonl").write_text('{"text": "fine"}\n' * 50 + "{broken\n")
    assert run_cli("--run", str(run), "--overwrite", "--corpus", str(corpus / "notes"),
                   "--corpus", str(corpus / "late.jsonl"), *VOCAB) == 2
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_interrupted_encoding_leaves_old_shards(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scalelab.lm.data.shards as data

    run = tmp_path / "run"
    assert run_cli("--run", str(run), "--corpus", str(corpus / "notes"), *VOCAB) == 0
    old = np.array(open_split(run, "train"))

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_install", killed)
    assert run_cli("--run", str(run), "--tokenizer", str(run), "--corpus", f"{corpus}/code.jsonl#code") == 130
    assert np.array_equal(np.asarray(open_split(run, "train")), old)
    assert not list(run.glob(".tokenizer-stage-*"))


def test_readers_detect_inconsistent_files(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(UsageError, match="meta.json: not found"):
        open_split(tmp_path / "nothing", "train")
    run = tmp_path / "run"
    assert run_cli("--run", str(run), "--corpus", str(corpus / "notes"), *VOCAB) == 0
    with pytest.raises(UsageError, match="no split 'test'"):
        open_split(run, "test")
    path = run / "data" / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])  # a truncated shard
    with pytest.raises(UsageError, match="train.bin: .* bytes, but meta.json says"):
        open_split(run, "train")
    (run / "tokenizer" / "tokenizer.json").write_text((run / "tokenizer" / "tokenizer.json").read_text() + " ")
    with pytest.raises(UsageError, match="another tokenizer"):
        load_data_meta(run)


def bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty").mkdir()
    (tmp / "blank.txt").write_text("\n\n   \n")
    (tmp / "latin1.txt").write_bytes(b"ok line\nna\xefve\n")
    (tmp / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b",}\n')
    (tmp / "field.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    (tmp / "ok.txt").write_text("fine text\n")
    run = ["--run", str(tmp / "run")]
    return [
        ([*run, "--corpus", str(tmp / "empty"), *VOCAB], "is empty"),
        ([*run, "--corpus", str(tmp / "blank.txt"), *VOCAB], "blank.txt' is empty"),
        ([*run, "--corpus", str(tmp / "latin1.txt"), *VOCAB], "latin1.txt:2: not UTF-8"),
        ([*run, "--corpus", str(tmp / "bad.jsonl"), *VOCAB], "bad.jsonl:2: not valid JSON"),
        ([*run, "--corpus", str(tmp / "field.jsonl"), *VOCAB], "field.jsonl:2: no field 'text'"),
        ([*run, "--corpus", str(tmp / "ok.txt"), "--vocab-size", "100"], "--vocab-size = 100 is out of range"),
        ([*run, "--corpus", str(tmp / "nope.txt"), *VOCAB], "nope.txt: no such file"),
        ([*run, "--corpus", str(tmp / "ok.txt"), "--tokenizer", str(tmp / "nowhere")], "no tokenizer found"),
        (["--corpus", str(tmp / "ok.txt"), *VOCAB], "--run is required"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_bad_input_exits_2_with_one_line(tmp_path: Path, case: int, capsys: pytest.CaptureFixture) -> None:
    args, message = bad_inputs(tmp_path)[case]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("scalelab tokenizer: error:"), err
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_reusing_another_tokenizer_does_not_replace_the_runs_own(tmp_path: Path, corpus: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("--run", str(a), "--corpus", str(corpus / "notes"), *VOCAB) == 0
    assert run_cli("--run", str(b), "--corpus", f"{corpus}/code.jsonl#code", *VOCAB) == 0
    sha_b = tokenizer_sha256(b)
    capsys.readouterr()
    assert run_cli("--run", str(b), "--tokenizer", str(a), "--corpus", str(corpus / "notes")) == 2
    assert "differs" in capsys.readouterr().err and tokenizer_sha256(b) == sha_b
    assert run_cli("--run", str(b), "--tokenizer", str(b), "--corpus", str(corpus / "notes")) == 0  # its own: fine
    assert oct((b / "tokenizer").stat().st_mode & 0o777) != "0o700"
