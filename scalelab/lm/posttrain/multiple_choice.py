"""Multiple-choice evaluation by log-likelihood: ARC, HellaSwag, PIQA, Winogrande, COPA, ... (data_sources).

Each item is a list of (context, continuation) options and the index of the gold one. The model scores every option
by the log-probability of the continuation's tokens given the context; the option with the highest total wins
(``accuracy``), and, as lm-evaluation-harness's ``acc_norm`` does, the highest log-probability per byte of the
continuation wins ``accuracy_norm``. Options are batched (padded to the longest, sorted by length) so that scoring is
a handful of forward passes, not one per option.

Formats read (MosaicML llm-foundry's ICL JSONL, and llama.cpp's HellaSwag text):
  {"query": ..., "choices": [...], "gold": i}                      -> context = query, continuation = choice
  {"context_options": [...], "continuation": ..., "gold": i}       -> context = option, continuation shared
  hellaswag_val_full.txt.bz2: 6 lines per task (context, gold, 4 endings)

    from scalelab.lm.posttrain.multiple_choice import load_mc_set, evaluate_mc
    items = load_mc_set("arc_easy", limit=100)
    result = evaluate_mc(model, tokenizer, items)  # {"accuracy": ..., "accuracy_norm": ..., "chance": ..., "n": ...}
"""

from __future__ import annotations

import bz2
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scalelab import data_sources
from scalelab.common import UsageError, progress
from scalelab.lm.special_tokens import encode_text

# name -> named set (scalelab/data_sources.py) / file in it
MC_SETS: dict[str, str] = {
    "arc_easy": "arc/arc_easy_test.jsonl",
    "arc_challenge": "arc/arc_challenge_test.jsonl",
    "hellaswag": "hellaswag/hellaswag_val_full.txt.bz2",
    "piqa": "piqa/piqa_validation.jsonl",
    "winogrande": "winogrande/winogrande_dev.jsonl",
    "winograd_wsc": "winograd_wsc/wsc273.jsonl",
    "copa": "copa/copa.jsonl",
    "openbookqa": "openbookqa/openbookqa_test.jsonl",
    "commonsense_qa": "commonsense_qa/commonsense_qa_dev.jsonl",
    "boolq": "boolq/boolq_dev.jsonl",
}


@dataclass
class MCItem:
    """One question: option i is ``contexts[i]`` followed by ``continuations[i]``; ``gold`` is the right option."""

    contexts: list[str]
    continuations: list[str]
    gold: int


# ----------------------------------------------------------------------------------------------- loading

