"""The special tokens, defined once. Ids 0..N-1 of every scalelab tokenizer, in this order.

A document is ``<|bos|>`` + its text. A chat is ``<|bos|>`` then, per message, ``<|role|>`` + content + ``<|end|>``;
generation is prompted with ``<|assistant|>`` and stops at ``<|end|>`` (the end-of-turn token, also the EOS for export).
"""

from __future__ import annotations

BOS = "<|bos|>"          # starts every document and every conversation
PAD = "<|pad|>"          # padding only; never a target
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"          # end of a chat turn: every assistant turn ends with it, generation stops on it

SPECIAL_TOKENS: list[str] = [BOS, PAD, SYSTEM, USER, ASSISTANT, END]
ROLE_TOKENS: dict[str, str] = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
EOS = END
