"""Chat rendering: Python ``render`` == Hugging Face ``apply_chat_template``; masks; conversation files and errors.

    .venv/bin/pytest tests/test_chat.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import needs_sets, set_dir

from scalelab.common import UsageError
from scalelab.lm.chat import (
    CHAT_TEMPLATE,
    install_chat_template,
    load_conversations,
    render,
    render_prompt,
    render_text,
    validate_messages,
)
from scalelab.lm.special_tokens import ASSISTANT, BOS, END, PAD, SPECIAL_TOKENS

TEXT = ("Hello there! How are you today? I am fine, thanks. The quick brown fox jumps over the lazy dog. "
        "def add(a, b):\n    return a + b\nWrite a short email to Maria about lunch. 12 + 34 = 46.\n") * 20

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 12 + 34?"},
     {"role": "assistant", "content": "46"}],
    [{"role": "user", "content": "Write code:\n\ndef add(a, b):"}, {"role": "assistant", "content": "    return a+b\n"},
     {"role": "user", "content": "  thanks  "}, {"role": "assistant", "content": "You're welcome! émoji 🙂"}],
    [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Who are you?"}],
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level BPE with the special tokens at ids 0..5, saved the way Hugging Face loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    tok.save(str(out / "tokenizer.json"))
    install_chat_template(out)
    return out


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_tok(tokenizer_dir: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"), chat_template=CHAT_TEMPLATE,
                                   bos_token=BOS, eos_token=END, pad_token=PAD)


def _hf_ids(hf_tok, messages, add_generation_prompt: bool) -> list[int]:
    out = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(out, dict) or hasattr(out, "keys"):  # BatchEncoding in newer transformers
        out = out["input_ids"]
    return list(out)


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_render_matches_apply_chat_template(tok, hf_tok, i: int) -> None:
    messages = CONVERSATIONS[i]
    ids, mask = render(tok, messages)
    assert len(ids) == len(mask)
    assert ids == _hf_ids(hf_tok, messages, add_generation_prompt=False)
    assert hf_tok.decode(ids) == render_text(messages)
    if messages[-1]["role"] == "user":
        assert render_prompt(tok, messages) == _hf_ids(hf_tok, messages, add_generation_prompt=True)
        assert render_prompt(tok, messages)[-1] == tok.token_to_id(ASSISTANT)


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_saved_tokenizer_dir_loads_with_template(tokenizer_dir: Path, tok, i: int) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert hf.chat_template == CHAT_TEMPLATE
    assert _hf_ids(hf, CONVERSATIONS[i], add_generation_prompt=False) == render(tok, CONVERSATIONS[i])[0]


def test_mask_covers_exactly_the_assistant_tokens(tok) -> None:
    end_id, asst_id = tok.token_to_id(END), tok.token_to_id(ASSISTANT)
    for messages in CONVERSATIONS:
        ids, mask = render(tok, messages)
        expected_text = "".join(m["content"] + END for m in messages if m["role"] == "assistant")
        masked = [t for t, m in zip(ids, mask) if m]
        assert tok.decode(masked, skip_special_tokens=False) == expected_text
        assert asst_id not in masked                            # the role token is never a target
        n_asst = sum(m["role"] == "assistant" for m in messages)
        assert masked.count(end_id) == n_asst                   # every assistant turn ends with <|end|>
        # each assistant turn's masked span starts right after its <|assistant|> token and ends with <|end|>
        for j, t in enumerate(ids):
            if t == asst_id:
                assert mask[j] == 0 and (mask[j + 1] == 1)
        assert mask[0] == 0 and ids[0] == tok.token_to_id(BOS)


@pytest.mark.parametrize("messages, match", [
    ([{"role": "bot", "content": "x"}], r"messages\[0\]\.role: unknown role 'bot'"),
    ([{"role": "user", "content": ""}], r"messages\[0\]\.content: empty"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\.content: expected a string"),
    ([{"role": "user", "content": "hi"}], r"messages: no assistant turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], r"messages\[1\]\.role: a system"),
    ([{"role": "assistant", "content": "a"}], r"messages\[0\]\.role: the first turn must be 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], r"messages\[1\]\.role: 'user' follows"),
    ([{"role": "user", "content": "a<|end|>"}, {"role": "assistant", "content": "b"}],
     r"messages\[0\]\.content: contains the special token"),
    ([], r"messages: empty conversation"),
    ([{"content": "x"}], r"messages\[0\]\.role: missing"),
])
def test_validate_messages_names_where_and_field(messages, match: str) -> None:
    with pytest.raises(UsageError, match=r"^data\.jsonl:7: " + match):
        validate_messages(messages, "data.jsonl:7")


def test_load_three_formats(tmp_path: Path) -> None:
    jl = tmp_path / "chats.jsonl"
    jl.write_text("\n".join(json.dumps({"messages": m}) for m in CONVERSATIONS[:3]) + "\n")
    assert load_conversations(jl) == CONVERSATIONS[:3]

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
                                  {"instruction": "Say hi.", "input": "", "output": "Hi!"}], indent=2))
    assert load_conversations(alpaca) == [
        [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]]

    share = tmp_path / "share.json"
    share.write_text(json.dumps([{"id": "a", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]}]))
    assert load_conversations(share, fmt="sharegpt") == [[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey"}]]


@needs_sets("fastchat_dummy_conversation", "alpaca_cleaned_1000")
def test_loads_the_shared_public_sets() -> None:
    convs = load_conversations(set_dir("fastchat_dummy_conversation") / "dummy_conversation.json")
    assert len(convs) == 500 and convs[0][0]["role"] == "user"
    assert len(load_conversations(set_dir("alpaca_cleaned_1000") / "alpaca_data_cleaned_1000.json")) == 1000


@pytest.mark.parametrize("name, text, match", [
    ("bad.jsonl", '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
                  '{"messages": [oops]}\n', r"bad\.jsonl:2: invalid JSON"),
    ("bad.json", '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",\n   "output": }\n]',
     r"bad\.json:4: invalid JSON"),
    ("role.jsonl", '\n{"messages": [{"role": "robot", "content": "a"}]}\n',
     r"role\.jsonl:2: messages\[0\]\.role: unknown"),
    ("empty.jsonl", '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "b"}]}',
     r"empty\.jsonl:1: messages\[0\]\.content: empty"),
    ("share.json", '[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},\n'
                   ' {"conversations": [{"from": "alien", "value": "a"}]}]',
     r"share\.json:2: conversations\[0\]\.from: unknown role"),
    ("alp.json", '[\n{"instruction": "a", "output": ""}\n]', r"alp\.json:2: output: empty"),
    ("what.jsonl", '{"text": "hello"}', r"what\.jsonl:1: cannot tell the format"),
    ("noasst.jsonl", '{"messages": [{"role": "user", "content": "a"}]}', r"noasst\.jsonl:1: messages: no assistant"),
])
def test_malformed_files_name_file_line_and_field(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_conversations(path)


def test_install_chat_template_updates_existing_config(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256, "chat_template": "old"}))
    (tmp_path / "chat_template.jinja").write_text("old")
    install_chat_template(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE and cfg["model_max_length"] == 256 and cfg["eos_token"] == END
    assert (tmp_path / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    with pytest.raises(UsageError, match="not found"):
        install_chat_template(tmp_path / "missing")
