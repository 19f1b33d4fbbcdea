"""The byte-level BPE tokenizer: special ids, no added BOS, exact round trips, byte lengths, HF loading.

    .venv/bin/pytest -q tests/test_tokenizer.py
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import set_dir, shakespeare_bytes

from scalelab.common import UsageError
from scalelab.lm.data.tokenizer import (
    MIN_VOCAB_SIZE,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
    token_byte_lengths,
    token_bytes,
    tokenizer_sha256,
    train_tokenizer,
)
from scalelab.lm.special_tokens import BOS, END, SPECIAL_TOKENS

UNICODE = ("Caf\u00e9 na\u00efve \u2014 \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8, "
           "\u0440\u0443\u0441\u0441\u043a\u0438\u0439, "
           "\u0627\u0644\u0639\u0631\u0628\u064a\u0629, emoji \U0001f600\U0001f468\u200d\U0001f469\u200d"
           "\U0001f467 e\u0301 \t tabs\r\nCRLF\x00nul  double  spaces\n\n\n")


def _training_texts() -> list[str]:
    texts = [UNICODE * 3, "def f(x):\n    return x + 1\n" * 20]
    text = shakespeare_bytes().decode("utf-8")
    texts += [text[i:i + 5000] for i in range(0, len(text), 5000)]
    return texts


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_tokenizer(_training_texts(), vocab_size=600, show_progress=False)
    save_tokenizer(tok, tmp_path_factory.mktemp("run") / "tokenizer")
    return tmp_path_factory.getbasetemp() / "run0" / "tokenizer"


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    return load_tokenizer(tok_dir)


def real_texts() -> list[str]:
    out = [UNICODE, "", " ", "x", "  leading spaces", "trailing \n", "\u00e9" * 50, "\U0001f600" * 7]
    out.append(shakespeare_bytes(30_000).decode("utf-8"))
    books = set_dir("gutenberg_books")  # a long real book too, when the set is present
    if books is not None:
        out.append((books / "pg2600_war_and_peace.txt").read_text(encoding="utf-8")[:30_000])
    out.append(Path(__file__).read_text(encoding="utf-8"))
    return out


def test_special_tokens_get_ids_0_to_5(tok) -> None:
    assert special_token_ids(tok) == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert tok.get_vocab_size() == 600


def test_encode_adds_nothing_and_splits_special_tokens(tok) -> None:
    assert tok.encode("").ids == []
    assert BOS not in [tok.id_to_token(i) for i in tok.encode("Hello there").ids]
    end = SPECIAL_TOKENS.index(END)
    assert tok.encode("A" + END + "B").ids == tok.encode("A").ids + [end] + tok.encode("B").ids
    assert tok.encode(" hello world").ids != tok.encode("hello world").ids  # no prefix space added


@pytest.mark.parametrize("i", range(len(real_texts())))
def test_round_trip_is_exact(tok, i: int) -> None:
    text = real_texts()[i]  # the last one is this file, which holds special-token strings
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    # encoded as plain text (how the data pipeline encodes documents), every token's bytes concatenate to the text
    tok.encode_special_tokens = True
    try:
        ids = tok.encode(text).ids
    finally:
        tok.encode_special_tokens = False
    assert b"".join(token_bytes(tok, t) for t in ids) == text.encode("utf-8")
    assert tok.decode(ids) == text


def test_token_byte_lengths(tok) -> None:
    lengths = token_byte_lengths(tok)
    assert lengths.dtype == np.int32 and len(lengths) == tok.get_vocab_size()
    assert (lengths[: len(SPECIAL_TOKENS)] == 0).all() and (lengths[len(SPECIAL_TOKENS):] >= 1).all()
    for text in real_texts()[:-1]:
        assert int(lengths[tok.encode(text).ids].sum()) == len(text.encode("utf-8"))


def test_transformers_loads_it_with_identical_ids_and_template(tok_dir: Path, tok) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from scalelab.lm.chat import render

    for hf in (AutoTokenizer.from_pretrained(str(tok_dir)), PreTrainedTokenizerFast.from_pretrained(str(tok_dir))):
        assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|bos|>", "<|end|>", "<|pad|>")
        for text in real_texts():
            assert hf(text)["input_ids"] == tok.encode(text).ids
            assert hf.decode(tok.encode(text).ids) == text
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \u00e9"},
                {"role": "assistant", "content": "Hello!"}]
        ids = hf.apply_chat_template(msgs, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert list(ids) == render(tok, msgs)[0]


def test_saved_file_hash_and_atomic_replace(tok_dir: Path, tmp_path: Path) -> None:
    data = (tok_dir / "tokenizer.json").read_bytes()
    assert tokenizer_sha256(tok_dir) == hashlib.sha256(data).hexdigest()
    assert tokenizer_sha256(tok_dir.parent) == tokenizer_sha256(tok_dir / "tokenizer.json")  # run folder works too
    tok2 = train_tokenizer(["some other text " * 30], vocab_size=MIN_VOCAB_SIZE + 5, show_progress=False)
    save_tokenizer(tok2, tmp_path / "tokenizer")
    save_tokenizer(tok2, tmp_path / "tokenizer")  # replacing leaves no temp folders behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="too small"):
        train_tokenizer(["abc"], vocab_size=MIN_VOCAB_SIZE - 1)
    with pytest.raises(UsageError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UsageError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)
