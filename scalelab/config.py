"""Configs are dataclasses; command-line flags and YAML files derive from them.

A field's ``metadata={"help": "..."}`` becomes its flag's help line. Field ``lr_max`` becomes ``--lr-max``.
A numeric field declares its range in the same metadata (``"ge"``, ``"gt"``, ``"le"``, ``"lt"``), checked in one
place (``check_ranges``) for flags, YAML, saved configs and library calls alike; NaN and infinity are never valid.
Precedence: dataclass defaults < ``--config file.yaml`` < explicit flags. The resolved config is saved as JSON.

    cfg = parse_config(TrainConfig, argv, prog="scalelab pretrain")
    cfg, ns, given = parse_args(TrainConfig, argv, prog="scalelab pretrain")  # + which fields were given
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from scalelab.common import UsageError, atomic_write_text

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional[...]; returns (type, is_optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _list_item_type(tp: Any) -> Any | None:
    if typing.get_origin(tp) in (list, tuple):
        args = typing.get_args(tp)
        return args[0] if args else str
    return None


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _coerce(value: Any, tp: Any, name: str, where: str) -> Any:
    """Coerce a YAML or JSON value to the field's type, with an error that names the field."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise UsageError(f"{where}: field '{name}' may not be null")
    item = _list_item_type(base)
    try:
        if item is not None:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            if not isinstance(value, list | tuple):
                raise TypeError
            out = [_coerce(v, item, name, where) for v in value]
            return tuple(out) if typing.get_origin(base) is tuple else out
        if base is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if base in (int, float, str):
            if base is int and isinstance(value, float) and not value.is_integer():
                raise TypeError
            return base(value)
        if isinstance(base, type) and issubclass(base, dict):
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise UsageError(f"{where}: field '{name}' expects {getattr(base, '__name__', base)}, got {value!r}") from None
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per dataclass field. Defaults are left as None so that YAML can fill in what flags do not say."""
    hints = _hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, _ = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        rule = ", ".join(f"{RANGE_WORDS[k]} {f.metadata[k]}" for k in RANGE_WORDS if k in f.metadata)
        help_text = f"{help_text} (default: {default}{'; ' + rule if rule else ''})" if help_text else \
            f"default: {default}"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        item = _list_item_type(tp)
        if item is not None:
            kwargs.update(nargs="+", type=item if item in (int, float, str) else str, metavar=f.name.upper())
        elif tp is bool:
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif tp in (int, float, str):
            kwargs.update(type=tp, metavar=f.name.upper())
        else:
            kwargs.update(type=str, metavar=f.name.upper())
        names = [flag, "--run-dir"] if f.name == "run" else [flag]  # torchrun claims any flag spelled --run...
        group.add_argument(*names, **kwargs)


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a dataclass from a plain dict, rejecting unknown keys by name."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    kwargs = {k: _coerce(v, hints[k], k, where) for k, v in data.items()}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in kwargs.items():  # before __post_init__ runs on them (a zero n_head would divide by zero there)
        _check_field(fields[k], v, where)
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None
    check_ranges(cfg, where)
    return cfg


RANGE_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def check_ranges(cfg: Any, where: str = "config") -> None:
    """UsageError naming the first field outside its declared range, or any NaN / infinite number."""
    for f in dataclasses.fields(cfg):
        _check_field(f, getattr(cfg, f.name), where)


def _check_field(f: dataclasses.Field, value: Any, where: str) -> None:
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        name = f"--{f.name.replace('_', '-')}" if where == "flags" else f"field '{f.name}'"
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{where}: {name} must be a finite number, got {v}")
        for key in RANGE_WORDS:
            bound = f.metadata.get(key)
            if bound is None:
                continue
            ok = {"ge": v >= bound, "gt": v > bound, "le": v <= bound, "lt": v < bound}[key]
            if not ok:
                rule = " and ".join(f"{RANGE_WORDS[k]} {f.metadata[k]}" for k in RANGE_WORDS if k in f.metadata)
                raise UsageError(f"{where}: {name} = {v} is out of range (must be {rule})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}:{line} invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config file must be a mapping of field: value")
    return data


class Parsed(typing.NamedTuple, typing.Generic[T]):
    """What a command line said: the config, argparse's namespace (for flags outside the dataclass) and the fields
    the user gave in ``--config`` or as flags, so a resumed stage knows which saved values to keep."""

    config: T
    ns: argparse.Namespace
    given: frozenset[str]


class ArgumentParser(argparse.ArgumentParser):
    """argparse without prefix matching (``--seed`` must not quietly become ``--seeds``), and one line with a
    did-you-mean for an unknown flag instead of the whole usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments:"):
            words = message.split(":", 1)[1].split()
            flags = [w.split("=")[0] for w in words if w.startswith("-")] or words
            known = [s for a in self._actions for s in a.option_strings]
            close = difflib.get_close_matches(flags[0], known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (see {self.prog} --help)"
            message = f"unknown flag {flags[0]}{hint}"
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None,
                 description: str | None = None,
                 extra: typing.Callable[[argparse.ArgumentParser], None] | None = None) -> T:
    """Parse argv into a ``cls`` instance: defaults < --config YAML < flags."""
    return parse_args(cls, argv, prog, description, extra).config


def parse_args(cls: type[T], argv: list[str] | None = None, prog: str | None = None,
               description: str | None = None,
               extra: typing.Callable[[argparse.ArgumentParser], None] | None = None) -> Parsed[T]:
    """Like parse_config, returning (config, namespace, given fields)."""
    parser = ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip())
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of field: value (flags override it)")
    add_dataclass_args(parser, cls)
    if extra is not None:
        extra(parser)
    ns = parser.parse_args(argv)
    data: dict[str, Any] = load_yaml(ns.config) if ns.config else {}
    data.pop("_target", None)  # shipped configs name their dataclass for the config test
    where = str(ns.config) if ns.config else "flags"
    for f in dataclasses.fields(cls):
        value = getattr(ns, f.name, None)
        if value is not None:
            data[f.name] = value
    return Parsed(config_from_dict(cls, data, where=where), ns, frozenset(data))


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_config(cfg: Any, path: str | Path, section: str | None = None,
                extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config as JSON. With ``section``, merge it under that key of an existing file, together
    with the ``extra`` sections, in one atomic write."""
    path = Path(path)
    payload: dict[str, Any] = to_dict(cfg)
    if section is not None:
        existing: dict[str, Any] = {}
        if path.is_file():
            try:
                existing = json.loads(path.read_text())
            except json.JSONDecodeError:
                existing = {}
        existing[section] = payload
        existing.update(json.loads(json.dumps(extra or {}, default=str)))
        payload = existing
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
