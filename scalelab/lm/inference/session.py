"""A conversation with a model, for any front end (the terminal chat, a notebook, a test): the system prompt, the
history trimmed to fit the context, and one reply streamed at a time.

    from scalelab.lm.inference.session import ChatSession, Sampling
    session = ChatSession(model, tokenizer, Sampling(max_tokens=128, temperature=0.7), system="Be brief.")
    ids, dropped = session.prepare("Hello!")            # prompt ids; the oldest turns dropped to fit, counted
    reply = "".join(session.stream(ids))                # text deltas as they are decoded
    session.commit("Hello!", reply)                     # the turn joins the history
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scalelab.common import UsageError
from scalelab.lm.chat import render_prompt, stop_token_ids
from scalelab.lm.inference.batching import generate
from scalelab.lm.inference.textstream import TextStream


@dataclass
class Sampling:
    """How replies are drawn: the budget and the sampling values (``seed`` < 0: random; reply i uses seed + i)."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 1.0
    seed: int = -1


class ChatSession:
    """The conversation state: system prompt, history, and streaming one reply at a time."""

    def __init__(self, model: Any, tokenizer: Any, settings: Sampling, system: str = "") -> None:
        self.model, self.tok, self.cfg = model, tokenizer, settings
        self.system = system.strip()
        self.history: list[dict[str, str]] = []
        self.context = model.config.max_seq_len
        self.stop_ids = stop_token_ids(tokenizer)
        self.replies = 0

    def reset(self) -> None:
        self.history = []

    def _messages(self, history: list[dict[str, str]], user: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + history + [{"role": "user", "content": user}]

    def prepare(self, user: str) -> tuple[list[int], int]:
        """Prompt ids for the next reply and how many old turns were dropped to fit; UsageError if it cannot fit."""
        reserve = min(self.cfg.max_tokens, max(1, self.context // 4))  # room kept for the reply
        history, dropped = list(self.history), 0
        while True:
            ids = render_prompt(self.tok, self._messages(history, user), where="message")
            if len(ids) + reserve <= self.context or not history:
                break
            history, dropped = history[2:], dropped + 1  # drop the oldest user + assistant turn
        if len(ids) >= self.context:
            raise UsageError(f"the message is too long: the prompt is {len(ids)} tokens but the model's context "
                             f"length is {self.context} tokens; shorten it")
        self.history = history
        return ids, dropped

    def stream(self, ids: list[int]) -> Iterator[str]:
        seed = None if self.cfg.seed < 0 else self.cfg.seed + self.replies
        self.replies += 1
        text = TextStream(self.tok)
        c = self.cfg
        for token in generate(self.model, ids, c.max_tokens, c.temperature, c.top_k, c.top_p, seed, self.stop_ids):
            if token in self.stop_ids:
                break
            delta = text.push(token)
            if delta:
                yield delta
        rest = text.flush()
        if rest:
            yield rest

    def commit(self, user: str, reply: str) -> bool:
        """Keep the turn in the history (False when the reply is empty: the pair is dropped to keep turns valid)."""
        if not reply.strip():
            return False
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return True
