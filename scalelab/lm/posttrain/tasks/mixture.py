"""The post-training mixture: tasks (and your own conversation files) mixed by weight into one SFT set.

    from scalelab.lm.posttrain.tasks.mixture import MixtureConfig, build_mixture
    cfg = MixtureConfig(tasks=["arithmetic:3", "email:1", "conversation:2"], user_files=["mine.jsonl:1"])
    train, evals = build_mixture(cfg)   # train: shuffled list of messages; evals: {task name: [Example, ...]}

Weights are relative: task ``t`` gets round(n_train * w_t / sum(w)) training conversations (largest remainder, so
the counts add up to n_train). Every task is seeded from ``seed`` and its name, so adding a task does not change the
others' examples. Evaluation sets are the tasks' held-out examples (user files have none). Shipped configs:
configs/*_mixture.yaml (``scalelab sft --mixture-config``); sft's flags: ``--tasks arithmetic:3 email:1 --data
mine.jsonl:2``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from scalelab.common import UsageError, print0, progress
from scalelab.lm.chat import validate_messages
from scalelab.lm.posttrain.tasks.arithmetic import ArithmeticTask, GSM8KTask
from scalelab.lm.posttrain.tasks.base import Example, Messages, Task, stable_hash
from scalelab.lm.posttrain.tasks.coding import MBPPTask, StdlibCodeTask
from scalelab.lm.posttrain.tasks.conversation import ConversationTask
from scalelab.lm.posttrain.tasks.emails import EmailTask
from scalelab.lm.posttrain.tasks.summarise import SummariseTask
from scalelab.lm.posttrain.tasks.user_data import UserDataTask, user_task_name

TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticTask,
    "gsm8k": GSM8KTask,
    "email": EmailTask,
    "code": StdlibCodeTask,
    "mbpp": MBPPTask,
    "summarise": SummariseTask,
    "conversation": ConversationTask,
}


@dataclass
class MixtureConfig:
    tasks: list[str] = field(default_factory=lambda: ["arithmetic:3", "email:1", "conversation:2", "summarise:1",
                                                      "code:1"],
                             metadata={"help": "tasks as name:weight (weight relative, default 1; 0 = eval only). "
                                               f"Known: {', '.join(TASKS)}"})
    user_files: list[str] = field(default_factory=list, metadata={
        "help": "your conversation files (JSONL messages, Alpaca JSON, ShareGPT) as path:weight"})
    n_train: int = field(default=5000, metadata={"ge": 0, "help": "training conversations in the whole mixture"})
    n_eval: int = field(default=50, metadata={"ge": 0, "help": "held-out evaluation examples per task"})
    seed: int = field(default=0, metadata={"ge": 0, "help": "seed of every task's sampling and of the final shuffle"})
    arithmetic_digits: int = field(default=3, metadata={"ge": 1, "le": 18,
        "help": "largest operand size of the arithmetic task, digits"})
    max_chars: int = field(default=1500, metadata={"ge": 1, "help": "longest public chat kept, characters (all turns)"})
    public_chats: bool = field(default=True, metadata={"help": "add OASST, Dolly and FastChat chats to conversation"})
    data_dir: str | None = field(default=None, metadata={
        "help": "data folder holding the named sets (default: scalelab/data_sources.py: $SCALELAB_DATA, cache)"})

    def __post_init__(self) -> None:
        if self.n_train < 0 or self.n_eval < 0:
            raise ValueError("n_train and n_eval must be >= 0")
        for spec in self.tasks:
            name, _ = parse_weighted(spec, "tasks")
            if name not in TASKS:
                raise ValueError(f"tasks: unknown task {name!r} (known: {', '.join(TASKS)})")
        for spec in self.user_files:
            parse_weighted(spec, "user_files")


def parse_weighted(spec: str, field_name: str) -> tuple[str, float]:
    """'name:3' -> ('name', 3.0); a missing or non-numeric suffix means weight 1 (so paths with ':' still work)."""
    head, sep, tail = spec.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if weight < 0:
            raise UsageError(f"{field_name}: {spec!r}: weight must be >= 0")
        return head, weight
    return spec, 1.0


def make_task(name: str, cfg: MixtureConfig) -> Task:
    """A task instance with the options the config sets."""
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    kwargs: dict[str, Any] = {
        "arithmetic": {"max_digits": cfg.arithmetic_digits},
        "gsm8k": {"data_dir": cfg.data_dir},
        "mbpp": {"data_dir": cfg.data_dir},
        "conversation": {"data_dir": cfg.data_dir, "public": cfg.public_chats, "max_chars": cfg.max_chars},
    }.get(name, {})
    return TASKS[name](**kwargs)


def split_counts(total: int, weights: list[float]) -> list[int]:
    """Integer counts proportional to weights that sum to ``total`` (largest remainder)."""
    s = sum(weights)
    if total <= 0 or s <= 0:
        return [0] * len(weights)
    exact = [total * w / s for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def planned_counts(cfg: MixtureConfig) -> dict[str, int]:
    """Training conversations each task and user file contributes: the shares ``build_mixture`` draws."""
    entries = [parse_weighted(spec, "tasks") for spec in cfg.tasks]
    entries += [(user_task_name(path), w) for path, w in (parse_weighted(s, "user_files") for s in cfg.user_files)]
    counts = split_counts(cfg.n_train, [w for _, w in entries])
    return {name: count for (name, _), count in zip(entries, counts)}


def build_mixture(cfg: MixtureConfig) -> tuple[list[Messages], dict[str, list[Example]]]:
    """(shuffled training conversations, {task name: held-out examples})."""
    entries: list[tuple[str, Task, float]] = []
    for spec in cfg.tasks:
        name, weight = parse_weighted(spec, "tasks")
        entries.append((name, make_task(name, cfg), weight))
    for spec in cfg.user_files:
        path, weight = parse_weighted(spec, "user_files")
        task = UserDataTask(path)
        entries.append((task.name, task, weight))
    if not entries:
        raise UsageError("tasks: the mixture is empty (give at least one task or user file)")
    counts = split_counts(cfg.n_train, [w for _, _, w in entries])
    train: list[Messages] = []
    evals: dict[str, list[Example]] = {}
    for (name, task, _), count in progress(list(zip(entries, counts)), desc="mixture", unit="task"):
        seed = cfg.seed + stable_hash(name) % 1_000_003
        convs = task.train_conversations(count, seed=seed)
        for i, messages in enumerate(convs):
            validate_messages(messages, f"task {name} conversation {i}")
        train += convs
        if not isinstance(task, UserDataTask) and cfg.n_eval > 0:
            evals[name] = task.eval_examples(cfg.n_eval, seed=cfg.seed)
    random.Random(cfg.seed).shuffle(train)
    for line in data_report([task for _, task, _ in entries]):
        print0(line)
    return train, evals


def data_report(tasks: list[Task]) -> list[str]:
    """Which named data sets the mixture read, and which were missing (their share went to synthetic examples)."""
    lines = []
    for task in tasks:
        used, missing = getattr(task, "sets_used", {}), getattr(task, "sets_missing", [])
        for name, path in used.items():
            lines.append(f"mixture data: task {task.name} uses {name} ({path})")
        for name in missing:
            lines.append(f"mixture data: task {task.name}: {name} not found, synthetic examples replace it "
                         f"(`scalelab data pull {name}` fetches it)")
    return lines
