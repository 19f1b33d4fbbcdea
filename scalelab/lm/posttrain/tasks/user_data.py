"""Your own data: conversation files (JSONL ``messages``, Alpaca JSON, ShareGPT) joining the mixture with a weight.

    from scalelab.lm.posttrain.tasks.user_data import UserDataTask
    UserDataTask("my_chats.jsonl").train_conversations(100, seed=0)   # sampled, repeated if the file is smaller

The file is read and validated once (errors name file:line and field, see ``scalelab.lm.chat.load_conversations``).
It has no held-out evaluation: ``eval_examples`` is empty.
"""

from __future__ import annotations

import random
from pathlib import Path

from scalelab.lm.chat import load_conversations
from scalelab.lm.posttrain.tasks.base import Example, Messages, Task, sample_pool, split_end


def user_task_name(path: str | Path) -> str:
    """How a user's conversation file is named in the mixture and its reports."""
    return f"file:{Path(path).name}"


class UserDataTask(Task):
    def __init__(self, path: str | Path, fmt: str = "auto") -> None:
        self.path = Path(path)
        self.name = user_task_name(self.path)
        self.conversations = load_conversations(self.path, fmt=fmt)

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        return sample_pool(self.conversations, n, random.Random(seed))

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        return []

    def score(self, example: Example, completion: str) -> dict[str, float]:
        _, ended = split_end(completion)
        return {"score": float(ended), "ended": float(ended)}
