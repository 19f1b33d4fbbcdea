"""The special tokens, defined once. Ids 0..N-1 of every scalelab tokenizer, in this order.

A document is ``<|bos|>`` + its text. A chat is ``<|bos|>`` then, per message, ``<|role|>`` + content + ``<|end|>``;
generation is prompted with ``<|assistant|>`` and stops at ``<|end|>`` (the end-of-turn token, also the EOS for export).
"""

from __future__ import annotations

from typing import Any

BOS = "<|bos|>"          # starts every document and every conversation
PAD = "<|pad|>"          # padding only; never a target
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"          # end of a chat turn: every assistant turn ends with it, generation stops on it

SPECIAL_TOKENS: list[str] = [BOS, PAD, SYSTEM, USER, ASSISTANT, END]
ROLE_TOKENS: dict[str, str] = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
EOS = END


def backend(tok: Any) -> Any:
    """The ``tokenizers.Tokenizer`` under a tokenizer: a transformers fast tokenizer's, or the tokenizer itself, so
    every caller accepts both."""
    return getattr(tok, "backend_tokenizer", tok)


def encode_text(tok: Any, text: str) -> list[int]:
    """Ids of plain text, no special token added (prompts add theirs explicitly)."""
    return backend(tok).encode(text, add_special_tokens=False).ids
