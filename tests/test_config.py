"""Config dataclasses -> flags and YAML; every shipped config loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

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


SHIPPED = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path: Path) -> None:
    """Each YAML names its dataclass as `_target: module:Class`; it must build without error."""
    import importlib

    data = load_yaml(path)
    module, _, cls_name = data.pop("_target").partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    config_from_dict(cls, data, where=str(path))
