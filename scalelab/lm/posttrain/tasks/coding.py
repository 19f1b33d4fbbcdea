"""Code tasks: write a stdlib function from its signature and docstring; MBPP problems checked by their unit tests.

    from scalelab.lm.posttrain.tasks.coding import MBPPTask, StdlibCodeTask
    task = StdlibCodeTask()
    conv = task.train_conversations(1, seed=0)[0]   # user: "Write this Python function: def ...: '''doc'''"
                                                    # assistant: the function (decorators and docstring dropped)
    ex = task.eval_examples(1, seed=0)[0]
    task.score(ex, completion)                      # {"score": f1 if it parses else 0, "parses", "f1", "ended"}

*code* pulls functions with a docstring and a short body out of the Python standard library with ``ast``; whole
top-level packages are held out for evaluation by a hash of their name (``json`` and ``json.decoder`` fall on the
same side). The score is token F1 of the answer's body against the real body, counted only when the answer parses.
*mbpp* (Austin et al. 2021, ``shared/data/mbpp``) keeps the paper's split: tasks 11-510 evaluate, 511-974 train,
1-10 are few-shot examples. Its score is pass@1: the answer runs in the jail of ``sandbox.run_tests`` and its three
asserts are judged outside it; with no jail on the machine scoring refuses (``SandboxUnavailable``) unless
``unsafe_exec`` is set.
"""

from __future__ import annotations

import ast
import copy
import functools
import random
import re
import textwrap
from pathlib import Path

from scalelab.lm.data.corpus import stdlib_dir, stdlib_python_files
from scalelab.lm.posttrain.tasks.base import (
    Example,
    Messages,
    Task,
    bag_f1,
    data_file,
    is_eval_key,
    read_jsonl_file,
    sample_pool,
    split_end,
)
from scalelab.lm.posttrain.tasks.sandbox import run_tests

_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")
_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(text: str) -> str:
    """The first fenced code block if there is one, else the text itself."""
    m = _FENCE.search(text)
    return (m.group(1) if m else text).strip("\n")


def code_tokens(code: str) -> list[str]:
    return _CODE_TOKEN.findall(code)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stdlib_modules(held_out: bool, eval_percent: int, salt: str) -> list[tuple[str, str]]:
    """(module, path) of the stdlib files on one side of a task's split, held out by top-level package."""
    root = stdlib_dir()
    return [(mod, str(path)) for path in stdlib_python_files() if (mod := module_name(path, root))
            and is_eval_key(mod.split(".")[0], eval_percent, salt=salt) == held_out]


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _trivial(body: list[ast.stmt]) -> bool:
    if len(body) != 1:
        return False
    s = body[0]
    if isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)):
        return True
    return isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s)


