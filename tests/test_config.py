"""Config dataclasses -> flags and YAML; every shipped config loads."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from data_fixtures import needs_sets

from scalelab.common import UsageError
from scalelab.config import config_from_dict, load_yaml, parse_config, save_config


@dataclass
class Demo:
    lr_max: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    sizes: list[int] = field(default_factory=lambda: [25, 50])
    name: str = "x"
    flag: bool = False
    limit: int | None = None


def test_flags_override_yaml_override_defaults(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr_max: 0.5\nname: from_yaml\nsizes: [1, 2, 3]\n")
    cfg = parse_config(Demo, ["--config", str(tmp_path / "c.yaml"), "--name", "from_flag", "--flag"])
    assert cfg == Demo(lr_max=0.5, sizes=[1, 2, 3], name="from_flag", flag=True)
    assert parse_config(Demo, ["--sizes", "4", "5", "--limit", "7"]).sizes == [4, 5]


def test_bad_yaml_field_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr_maxx: 0.5\n")
    with pytest.raises(UsageError, match="lr_maxx"):
        parse_config(Demo, ["--config", str(tmp_path / "c.yaml")])
    with pytest.raises(UsageError, match="lr_max"):
        config_from_dict(Demo, {"lr_max": "fast"})


def test_saved_config_round_trips(tmp_path: Path) -> None:
    save_config(Demo(name="a"), tmp_path / "config.json", section="stage")
    import json

    assert json.loads((tmp_path / "config.json").read_text())["stage"]["name"] == "a"



def test_parse_args_names_the_given_fields_and_a_resume_keeps_only_those(tmp_path: Path) -> None:
    """The fields set in --config or as flags are 'given'; a resumed stage takes every other field from its
    checkpoint's saved config (checkpoint.merge_saved_config, used by checkpoint.resolve_start)."""
    from scalelab.config import parse_args
    from scalelab.lm.checkpoint import merge_saved_config
    from scalelab.lm.train.config import TrainConfig

    (tmp_path / "c.yaml").write_text("lr: 0.01\n")
    cfg, _, given = parse_args(TrainConfig, ["--config", str(tmp_path / "c.yaml"), "--run", "r", "--max-steps", "9"])
    assert given == {"lr", "run", "max_steps"}
    saved = {"train_config": {"run": "r", "lr": 0.5, "max_steps": 3, "batch_size": 5, "seq_len": 48}}
    merged = merge_saved_config(cfg, saved, given, tmp_path / "meta.json")
    assert (merged.lr, merged.max_steps, merged.batch_size, merged.seq_len) == (0.01, 9, 5, 48)


def test_a_checkpoint_saved_before_a_field_was_renamed_still_resumes(tmp_path: Path) -> None:
    """meta.json of an older checkpoint says sample_tokens; it now fills sample_max_tokens (unless given)."""
    from scalelab.config import parse_args
    from scalelab.lm.checkpoint import merge_saved_config
    from scalelab.lm.train.config import TrainConfig

    saved = {"train_config": {"run": "r", "sample_tokens": 7, "max_steps": 3}}
    cfg, _, given = parse_args(TrainConfig, ["--run", "r"])
    merged = merge_saved_config(cfg, saved, given, tmp_path / "meta.json")
    assert (merged.sample_max_tokens, merged.max_steps) == (7, 3)
    cfg, _, given = parse_args(TrainConfig, ["--run", "r", "--sample-max-tokens", "0"])
    assert merge_saved_config(cfg, saved, given, tmp_path / "meta.json").sample_max_tokens == 0


@pytest.mark.parametrize("command", ["pretrain", "sft"])
def test_the_old_sample_tokens_flag_is_refused(command: str, capsys) -> None:
    """--sample-max-tokens reads like --max-tokens of sample/chat/eval/serve; the old flag (or a prefix) is refused."""
    from scalelab.__main__ import main

    for old in ("--sample-tokens", "--sample-max"):
        assert main([command, old, "0"]) == 2
        assert f"unknown flag {old} (did you mean --sample-max-tokens?)" in capsys.readouterr().err


