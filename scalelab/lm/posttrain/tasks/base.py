"""What every post-training task shares: the ``Example`` record, the ``Task`` interface, splits and text metrics.

A task gives training conversations, held-out evaluation examples that never overlap them, and a scorer:

    task = ArithmeticTask()
    train = task.train_conversations(1000, seed=0)   # list of OpenAI-style messages, last turn the assistant's
    for ex in task.eval_examples(100, seed=0):       # ex.messages ends with a user turn
        scores = task.score(ex, completion)          # {"score": 0..1, ...}
    text = task.few_shot_prompt(ex)                  # plain text for a BASE model (no chat tokens)

Convention for ``completion``: the generated text decoded with special tokens kept, up to and including ``<|end|>``
when the model produced it. Every scorer cuts at ``<|end|>`` first and reports ``ended`` (1.0 when it was there).
Train/eval separation is by a stable hash of each item's key (module name, problem text, ...), never by position, so
it holds for any ``n`` and ``seed``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from scalelab import data_sources
from scalelab.common import UsageError
from scalelab.lm.special_tokens import END, SPECIAL_TOKENS

Messages = list[dict[str, str]]
T = TypeVar("T")


@dataclass
class Example:
    """One evaluation item: the prompt ``messages`` (ending with a user turn) and what the scorer needs."""

    task: str
    messages: Messages
    reference: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def prompt_text(self) -> str:
        return self.messages[-1]["content"]


class Task:
    """Base class: subclasses set ``name`` and implement the three methods below."""

    name: str = "task"
    few_shot_stop: tuple[str, ...] = ("\n\n",)  # where a base model's continuation is cut
    few_shot_k: int = 3

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        raise NotImplementedError

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        raise NotImplementedError

    def score(self, example: Example, completion: str) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------ base-model (few-shot) form
    def few_shot_prompt(self, example: Example, k: int | None = None, seed: int = 0) -> str:
        """Plain text: k solved training examples, then this example's question and an open answer.

        The shots come from the training side of the split, so they never contain the evaluated item.
        """
        k = self.few_shot_k if k is None else k
        shots = self.train_conversations(k, seed=seed + 12345) if k > 0 else []
        parts = [f"Question: {m[-2]['content']}\nAnswer: {m[-1]['content']}" for m in shots]
        parts.append(f"Question: {example.prompt_text()}\nAnswer:")
        return "\n\n".join(parts)

    def cut_few_shot(self, text: str) -> str:
        """A base model's continuation, cut at the first stop string (it would go on with the next question)."""
        return truncate_at(text, self.few_shot_stop)


# ----------------------------------------------------------------------------------------------- helpers

def stable_hash(key: str) -> int:
    """A hash that is the same in every process and Python version (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def is_eval_key(key: str, eval_percent: int = 10, salt: str = "") -> bool:
    """The held-out side of a hash split: about ``eval_percent`` % of keys, fixed for all time."""
    return stable_hash(salt + key) % 100 < eval_percent


def sample_pool(pool: list[T], n: int, rng: random.Random) -> list[T]:
    """n items from a finite pool: a shuffled pass, repeated (reshuffled) when n exceeds the pool."""
    if not pool or n <= 0:
        return []
    out: list[T] = []
    while len(out) < n:
        order = list(pool)
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def truncate_at(text: str, stops: tuple[str, ...] | list[str]) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def split_end(completion: str) -> tuple[str, bool]:
    """(text before ``<|end|>``, whether ``<|end|>`` was generated); other special-token text is dropped."""
    ended = END in completion
    text = completion.split(END, 1)[0]
    for tok in SPECIAL_TOKENS:
        text = text.replace(tok, "")
    return text, ended


_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lowercased alphanumeric words (the tokenisation of the ``rouge-score`` package without stemming)."""
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a) * len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, candidate: str) -> dict[str, float]:
    """Sentence-level ROUGE-L (Lin 2004) with beta = 1: precision, recall and F1 of the word LCS."""
    ref, cand = words(reference), words(candidate)
    lcs = lcs_length(ref, cand)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = lcs / len(cand), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}


def bag_f1(reference: list[str], candidate: list[str]) -> float:
    """Token-bag F1 (as in SQuAD): overlap counted with multiplicity."""
    if not reference and not candidate:
        return 1.0
    common = sum((Counter(reference) & Counter(candidate)).values())
    if common == 0:
        return 0.0
    p, r = common / len(candidate), common / len(reference)
    return 2 * p * r / (p + r)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in a text, commas removed and trailing '.0' dropped ('1,234.0' -> '1234')."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    return normalise_number(found[-1])


def normalise_number(text: str) -> str:
    s = text.replace(",", "").replace("$", "").strip().rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    if s in ("-0",):
        s = "0"
    return s


def data_file(data_dir: str | Path | None, name: str, *parts: str) -> Path:
    """File ``parts`` of named set ``name``: under ``data_dir`` when given, else wherever scalelab/data_sources.py
    finds it; a UsageError that says where it looked otherwise."""
    return data_sources.data_file(name, "/".join(parts), folder=data_dir)


def read_jsonl_file(path: Path) -> list[dict[str, Any]]:
    """JSON lines, split on '\\n' only (some records hold U+2028); a bad line is a UsageError with file:line."""
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return out
