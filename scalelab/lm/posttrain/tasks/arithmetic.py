"""Arithmetic: multi-digit addition, subtraction and multiplication asked in words (exact match); GSM8K word problems.

    from scalelab.lm.posttrain.tasks.arithmetic import ArithmeticTask
    task = ArithmeticTask(max_digits=3)
    task.train_conversations(2, seed=0)   # [[{"role": "user", "content": "What is 417 minus 36?"},
                                          #   {"role": "assistant", "content": "381"}], ...]

Answers are the bare number, so a tiny model can learn them. Problems are split train/eval by a hash of
(operation, a, b): a held-out problem is never trained on, however it is phrased. GSM8K (for larger models) uses the
data set's own train and test files; its score is the final answer after '####' (else the last number).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from scalelab.lm.posttrain.tasks.base import (
    Example,
    Messages,
    Task,
    data_file,
    is_eval_key,
    last_number,
    normalise_number,
    read_jsonl_file,
    sample_pool,
    split_end,
)

PHRASES = {
    "+": ["What is {a} plus {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?", "Calculate {a} + {b}.",
          "What do you get when you add {b} to {a}?", "{a} + {b} = ?", "How much is {a} plus {b}?"],
    "-": ["What is {a} minus {b}?", "Subtract {b} from {a}.", "Calculate {a} - {b}.", "What is {a} take away {b}?",
          "{a} - {b} = ?", "How much is {a} minus {b}?", "What do you get when you subtract {b} from {a}?"],
    "*": ["What is {a} times {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?",
          "Calculate {a} * {b}.", "What is {a} multiplied by {b}?", "{a} x {b} = ?", "How much is {a} times {b}?"],
}
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class ArithmeticTask(Task):
    """Integer +, -, * with up to ``max_digits`` digits (the second factor of a product has at most 2)."""

    name = "arithmetic"

    def __init__(self, max_digits: int = 3, eval_percent: int = 10) -> None:
        if max_digits < 1:
            raise ValueError("max_digits must be >= 1")
        self.max_digits = max_digits
        self.eval_percent = eval_percent

    def _operand(self, rng: random.Random, max_digits: int) -> int:
        digits = rng.randint(1, max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def _problem(self, rng: random.Random) -> tuple[str, int, int]:
        op = rng.choice("+-*")
        a = self._operand(rng, self.max_digits)
        b = self._operand(rng, min(2, self.max_digits) if op == "*" else self.max_digits)
        if op == "-" and b > a and rng.random() < 0.8:  # mostly non-negative results
            a, b = b, a
        return op, a, b

    def _draw(self, n: int, seed: int, held_out: bool, unique: bool) -> list[tuple[str, int, int, str]]:
        rng = random.Random(seed)
        out, seen = [], set()
        for _ in range(200 * n + 1000):
            if len(out) >= n:
                break
            op, a, b = self._problem(rng)
            key = f"{op}:{a}:{b}"
            if is_eval_key(key, self.eval_percent, salt="arith") != held_out or (unique and key in seen):
                continue
            seen.add(key)
            out.append((op, a, b, rng.choice(PHRASES[op]).format(a=a, b=b)))
        return out

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        return [[{"role": "user", "content": q}, {"role": "assistant", "content": str(OPS[op](a, b))}]
                for op, a, b, q in self._draw(n, seed, held_out=False, unique=False)]

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        return [Example(self.name, [{"role": "user", "content": q}], {"answer": str(OPS[op](a, b))}, f"{op}:{a}:{b}")
                for op, a, b, q in self._draw(n, seed + 1, held_out=True, unique=True)]

    def score(self, example: Example, completion: str) -> dict[str, float]:
        text, ended = split_end(completion)
        answer = example.reference["answer"]
        exact = normalise_number(text) == answer
        return {"score": float(last_number(text) == answer), "exact": float(exact), "ended": float(ended)}


# ----------------------------------------------------------------------------------------------- GSM8K

_CALC = re.compile(r"<<[^>]*>>")


def gsm8k_final_answer(text: str) -> str | None:
    """The number after the last '####', else the last number in the text."""
    if "####" in text:
        found = last_number(text.rsplit("####", 1)[1])
        if found is not None:
            return found
    return last_number(text)


class GSM8KTask(Task):
    """Grade-school math word problems (openai/grade-school-math): train on train.jsonl, evaluate on test.jsonl."""

    name = "gsm8k"
    few_shot_k = 4

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = data_dir
        self._cache: dict[str, list[dict]] = {}
        self.sets_used: dict[str, str] = {}  # set name -> folder read (the mixture reports it)

    def _rows(self, split: str) -> list[dict]:
        if split not in self._cache:
            path = data_file(self.data_dir, "gsm8k", f"{split}.jsonl")
            self.sets_used["gsm8k"] = str(path.parent)
            self._cache[split] = read_jsonl_file(path)
        return self._cache[split]

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        test_questions = {r["question"] for r in self._rows("test")}
        rows = [r for r in self._rows("train") if r["question"] not in test_questions]
        return [[{"role": "user", "content": r["question"]},
                 {"role": "assistant", "content": _CALC.sub("", r["answer"])}]
                for r in sample_pool(rows, n, random.Random(seed))]

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        rows = list(enumerate(self._rows("test")))
        random.Random(seed).shuffle(rows)
        return [Example(self.name, [{"role": "user", "content": r["question"]}],
                        {"answer": gsm8k_final_answer(r["answer"])}, f"gsm8k-test-{i}") for i, r in rows[:n]]

    def score(self, example: Example, completion: str) -> dict[str, float]:
        text, ended = split_end(completion)
        return {"score": float(gsm8k_final_answer(text) == example.reference["answer"]), "ended": float(ended)}