SHIPPED = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path: Path) -> None:
    """Each YAML names its dataclass as `_target: module:Class`; it must build without error."""
    import importlib

    data = load_yaml(path)
    module, _, cls_name = data.pop("_target").partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    config_from_dict(cls, data, where=str(path))


TOKENIZER_CONFIGS = [p for p in SHIPPED if "TokenizerConfig" in p.read_text()]


def _specs(path: Path) -> list[str]:
    data = load_yaml(path)
    return [*(data.get("corpus") or []), *(data.get("val_corpus") or [])]


def _named_sets(path: Path) -> list[str]:
    """The public sets a config's corpus specs name (SET or SET/REL, scalelab/data_sources.py)."""
    from scalelab.data_sources import SETS

    heads = {spec.partition("/")[0].partition("#")[0].partition(":")[0] for spec in _specs(path)}
    return sorted(h for h in heads if h in SETS and SETS[h].files)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name, marks=needs_sets(*_named_sets(p)))
                                  for p in TOKENIZER_CONFIGS])
def test_shipped_corpus_specs_resolve_on_any_machine(path: Path, monkeypatch) -> None:
    """A shipped tokenizer config names sources that exist wherever scalelab is installed (no .venv layout assumed):
    shipped corpora, or public sets named through the data layer (skipped with a reason when absent), never a
    folder beside the checkout."""
    from scalelab.common import UsageError
    from scalelab.lm.data.corpus import parse_source

    monkeypatch.chdir(Path(__file__).parents[1])
    for spec in _specs(path):
        bypass = spec.startswith(("..", "/")) or "shared/" in spec
        assert not bypass, f"{path.name}: {spec} names a folder directly; name the set (SET or SET/FILE)"
        try:
            parse_source(spec)
        except UsageError as e:
            pytest.fail(f"{path.name}: {e}")


def test_configs_follow_one_naming_scheme() -> None:
    """<profile>_<stage>.yaml, one file per pair: no twins such as demo_pretrain and pretrain_demo."""
    stages = {"tokenizer", "pretrain", "sft", "eval", "mixture", "curves", "compute", "scaling", "bench"}
    names = [p.stem for p in SHIPPED]
    assert all(n.rpartition("_")[2] in stages for n in names), [n for n in names if n.rpartition("_")[2] not in stages]
    assert not [n for n in names if n.partition("_")[0] in stages], "a stage name stands first"


def test_every_config_the_repository_names_exists() -> None:
    """A config named in code, docs or scripts (configs/<name>.yaml, or a glob such as configs/*_curves.yaml) exists:
    a renamed config leaves no stale name behind."""
    root = Path(__file__).parents[1]
    texts = [root / "README.md", root / "Makefile", *root.glob("scalelab/**/*.py"), *root.glob("scripts/*"),
             *root.glob("benchmarks/*.py"), *root.glob("configs/*.yaml"), *root.glob("tests/*.py")]
    names = {p.name for p in SHIPPED}
    stale = [f"{path.relative_to(root)}: configs/{m}" for path in texts if path.is_file()
             for m in re.findall(r"configs/([\w*]+\.yaml)", path.read_text(encoding="utf-8"))
             if not fnmatch.filter(names, m)]
    assert not stale, stale

def test_site_packages_is_a_corpus_source() -> None:
    from scalelab.common import UsageError
    from scalelab.lm.data.corpus import iter_source, parse_source

    src = parse_source("site-packages/yaml")
    assert src.kind == "site-packages"
    docs = list(iter_source(src))
    assert docs and any("def safe_load" in d for d in docs)
    with pytest.raises(UsageError, match="no-such-package"):
        parse_source("site-packages/no-such-package")


def test_every_command_that_takes_a_run_also_takes_run_dir() -> None:
    """torchrun claims any flag spelled --run...: every command offers --run-dir for the same field."""
    import dataclasses
    import importlib

    from scalelab.__main__ import COMMANDS

    found = 0
    for module_name, _ in COMMANDS.values():
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if dataclasses.is_dataclass(obj) and isinstance(obj, type) and "run" in obj.__dataclass_fields__:
                assert parse_config(obj, ["--run-dir", "runs/x"]).run == "runs/x", obj.__name__
                found += 1
    assert found >= 8