def _item_from_record(rec: Any, where: str) -> MCItem:
    if not isinstance(rec, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    gold = rec.get("gold")
    if "choices" in rec and "query" in rec:
        choices = rec["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise UsageError(f"{where}: choices: expected a list of at least two strings")
        item = MCItem([str(rec["query"])] * len(choices), list(choices), gold)
    elif "context_options" in rec and "continuation" in rec:
        options = rec["context_options"]
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(c, str) for c in options):
            raise UsageError(f"{where}: context_options: expected a list of at least two strings")
        item = MCItem(list(options), [str(rec["continuation"])] * len(options), gold)
    else:
        raise UsageError(f"{where}: expected fields query/choices/gold or context_options/continuation/gold")
    if not isinstance(gold, int) or not 0 <= gold < len(item.contexts):
        raise UsageError(f"{where}: gold: expected an option index in 0..{len(item.contexts) - 1}, got {gold!r}")
    return item


def load_mc_file(path: str | Path) -> list[MCItem]:
    """Read an llm-foundry ICL JSONL file or the HellaSwag 6-lines-per-task text (.txt or .txt.bz2)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: multiple-choice file not found")
    if path.name.endswith((".txt", ".txt.bz2")):
        text = (bz2.open(path, "rt", encoding="utf-8") if path.suffix == ".bz2" else path.open(encoding="utf-8")).read()
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) % 6:
            raise UsageError(f"{path}: expected 6 lines per task (context, gold, 4 endings), got {len(lines)} lines")
        items = []
        for i in range(0, len(lines), 6):
            try:
                gold = int(lines[i + 1])
            except ValueError:
                raise UsageError(f"{path}:{i + 2}: gold: expected an integer, got {lines[i + 1]!r}") from None
            items.append(_item_from_record({"query": lines[i], "choices": lines[i + 2:i + 6], "gold": gold},
                                           f"{path}:{i + 1}"))
        return items
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        items.append(_item_from_record(rec, f"{path}:{lineno}"))
    return items


def load_mc_set(name: str, limit: int | None = None, seed: int = 0, data_dir: str | Path | None = None
                ) -> list[MCItem]:
    """A named set (see ``MC_SETS``); ``limit`` items drawn with a fixed seed (all when None or <= 0)."""
    if name not in MC_SETS:
        raise UsageError(f"unknown multiple-choice set '{name}' (choose {', '.join(MC_SETS)})")
    set_name, rel = MC_SETS[name].split("/", 1)
    items = load_mc_file(data_sources.data_file(set_name, rel, folder=data_dir))
    if limit and limit > 0 and limit < len(items):
        rng = random.Random(seed)
        items = [items[i] for i in sorted(rng.sample(range(len(items)), limit))]
    return items


# ----------------------------------------------------------------------------------------------- scoring

def option_tokens(tok: Any, context: str, continuation: str, bos_id: int | None = 0) -> tuple[list[int], int]:
    """(ids, n_cont): the context's tokens then the continuation's (joined by one space unless one is there)."""
    sep = "" if (not context or context[-1].isspace() or continuation[:1].isspace()) else " "
    ctx = ([bos_id] if bos_id is not None else []) + encode_text(tok, context)
    cont = encode_text(tok, sep + continuation)
    if not cont:
        raise UsageError(f"empty continuation after {context[-40:]!r}")
    return ctx + cont, len(cont)


@torch.no_grad()
def continuation_logprobs(model: torch.nn.Module, sequences: list[tuple[list[int], int]], batch_size: int = 16,
                          max_len: int | None = None, show_progress: bool = False) -> list[float]:
    """Sum of log p(continuation token | prefix) for each (ids, n_cont); long sequences keep their last tokens."""
    device = next(model.parameters()).device
    max_len = max_len or model.config.max_seq_len
    out = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in (progress(batches, desc="log-likelihood", leave=False) if show_progress else batches):
        rows = []
        for i in batch:
            ids, n_cont = sequences[i]
            # keep the last max_len + 1 tokens (the last is only a target), as lm-evaluation-harness does; a
            # continuation longer than the context is scored on the part that fits
            rows.append((ids[-(max_len + 1):], min(n_cont, max_len)))
        width = max(len(r[0]) for r in rows) - 1
        x = torch.zeros(len(rows), width, dtype=torch.long)
        y = torch.full((len(rows), width), -1, dtype=torch.long)
        for j, (ids, n_cont) in enumerate(rows):
            t = torch.tensor(ids)
            x[j, :len(ids) - 1] = t[:-1]
            y[j, len(ids) - 1 - n_cont:len(ids) - 1] = t[-n_cont:]  # targets only on the continuation
        logits, _ = model(x.to(device))
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        picked = logp.gather(-1, y.clamp(min=0).to(device)[..., None])[..., 0]  # (B, T)
        sums = (picked * (y.to(device) >= 0)).sum(-1).tolist()
        for i, s in zip(batch, sums):
            out[i] = float(s)
    return out


def evaluate_mc(model: torch.nn.Module, tok: Any, items: list[MCItem], batch_size: int = 16,
                show_progress: bool = True) -> dict[str, float]:
    """Accuracy (highest total log-likelihood) and accuracy_norm (highest per byte) over the items, plus chance."""
    if not items:
        return {"accuracy": 0.0, "accuracy_norm": 0.0, "chance": 0.0, "n": 0}
    seqs, owners = [], []
    for k, item in enumerate(items):
        for ctx, cont in zip(item.contexts, item.continuations):
            seqs.append(option_tokens(tok, ctx, cont))
            owners.append((k, len(cont.encode("utf-8")) or 1))
    scores = continuation_logprobs(model, seqs, batch_size=batch_size, show_progress=show_progress)
    per_item: list[list[tuple[float, float]]] = [[] for _ in items]
    for (k, nbytes), s in zip(owners, scores):
        per_item[k].append((s, s / nbytes))
    acc = sum(max(range(len(o)), key=lambda i: o[i][0]) == it.gold for o, it in zip(per_item, items))
    acc_norm = sum(max(range(len(o)), key=lambda i: o[i][1]) == it.gold for o, it in zip(per_item, items))
    n = len(items)
    return {"accuracy": acc / n, "accuracy_norm": acc_norm / n,
            "chance": sum(1 / len(it.contexts) for it in items) / n, "n": n}
