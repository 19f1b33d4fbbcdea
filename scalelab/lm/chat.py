"""Conversations and the chat template: OpenAI-style ``messages`` -> token ids + loss mask.

The rendering is defined once here, both as Python (``render``) and as the Jinja ``CHAT_TEMPLATE`` saved with the
tokenizer, so Hugging Face's ``apply_chat_template`` gives identical ids:

    <|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>

The loss mask is 1 on the assistant's content tokens and its closing ``<|end|>`` (so the model learns to stop), and 0
on everything else, the ``<|assistant|>`` role token included.

    from tokenizers import Tokenizer
    from scalelab.lm.chat import load_conversations, render
    tok = Tokenizer.from_file("runs/demo/tokenizer/tokenizer.json")
    for messages in load_conversations("my_chats.jsonl"):      # JSONL {"messages": [...]}, Alpaca or ShareGPT
        ids, mask = render(tok, messages)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scalelab.common import UsageError, atomic_write_text
from scalelab.lm.special_tokens import (
    ASSISTANT,
    BOS,
    END,
    PAD,
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    backend,
    encode_text,
)

# Kept on one line: Jinja whitespace would otherwise leak into the rendering.
CHAT_TEMPLATE = (
    "{{ '" + BOS + "' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + END + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}"
)

Messages = list[dict[str, str]]
ROLES = tuple(ROLE_TOKENS)  # ("system", "user", "assistant")


# ----------------------------------------------------------------------------------------------- validation

def validate_messages(messages: Any, where: str = "conversation", *, require_assistant: bool = True,
                      field: str = "messages") -> None:
    """Raise UsageError naming ``where`` (e.g. ``file.jsonl:12``) and the field for any malformed conversation.

    Rules: a non-empty list of {"role", "content"} dicts; role is system, user or assistant; content is a non-empty
    string without special-token text; system only first; then user and assistant alternate, starting with user;
    with ``require_assistant`` (training) at least one assistant turn.
    """
    if not isinstance(messages, list):
        raise UsageError(f"{where}: {field}: expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise UsageError(f"{where}: {field}: empty conversation")
    prev = None
    for i, msg in enumerate(messages):
        at = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise UsageError(f"{where}: {at}: expected an object with 'role' and 'content', got {type(msg).__name__}")
        if "role" not in msg:
            raise UsageError(f"{where}: {at}.role: missing")
        role = msg["role"]
        if role not in ROLE_TOKENS:
            raise UsageError(f"{where}: {at}.role: unknown role {role!r} (expected system, user or assistant)")
        if "content" not in msg:
            raise UsageError(f"{where}: {at}.content: missing")
        content = msg["content"]
        if not isinstance(content, str):
            raise UsageError(f"{where}: {at}.content: expected a string, got {type(content).__name__}")
        if not content.strip():
            raise UsageError(f"{where}: {at}.content: empty")
        for special in SPECIAL_TOKENS:
            if special in content:
                raise UsageError(f"{where}: {at}.content: contains the special token text {special!r}")
        if role == "system":
            if i != 0:
                raise UsageError(f"{where}: {at}.role: a system message may only come first")
        elif prev in (None, "system"):
            if role != "user":
                raise UsageError(f"{where}: {at}.role: the first turn must be 'user', got {role!r}")
        elif role == prev:
            raise UsageError(f"{where}: {at}.role: {role!r} follows {prev!r}; user and assistant turns must alternate")
        prev = role
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise UsageError(f"{where}: {field}: no assistant turn (nothing to train on)")


# ----------------------------------------------------------------------------------------------- rendering

def _special_id(tok: Any, token: str) -> int:
    idx = tok.token_to_id(token)
    if idx is None:
        raise UsageError(f"tokenizer has no special token {token!r} (was it trained with scalelab's special tokens?)")
    return idx


def stop_token_ids(tok: Any) -> list[int]:
    """The ids generation stops at: every special token the tokenizer has. ``<|end|>`` closes a turn, and any other
    special token means the model has left the answer (a new document, a new turn), so chat, sample and serve stop
    on the same set."""
    tok = backend(tok)
    return [i for i in (tok.token_to_id(t) for t in SPECIAL_TOKENS) if i is not None]


def render(tok: Any, messages: Messages, where: str = "conversation") -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and its loss mask (1 on assistant content + its <|end|>, 0 elsewhere)."""
    validate_messages(messages, where, require_assistant=False)
    tok = backend(tok)
    end_id = _special_id(tok, END)
    ids = [_special_id(tok, BOS)]
    mask = [0]
    for msg in messages:
        content_ids = encode_text(tok, msg["content"])
        train = 1 if msg["role"] == "assistant" else 0
        ids += [_special_id(tok, ROLE_TOKENS[msg["role"]]), *content_ids, end_id]
        mask += [0] + [train] * (len(content_ids) + 1)
    return ids, mask


def render_prompt(tok: Any, messages: Messages, where: str = "conversation") -> list[int]:
    """Token ids of a prompt for generation: the conversation (ending with a user turn) then ``<|assistant|>``."""
    validate_messages(messages, where, require_assistant=False)
    if messages[-1]["role"] != "user":
        raise UsageError(f"{where}: messages[{len(messages) - 1}].role: a prompt must end with a user turn")
    ids, _ = render(tok, messages, where)
    return ids + [_special_id(backend(tok), ASSISTANT)]


