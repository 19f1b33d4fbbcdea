"""Summarise: a docstring or documentation section -> its one-line summary; scored with ROUGE-L F1.

    from scalelab.lm.posttrain.tasks.summarise import SummariseTask
    conv = SummariseTask().train_conversations(1, seed=0)[0]
    # user: "Summarise in one line:\\n\\ndef quote(s, safe='/'):\\n<the rest of the docstring>"
    # assistant: the docstring's summary line

Sources: standard-library docstrings (module, class and function) whose first paragraph is one short line and
which say more after it; and the sections of ``pydoc_data.topics`` (the language reference shipped with Python),
summarised by their heading. Stdlib top-level packages and pydoc topics are split train/eval by a hash of their name.
ROUGE-L is the LCS-based F1 of Lin (2004) on lowercased words, as the ``rouge-score`` package computes it without
stemming.
"""

from __future__ import annotations

import ast
import functools
import random
import re
from pathlib import Path

from scalelab.lm.data.corpus import stdlib_dir
from scalelab.lm.posttrain.tasks.base import Example, Messages, Task, is_eval_key, rouge_l, sample_pool, split_end
from scalelab.lm.posttrain.tasks.coding import module_name, stdlib_modules

MAX_INPUT_CHARS = 600
_UNDERLINE = re.compile(r"^([*=\-~^])\1{2,}\s*$")


def _clip(paragraphs: list[str], limit: int = MAX_INPUT_CHARS) -> str:
    out: list[str] = []
    for p in paragraphs:
        if out and sum(len(x) + 2 for x in out) + len(p) > limit:
            break
        out.append(p if len(p) <= limit else p[:limit].rsplit(" ", 1)[0] + " ...")
    return "\n\n".join(out)


@functools.lru_cache(maxsize=4096)
def docstrings_in_file(path: str) -> tuple[dict, ...]:
    """(header, body, summary) for each docstring whose summary line is short and which has more to say."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        paragraphs = [p.strip() for p in doc.split("\n\n") if p.strip()]
        if len(paragraphs) < 2 or "\n" in paragraphs[0] or not 10 <= len(paragraphs[0]) <= 120 \
                or paragraphs[0].endswith(":"):
            continue
        body = _clip(paragraphs[1:])
        if len(body) < 60:
            continue
        if isinstance(node, ast.Module):
            header = f"Module {module_name(Path(path), stdlib_dir())}:"
        elif isinstance(node, ast.ClassDef):
            header = f"class {node.name}:"
        else:
            header = f"def {node.name}({ast.unparse(node.args)}):"
        out.append({"header": header, "body": body, "summary": paragraphs[0]})
    return tuple(out)


@functools.lru_cache(maxsize=1)
def topic_sections() -> tuple[dict, ...]:
    """Each titled section of pydoc's topics: (topic, heading, first paragraphs of prose)."""
    from pydoc_data.topics import topics

    out = []
    for topic in sorted(topics):
        lines = topics[topic].split("\n")
        heads = [i for i in range(len(lines) - 1)
                 if lines[i].strip() and _UNDERLINE.match(lines[i + 1]) and len(lines[i + 1].strip()) >= 3]
        for n, i in enumerate(heads):
            end = heads[n + 1] if n + 1 < len(heads) else len(lines)
            text = "\n".join(lines[i + 2:end])
            # prose only: grammar and code blocks are indented
            paras = [" ".join(p.split()) for p in text.split("\n\n")
                     if p.strip() and not p.startswith(" ") and "::=" not in p]
            body = _clip(paras)
            if len(body) >= 60 and len(lines[i].strip()) <= 80:
                out.append({"topic": topic, "header": "", "body": body, "summary": lines[i].strip()})
    return tuple(out)


class SummariseTask(Task):
    """Docstring / documentation section -> one-line summary."""

    name = "summarise"
    few_shot_stop = ("\n",)
    few_shot_k = 3

    def __init__(self, eval_percent: int = 10, per_file: int = 2) -> None:
        self.eval_percent = eval_percent
        self.per_file = per_file

    def _pool_files(self, held_out: bool) -> list[tuple[str, str]]:
        return stdlib_modules(held_out, self.eval_percent, salt="summarise")

    def _topics(self, held_out: bool) -> list[dict]:
        seen, out = set(), []
        for s in topic_sections():  # the same section can sit under several topics: split by its heading
            if is_eval_key(s["summary"], self.eval_percent, salt="summarise") == held_out and s["body"] not in seen:
                seen.add(s["body"])
                out.append(dict(s, key=f"topic:{s['topic']}:{s['summary']}"))
        return out

    @functools.cached_property
    def _eval_sources(self) -> set[str]:
        """Every held-out text, so that a docstring copied into a training module cannot leak (e.g. _pyio/io)."""
        docs = [d for _, path in self._pool_files(True) for d in docstrings_in_file(path)]
        return {self.source(d) for d in docs + self._topics(True)}

    def _draw(self, n: int, seed: int, held_out: bool) -> list[dict]:
        rng = random.Random(seed)
        files = self._pool_files(held_out)
        topics = self._topics(held_out)
        rng.shuffle(files)
        n_topics = min(len(topics), n // 4)  # about a quarter from the language reference
        picked = [topics[i] for i in rng.sample(range(len(topics)), n_topics)]
        for mod, path in files:
            if len(picked) >= n:
                break
            docs = list(docstrings_in_file(path))
            picked += [dict(d, key=f"{mod}:{d['header']}") for d in rng.sample(docs, min(self.per_file, len(docs)))]
        if not held_out:
            picked = [d for d in picked if self.source(d) not in self._eval_sources]
        if held_out or len(picked) >= n:
            rng.shuffle(picked)
            return picked[:n]
        return sample_pool(picked, n, rng)

    @staticmethod
    def source(item: dict) -> str:
        return f"{item['header']}\n{item['body']}" if item["header"] else item["body"]

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        return [[{"role": "user", "content": f"Summarise in one line:\n\n{self.source(d)}"},
                 {"role": "assistant", "content": d["summary"]}] for d in self._draw(n, seed, held_out=False)]

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        return [Example(self.name, [{"role": "user", "content": f"Summarise in one line:\n\n{self.source(d)}"}],
                        {"summary": d["summary"], "source": self.source(d)}, d["key"])
                for d in self._draw(n, seed + 1, held_out=True)]

    def score(self, example: Example, completion: str) -> dict[str, float]:
        text, ended = split_end(completion)
        first = next((ln for ln in text.strip().split("\n") if ln.strip()), "")
        r = rouge_l(example.reference["summary"], first)
        return {"score": r["f1"], "rouge_l_precision": r["precision"], "rouge_l_recall": r["recall"],
                "ended": float(ended)}

    def few_shot_prompt(self, example: Example, k: int | None = None, seed: int = 0) -> str:
        k = self.few_shot_k if k is None else k
        shots = [f"Text:\n{self.source(d)}\nSummary: {d['summary']}"
                 for d in self._draw(k, seed + 12345, held_out=False)]
        return "\n\n\n".join([*shots, f"Text:\n{example.reference['source']}\nSummary:"])
