"""Every bad value is refused with one line naming the field or file and exit code 2: never a traceback, never a
run that quietly does something else (the inputs issue 14 found taking either path)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from test_train import make_byte_run, tiny

from scalelab.__main__ import main
from scalelab.lm.train.loop import train

FAST = ["--depth", "1", "--seq-len", "32", "--batch-size", "4", "--max-steps", "2", "--device", "cpu",
        "--dtype", "fp32", "--preflight-steps", "0", "--sample-max-tokens", "0", "--eval-tokens", "512"]


def refused(argv: list[str], capsys, match: str) -> None:
    assert main(argv) == 2
    text = capsys.readouterr().err
    err = [line.rpartition("\r")[2].split("B/s]")[-1] for line in text.splitlines() if "error:" in line]
    assert len(err) == 1 and "Traceback" not in text, text  # progress bars aside, one line
    assert match in err[0], err[0]


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory) -> Path:
    return make_byte_run(tmp_path_factory.mktemp("bad") / "run", max_bytes=30_000)


@pytest.mark.parametrize("flag,value,match", [
    ("--num-threads", "-1", "--num-threads = -1 is out of range (must be >= 0)"),
    ("--beta1", "2", "--beta1 = 2.0 is out of range (must be >= 0 and < 1)"),
    ("--lr", "nan", "--lr must be a finite number, got nan"),
    ("--lr", "inf", "--lr must be a finite number, got inf"),
    ("--total-batch-tokens", "-4096", "--total-batch-tokens = -4096 is out of range (must be >= 0)"),
    ("--save-every", "-1", "--save-every = -1 is out of range"),
    ("--eval-every", "-1", "--eval-every = -1 is out of range"),
    ("--keep-last", "-1", "--keep-last = -1 is out of range"),
    ("--grad-clip", "-1", "--grad-clip = -1.0 is out of range"),
    ("--warmup-steps", "-10", "--warmup-steps = -10 is out of range"),
    ("--n-layer", "-1", "--n-layer = -1 is out of range"),
    ("--max-steps", "0", "--max-steps = 0 is out of range (must be >= 1)"),
])
def test_out_of_range_flags_are_refused(byte_run: Path, capsys, flag: str, value: str, match: str) -> None:
    refused(["pretrain", "--run", str(byte_run), *FAST, flag, value], capsys, match)
    assert not (byte_run / "base").exists()  # nothing trained, nothing written


def test_the_same_range_holds_in_yaml(byte_run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "c.yaml").write_text("beta2: 1.5\n")
    refused(["pretrain", "--run", str(byte_run), "--config", str(tmp_path / "c.yaml")], capsys,
            f"{tmp_path / 'c.yaml'}: field 'beta2' = 1.5 is out of range")


@pytest.mark.parametrize("argv,match", [
    (["curves", "--max-test", "-5"], "--max-test = -5 is out of range (must be >= 0)"),
    (["curves", "--n-boot", "-1"], "--n-boot = -1 is out of range (must be >= 0)"),
    (["curves", "--sizes", "50", "0"], "--sizes = 0 is out of range (must be >= 2)"),
    (["curves", "--test-fraction", "1"], "--test-fraction = 1.0 is out of range (must be > 0 and < 1)"),
    (["curves", "--mlp-lr", "0"], "--mlp-lr = 0.0 is out of range (must be > 0 and <= 10)"),
    (["compute-curves", "--epochs", "-1"], "--epochs = -1 is out of range (must be >= 1)"),
    (["compute-curves", "--widths", "-8"], "--widths = -8 is out of range (must be >= 1)"),
    (["tabular-bench", "--threads", "0"], "--threads = 0 is out of range (must be >= 1)"),
    (["tokenizer", "--vocab-size", "-5"], "--vocab-size = -5 is out of range (must be >= 262"),
    (["scaling", "--budgets", "1e12", "-1"], "--budgets = -1.0 is out of range (must be > 0)"),
    (["scaling", "--warmup-frac", "2"], "--warmup-frac = 2.0 is out of range (must be >= 0 and <= 1)"),
    (["plan", "--minutes", "-1"], "--minutes = -1.0 is out of range (must be >= 0)"),
    (["plan", "--max-depth", "-3"], "--max-depth = -3 is out of range (must be >= 1)"),
])
def test_out_of_range_flags_of_the_tabular_and_scaling_commands(tmp_path: Path, capsys, argv: list[str],
                                                                match: str) -> None:
    """Refused while parsing: before any data set is loaded or any output is written."""
    where = {"tokenizer": "--run-dir", "plan": "--scaling"}.get(argv[0], "--out")
    refused([*argv, where, str(tmp_path / "out")], capsys, match)
    assert not (tmp_path / "out").exists()


def test_every_numeric_config_field_declares_its_range(capsys, monkeypatch) -> None:
    """Every int/float field (and list of them) of every config dataclass the CLI builds flags from, of the configs
    in their modules, and of the sft mixture YAML, declares a range: a new field without one fails here."""
    import dataclasses
    import importlib
    import sys
    import typing

    import scalelab.config as C
    from scalelab.__main__ import COMMANDS
    from scalelab.lm.posttrain.tasks.mixture import MixtureConfig

    seen: dict[str, type] = {"MixtureConfig": MixtureConfig}
    add = C.add_dataclass_args
    monkeypatch.setattr(C, "add_dataclass_args", lambda parser, cls: (seen.setdefault(cls.__name__, cls),
                                                                      add(parser, cls)))
    for name in COMMANDS:
        assert main([name, "--help"]) == 0, name
    capsys.readouterr()
    modules = {importlib.import_module(m) for m, _ in COMMANDS.values()} | {sys.modules[c.__module__]
                                                                         for c in seen.values()}
    for module in modules:
        for obj in vars(module).values():
            if dataclasses.is_dataclass(obj) and isinstance(obj, type) and obj.__name__.endswith("Config"):
                seen.setdefault(obj.__name__, obj)
    assert {"CurvesConfig", "ComputeConfig", "BenchConfig", "TokenizerConfig", "TrainConfig", "SFTConfig",
            "ScalingConfig", "PlanConfig", "ServeConfig", "ModelConfig"} <= set(seen), sorted(seen)
    unranged = []
    for cls in seen.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = C._base_type(hints[f.name])[0]
            if (C._list_item_type(tp) or tp) in (int, float) and not set(C.RANGE_WORDS) & set(f.metadata):
                unranged.append(f"{cls.__name__}.{f.name}")
    assert not unranged, unranged


def test_a_truncated_gzip_corpus_names_the_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "docs.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps({"text": f"document {i} " * 20}).encode() + b"\n" for i in range(400)))
    path.write_bytes(data[: len(data) // 2])
    refused(["tokenizer", "--run", str(tmp_path / "run"), "--corpus", f"{path}#text", "--vocab-size", "300"],
            capsys, f"{path}: truncated or corrupt gzip file")


def test_token_ids_past_the_vocabulary_are_refused(tmp_path: Path, capsys) -> None:
    run = make_byte_run(tmp_path / "run", max_bytes=30_000)
    ids = np.fromfile(run / "data" / "train.bin", dtype=np.uint16)
    ids[100] = 300  # vocab_size is 262
    ids.tofile(run / "data" / "train.bin")
    refused(["pretrain", "--run", str(run), *FAST], capsys, "train.bin: token 100 has id 300 but")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = make_byte_run(tmp_path_factory.mktemp("ck") / "run", max_bytes=30_000)
    train(tiny(run, max_steps=1, seq_len=32))
    return run


@pytest.mark.parametrize("field,value,match", [
    ("n_layer", "two", "field 'n_layer' expects int, got 'two'"),
    ("vocab_size", 1e9, "model_config says vocab_size 1000000000, n_embd 64 but model.safetensors holds an "
                        "embedding of shape [262, 64]"),
    ("n_head", 0, "field 'n_head' = 0 is out of range (must be >= 1)"),  # checked before n_embd % n_head
    ("n_kv_head", 0, "field 'n_kv_head' = 0 is out of range (must be >= 1)"),
    ("n_layer", -1, "field 'n_layer' = -1 is out of range (must be >= 1)"),
    ("norm_eps", -1e-5, "field 'norm_eps' = -1e-05 is out of range (must be > 0)"),
])
def test_a_hand_edited_meta_json_is_refused_before_allocating(trained: Path, tmp_path: Path, capsys, field: str,
                                                                value, match: str) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    meta_path = run / "base" / "step_0000001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_config"][field] = value
    meta_path.write_text(json.dumps(meta))
    refused(["sample", "--run", str(run), "--max-tokens", "2", "--device", "cpu"], capsys, match)


def test_gguf_export_never_overwrites_another_kind_of_file(trained: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("gguf")
    (trained / "tokenizer").mkdir(exist_ok=True)
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    refused(["export", "--run", str(trained), "--format", "gguf", "--out", str(victim)], capsys,
            "exists and is not a GGUF file; nothing was overwritten")
    assert victim.read_text() == "precious"


def test_flag_prefixes_are_not_accepted_and_typos_get_a_suggestion(byte_run: Path, capsys) -> None:
    refused(["pretrain", "--run", str(byte_run), "--max-step", "3"], capsys,
            "unknown flag --max-step (did you mean --max-steps?)")
    refused(["curves", "--seed", "0"], capsys, "unknown flag --seed (did you mean --seeds?)")


def test_every_command_refuses_prefixes_and_takes_run_dir_beside_run(tmp_path: Path, capsys) -> None:
    """No command accepts an abbreviated flag (``--hel`` is not ``--help``), and every command whose help offers
    ``--run`` offers ``--run-dir`` too (torchrun claims any flag spelled --run...), the ones not built from a config
    dataclass (report, data) included."""
    import re

    from scalelab.__main__ import COMMANDS

    for name in COMMANDS:
        assert main([name, "--help"]) == 0, name
        out = capsys.readouterr().out
        if re.search(r"--run(?![-\w])", out):
            assert "--run-dir" in out, f"scalelab {name} takes --run but not --run-dir"
        assert main([name, "--hel"]) == 2, f"scalelab {name} took --hel for --help"
        assert "Traceback" not in capsys.readouterr().err
    refused(["report", "--run", str(tmp_path), "--tab"], capsys, "unknown flag --tab (did you mean --table?)")
    refused(["data", "list", "--hel"], capsys, "unknown flag --hel (did you mean --help?)")
    refused(["data", "pull", "tiny_shakespeare", "--mirr", "http://127.0.0.1:9"], capsys, "unknown flag --mirr")
    assert main(["report", "--run-dir", str(tmp_path), "--table"]) == 0
    assert "no eval/*.json yet" in capsys.readouterr().out


def test_version_and_unknown_commands(capsys) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"scalelab {version('scalelab')}"
    refused(["pretrian"], capsys, "unknown command 'pretrian' (did you mean 'pretrain'?)")


def test_a_csv_with_an_infinite_value_names_line_and_column(tmp_path: Path, capsys) -> None:
    rows = ["a,b,label"] + [f"{i / 7},{'inf' if i == 5 else i},{i % 2}" for i in range(60)]
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")
    refused(["curves", "--data", str(tmp_path / "x.csv"), "--target", "label", "--models", "logreg", "--sizes", "20",
             "--seeds", "0", "--out", str(tmp_path / "out")], capsys,
            "x.csv: line 7: infinite value in column 'b'")


@pytest.mark.parametrize("what", ["file", "folder"])
def test_an_output_path_of_another_kind_is_never_overwritten(tmp_path: Path, capsys, what: str) -> None:
    out = tmp_path / "taken"
    if what == "file":
        out.write_text("precious")
    else:
        out.mkdir()
        (out / "notes.md").write_text("precious")
    for command in (["curves", "--dataset", "digits", "--models", "logreg", "--sizes", "50", "--seeds", "0"],
                    ["compute-curves", "--dataset", "digits"]):
        refused([*command, "--out", str(out)], capsys, "nothing was overwritten")
    assert (out if what == "file" else out / "notes.md").read_text() == "precious"