def render_text(messages: Messages, add_generation_prompt: bool = False) -> str:
    """The template's text (special tokens as strings), rendered with Jinja exactly as Hugging Face does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=add_generation_prompt)


def has_chat_template(tokenizer_dir: Path) -> bool:
    """True when the tokenizer folder carries a chat template (tokenizer_config.json or chat_template.jinja)."""
    if (tokenizer_dir / "chat_template.jinja").is_file():
        return True
    try:
        config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def install_chat_template(tokenizer_dir: str | Path) -> Path:
    """Add or update ``chat_template`` (and bos/eos/pad names) in ``tokenizer_config.json`` under ``tokenizer_dir``.

    ``chat_template.jinja`` is written too: recent transformers versions prefer it over the config entry, so the two
    must never disagree. Returns the config path.
    """
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise UsageError(f"{tokenizer_dir}: tokenizer folder not found")
    path = tokenizer_dir / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(config, dict):
            raise UsageError(f"{path}: expected a JSON object")
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.setdefault("bos_token", BOS)
    config.setdefault("eos_token", END)
    config.setdefault("pad_token", PAD)
    config["chat_template"] = CHAT_TEMPLATE
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(tokenizer_dir / "chat_template.jinja", CHAT_TEMPLATE)
    return path


# ----------------------------------------------------------------------------------------------- conversation files

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
FORMATS = ("auto", "messages", "alpaca", "sharegpt")


def _iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, object) for each record of a JSONL file or a JSON array file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.lstrip().startswith("["):
        # JSONL: split on '\n' only (U+2028 inside records is not a line break)
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        return
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    lineno, counted = 1, 0

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    def bad(p: int, msg: str) -> UsageError:
        return UsageError(f"{path}:{text.count(chr(10), 0, p) + 1}: invalid JSON ({msg})")

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        if pos >= len(text):
            raise bad(pos, "unexpected end of file")
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        lineno += text.count("\n", counted, pos)
        counted = pos
        yield lineno, obj
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] == "]":
            if text[pos + 1:].strip():
                raise bad(pos + 1, "extra data after the top-level array")
            return
        else:
            raise bad(pos, "expected ',' or ']' between records")


def _detect(record: Any, where: str) -> str:
    if isinstance(record, dict):
        if "messages" in record:
            return "messages"
        if "conversations" in record:
            return "sharegpt"
        if "instruction" in record:
            return "alpaca"
    raise UsageError(f"{where}: cannot tell the format: expected a 'messages', 'conversations' (ShareGPT) or "
                     "'instruction' (Alpaca) field")


def _text_field(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key, "" if not required else None)
    if value is None:
        raise UsageError(f"{where}: {key}: missing")
    if not isinstance(value, str):
        raise UsageError(f"{where}: {key}: expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise UsageError(f"{where}: {key}: empty")
    return value


def _from_alpaca(record: dict, where: str) -> Messages:
    instruction = _text_field(record, "instruction", where)
    extra = _text_field(record, "input", where, required=False)
    output = _text_field(record, "output", where)
    user = instruction.strip() + ("\n\n" + extra.strip() if extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}]


def _from_sharegpt(record: dict, where: str) -> Messages:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise UsageError(f"{where}: conversations: expected a list, got {type(turns).__name__}")
    messages: Messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"].strip()})
    for i, turn in enumerate(turns):
        at = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise UsageError(f"{where}: {at}: expected an object with 'from' and 'value'")
        who = turn.get("from")
        if who not in SHAREGPT_ROLES:
            raise UsageError(f"{where}: {at}.from: unknown role {who!r} (expected human, gpt or system)")
        value = _text_field(turn, "value", f"{where}: {at}")
        messages.append({"role": SHAREGPT_ROLES[who], "content": value})
    return messages


def _from_messages(record: dict, where: str) -> Messages:
    messages = record["messages"]
    if isinstance(messages, list):
        # keep only the OpenAI fields we render; validation names anything else that is wrong
        messages = [{k: m[k] for k in ("role", "content") if k in m} if isinstance(m, dict) else m for m in messages]
    return messages


def load_conversations(path: str | Path, fmt: str = "auto", require_assistant: bool = True) -> list[Messages]:
    """Read conversations from JSONL ``{"messages": [...]}``, Alpaca JSON(L) or ShareGPT JSON(L).

    ``fmt`` is auto (from the first record's keys), messages, alpaca or sharegpt. Errors name file:line and field.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise UsageError(f"{path}: unknown conversation format {fmt!r} (choose {', '.join(FORMATS)})")
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    out: list[Messages] = []
    for lineno, record in _iter_records(path):
        where = f"{path}:{lineno}"
        kind = _detect(record, where) if fmt == "auto" else fmt
        if not isinstance(record, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if kind == "messages":
            if "messages" not in record:
                raise UsageError(f"{where}: messages: missing")
            messages = _from_messages(record, where)
        elif kind == "sharegpt":
            if "conversations" not in record:
                raise UsageError(f"{where}: conversations: missing")
            messages = _from_sharegpt(record, where)
        else:
            messages = _from_alpaca(record, where)
        validate_messages(messages, where, require_assistant=require_assistant)
        out.append(messages)
    if not out:
        raise UsageError(f"{path}: no conversations in the file")
    return out
