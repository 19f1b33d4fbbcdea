"""The package's shape, read from its source: public names across modules, lm/'s wings importing only downward, a
model loaded only by checkpoint.py and inference/loading.py, the trainer's state created in one place, and the
README's tree naming every module of the folders it lists.

    .venv/bin/pytest tests/test_layout.py -q
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scalelab"
SOURCES = sorted(PACKAGE.rglob("*.py"))

# lm/'s layers, lowest first (scalelab/lm/__init__.py): a part of lm/ imports only parts of a lower layer
LM_LAYERS = {"special_tokens": 0, "model": 0, "chat": 1, "checkpoint": 2, "data": 2, "inference": 3, "interop": 3,
             "train": 4, "posttrain": 5, "scaling": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of a scalelab module, top level or inside a function alike."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scalelab"):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("scalelab")]
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(paths: list[Path]) -> list[str]:
    """Every import of a scalelab module's underscore name, and every ``module._name`` on an imported module."""
    bad = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = set()  # names bound to scalelab modules in this file
        for line, module, names in imports(path):
            bad += [f"{path.relative_to(ROOT)}:{line}: from {module} import {n}" for n in names if private(n)]
            modules |= {n for n in names if not private(n)} if names else {module.split(".")[0]}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in modules):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return bad


def test_no_module_uses_another_modules_private_names() -> None:
    bad = private_uses(SOURCES)
    assert not bad, "\n".join(bad)


def lm_part(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["scalelab", "lm"] else None


def test_lm_wings_import_only_downward() -> None:
    bad = []
    for path in SOURCES:
        here = lm_part(module_name(path))
        if here is None:
            continue
        for line, module, names in imports(path):
            targets = [module] if module != "scalelab.lm" else [f"scalelab.lm.{n}" for n in names]
            for target in targets:
                there = lm_part(target)
                if there is not None and there != here and LM_LAYERS[there] >= LM_LAYERS[here]:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: lm/{here} imports {target} (not below it)")
    assert not bad, "\n".join(bad)


def test_only_the_loaders_load_a_model() -> None:
    """The engine and the rest of inference/ are handed a model; checkpoint.py loads it, inference/loading.py picks
    its dtype and tokenizer."""
    inference = PACKAGE / "lm" / "inference"
    bad = [f"{path.relative_to(ROOT)}:{line}: imports {module}" for path in sorted(inference.glob("*.py"))
           if path.name != "loading.py" for line, module, _ in imports(path)
           if module in ("scalelab.lm.checkpoint", "scalelab.lm.inference.loading")]
    assert not bad, "\n".join(bad)


def test_trainer_state_is_created_in_init() -> None:
    tree = ast.parse((PACKAGE / "lm" / "train" / "loop.py").read_text(encoding="utf-8"))
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assigned: dict[str, set[str]] = {}
    for method in trainer.body:
        if not isinstance(method, ast.FunctionDef):
            continue
        for node in ast.walk(method):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
            for target in targets:
                for t in ast.walk(target):
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        assigned.setdefault(method.name, set()).add(t.attr)
    outside = {m: sorted(a - assigned["__init__"]) for m, a in assigned.items() if a - assigned["__init__"]}
    assert not outside, f"Trainer attributes first set outside __init__: {outside}"


def readme_tree() -> dict[str, str]:
    """{folder under scalelab/ ('' for scalelab/ itself): the text of its entries} from the README's tree."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    first = lines.index("scalelab/")
    block = lines[first:lines.index("```", first)]
    sections: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in block:
        if not line.strip():
            continue
        indent, first = len(line) - len(line.lstrip()), line.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if first.endswith("/"):
            stack.append((indent, first))
            line = line.lstrip()[len(first):]
        if stack and stack[0][1] == "scalelab/":
            key = "".join(name for _, name in stack[1:]).rstrip("/")
            sections[key] = sections.get(key, "") + " " + line
    return sections


def test_readme_tree_names_every_module_of_the_folders_it_lists() -> None:
    """A folder whose entry names its files (cli/ does not: thin entry points) names all of them."""
    missing = []
    for folder, text in readme_tree().items():
        named = set(re.findall(r"\b(\w+)\.py\b", text))
        where = PACKAGE / folder
        if not named or not where.is_dir():
            continue
        missing += [f"scalelab/{folder}/{p.name}".replace("//", "/") for p in sorted(where.glob("*.py"))
                    if p.stem not in named and p.name != "__init__.py"]
    assert not missing, f"modules missing from the README's tree: {missing}"


def test_the_readme_tree_check_reads_the_tree() -> None:
    tree = readme_tree()
    assert {"", "lm", "lm/data", "lm/inference", "tabular", "serve", "cli"} <= set(tree)
    assert "model.py" in tree["lm"] and "engine.py" in tree["lm/inference"]


@pytest.mark.parametrize("line, found", [("from scalelab.lm.inference.batching import _Batch", True),
                                         ("from scalelab.lm.inference import batching\nbatching._Batch", True),
                                         ("from scalelab.lm.inference.batching import Batch", False)])
def test_the_private_name_check_sees_an_import_and_an_attribute(line: str, found: bool) -> None:
    sample = ROOT / "scalelab" / "_layout_sample.py"
    sample.write_text(line + "\n")
    try:
        assert bool(private_uses([sample])) == found
    finally:
        sample.unlink()


def test_no_module_re_exports_a_sibling() -> None:
    """A module's ``__all__`` lists what it defines, so every name has one import path (the engine once re-exported
    the decoder, sampler, detokeniser and ``generate`` of its siblings). Package ``__init__`` files are exempt."""
    offenders = []
    for path in SOURCES:
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                    for t in node.targets):
                names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
                offenders += [f"{module_name(path)}: {n}" for n in names if n in imported]
    assert not offenders, "names re-exported from another module: " + ", ".join(offenders)