@functools.lru_cache(maxsize=4096)
def functions_in_file(path: str, max_body_lines: int = 8, max_body_chars: int = 400,
                      max_doc_chars: int = 300) -> tuple[dict, ...]:
    """(stub, answer, body, name) of each function in a file with a docstring and a short, non-trivial body."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node, clean=True)
        if not doc or "test" in node.name.lower():
            continue
        doc = doc.split("\n\n")[0].strip()  # the first paragraph
        body = _without_docstring(node.body)
        if not body or _trivial(body) or not 15 <= len(doc) <= max_doc_chars:
            continue
        body_src = "\n".join(ast.unparse(s) for s in body)
        if body_src.count("\n") + 1 > max_body_lines or len(body_src) > max_body_chars:
            continue
        fn = copy.copy(node)
        fn.decorator_list = []
        fn.body = [ast.Expr(ast.Constant(doc))]
        stub = ast.unparse(fn)
        fn.body = body
        out.append({"name": node.name, "stub": stub, "answer": ast.unparse(fn), "body": body_src})
    return tuple(out)


def answer_body(code: str) -> tuple[str, bool]:
    """(the body of the answer's function, whether the answer parses); a bare indented body is accepted too."""
    for candidate in (code, textwrap.dedent(code)):
        try:
            tree = ast.parse(candidate)
        except (SyntaxError, ValueError):
            continue
        if tree.body and isinstance(tree.body[0], ast.FunctionDef | ast.AsyncFunctionDef):
            return "\n".join(ast.unparse(s) for s in _without_docstring(tree.body[0].body)), True
        return ast.unparse(tree), True
    return code, False


class StdlibCodeTask(Task):
    """Write a function of the standard library from its signature and the first paragraph of its docstring."""

    name = "code"
    few_shot_stop = ("\ndef ", "\nclass ", "\n@", "\nif __name__", "\n\n\n")
    few_shot_k = 2

    def __init__(self, eval_percent: int = 10, per_file: int = 3) -> None:
        self.eval_percent = eval_percent
        self.per_file = per_file

    def _files(self, held_out: bool) -> list[tuple[str, str]]:
        return stdlib_modules(held_out, self.eval_percent, salt="code")

    def _draw(self, n: int, seed: int, held_out: bool) -> list[dict]:
        rng = random.Random(seed)
        files = self._files(held_out)
        rng.shuffle(files)
        picked: list[dict] = []
        for mod, path in files:
            if len(picked) >= n:
                break
            fns = list(functions_in_file(path))
            for fn in rng.sample(fns, min(self.per_file, len(fns))):
                picked.append({**fn, "module": mod})
        if not held_out:
            picked = [fn for fn in picked if fn["stub"] not in self._eval_stubs]
        if held_out or len(picked) >= n:
            return picked[:n]
        return sample_pool(picked, n, rng)  # every file used: repeat rather than come up short

    @functools.cached_property
    def _eval_stubs(self) -> set[str]:
        """Every held-out stub, so that a function copied into a training module cannot leak (e.g. _pyio/io)."""
        return {fn["stub"] for _, path in self._files(True) for fn in functions_in_file(path)}

    @staticmethod
    def prompt(fn: dict) -> str:
        return f"Write this Python function:\n\n{fn['stub']}"

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        return [[{"role": "user", "content": self.prompt(fn)}, {"role": "assistant", "content": fn["answer"]}]
                for fn in self._draw(n, seed, held_out=False)]

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        return [Example(self.name, [{"role": "user", "content": self.prompt(fn)}],
                        {"body": fn["body"], "stub": fn["stub"], "module": fn["module"]},
                        f"{fn['module']}.{fn['name']}")
                for fn in self._draw(n, seed + 1, held_out=True)]

    def score(self, example: Example, completion: str) -> dict[str, float]:
        text, ended = split_end(completion)
        body, parses = answer_body(extract_code(text))
        f1 = bag_f1(code_tokens(example.reference["body"]), code_tokens(body))
        return {"score": f1 if parses else 0.0, "parses": float(parses), "f1": f1, "ended": float(ended)}

    def few_shot_prompt(self, example: Example, k: int | None = None, seed: int = 0) -> str:
        """Plain Python: k complete functions, then this stub; a base model continues with the body."""
        k = self.few_shot_k if k is None else k
        shots = [fn["stub"] + "\n" + textwrap.indent(fn["body"], "    ")
                 for fn in self._draw(k, seed + 12345, held_out=False)]
        return "\n\n\n".join([*shots, example.reference["stub"]]) + "\n"


# ----------------------------------------------------------------------------------------------- MBPP

class MBPPTask(Task):
    """Mostly Basic Python Problems, scored by running the problem's asserts on the answer (pass@1)."""

    name = "mbpp"
    few_shot_stop = ("\n\nQuestion:", "\n[DONE]")
    executes_code = True   # scoring runs model-written code: evaluation checks for the sandbox first

    def __init__(self, data_dir: str | Path | None = None, timeout_s: float = 5.0, memory_mb: int = 512,
                 unsafe_exec: bool = False) -> None:
        self.data_dir = data_dir
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.unsafe_exec = unsafe_exec
        self._rows: list[dict] | None = None
        self.sets_used: dict[str, str] = {}  # set name -> file read (the mixture reports it)

    def rows(self) -> list[dict]:
        if self._rows is None:
            path = data_file(self.data_dir, "mbpp", "mbpp.jsonl")
            self.sets_used["mbpp"] = str(path)
            self._rows = read_jsonl_file(path)
        return self._rows

    @staticmethod
    def prompt(row: dict) -> str:
        tests = "\n".join(row["test_list"])
        return f"{row['text']}\nYour code should pass these tests:\n{tests}"

    @staticmethod
    def solution(row: dict) -> str:
        return row["code"].replace("\r\n", "\n").strip()

    def _split(self, name: str) -> list[dict]:
        lo, hi = {"train": (511, 974), "eval": (11, 510), "prompt": (1, 10)}[name]
        return [r for r in self.rows() if lo <= int(r["task_id"]) <= hi]

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        return [[{"role": "user", "content": self.prompt(r)}, {"role": "assistant", "content": self.solution(r)}]
                for r in sample_pool(self._split("train"), n, random.Random(seed))]

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        rows = self._split("eval")
        random.Random(seed).shuffle(rows)
        return [Example(self.name, [{"role": "user", "content": self.prompt(r)}],
                        {"tests": r["test_list"], "setup": r.get("test_setup_code", "") or ""}, f"mbpp-{r['task_id']}")
                for r in rows[:n]]

    def score(self, example: Example, completion: str) -> dict[str, float]:
        text, ended = split_end(completion)
        code = extract_code(text)
        _, parses = answer_body(code)
        # the setup code runs after the answer: MBPP's setup builds trees from the Node class the answer defines
        result = run_tests(code, example.reference["tests"], setup=example.reference["setup"], timeout_s=self.timeout_s,
                           memory_mb=self.memory_mb, unsafe=self.unsafe_exec) if parses else None
        passed = bool(result and result.passed)
        return {"score": float(passed), "parses": float(parses), "ended": float(ended),
                "timeout": float(bool(result and result.timed_out))}

    def few_shot_prompt(self, example: Example, k: int | None = None, seed: int = 0) -> str:
        """The paper's format: shots from tasks 1-10, each answer closed by [DONE]."""
        k = self.few_shot_k if k is None else k
        shots = self._split("prompt")[1:1 + k]
        parts = [f"Question: {self.prompt(r)}\nAnswer:\n{self.solution(r)}\n[DONE]" for r in shots]
        parts.append(f"Question: {example.prompt_text()}\nAnswer:\n")
        return "\n\n".join(parts)
