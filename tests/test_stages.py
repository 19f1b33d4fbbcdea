"""One default-stage rule for every command that reads a checkpoint: chat if the run has one, else base; an error
that names the stages the run does have."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_chat_cli import FLAGS, scripted_run

from scalelab.__main__ import main
from scalelab.lm.checkpoint import resolve_checkpoint


@pytest.fixture(scope="module")
def base_only(tmp_path_factory) -> Path:
    return scripted_run(tmp_path_factory.mktemp("stages") / "run", stage="base", step=3)


def test_a_base_only_run_is_served_sampled_and_evaluated_without_stage_flags(base_only: Path, capsys) -> None:
    from scalelab.serve.config import ServeConfig

    assert resolve_checkpoint(base_only).parent.name == "base"
    assert main(["sample", "--run", str(base_only), "--max-tokens", "3", "--temperature", "0", *FLAGS]) == 0
    assert "base/step_0000003" in capsys.readouterr().err
    assert main(["eval", "--run", str(base_only), "--tasks", "arithmetic", "--limit", "2", "--max-tokens", "4",
                 "--mc", "off", *FLAGS]) == 0
    assert (base_only / "eval" / "base.json").is_file()
    assert ServeConfig().stage == ""  # serve, chat and export load with stage None: the same rule


def test_a_missing_stage_names_the_stages_that_exist(base_only: Path, capsys) -> None:
    assert main(["sample", "--run", str(base_only), "--stage", "chat", *FLAGS]) == 2
    assert "no checkpoint for stage chat (stages with a checkpoint: base)" in capsys.readouterr().err


def test_every_reader_takes_chat_when_present_else_base(base_only: Path, tmp_path: Path, capsys) -> None:
    """sample, chat, export and serve pick the same stage without --stage: chat when the run has one (sample used to
    take base first), else base (serve used to ask for chat alone)."""
    import shutil

    import httpx
    from serve_fixtures import live_server
    from test_engine import make_tokenizer, scripted_model

    from scalelab.lm.checkpoint import save_checkpoint
    from scalelab.runs import RunDir
    from scalelab.serve.app import build_app
    from scalelab.serve.config import ServeConfig

    both = tmp_path / "both"
    shutil.copytree(base_only, both)
    chat_model = scripted_model(make_tokenizer(), reply="yes", max_seq_len=64)  # the base model answers "ok"
    save_checkpoint(RunDir(both), "chat", 5, chat_model, {"model_config": chat_model.config.to_dict()})
    for run, stage, reply in ((both, "chat/step_0000005", "yes"), (base_only, "base/step_0000003", "ok")):
        assert main(["sample", "--run", str(run), "--max-tokens", "2", "--temperature", "0", *FLAGS]) == 0
        assert stage in capsys.readouterr().err
        assert main(["chat", "--run", str(run), "--prompt", "hi", "--temperature", "0", *FLAGS]) == 0
        assert capsys.readouterr().out.strip() == reply
        assert main(["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf" / run.name)]) == 0
        assert f"exported {run / stage}" in capsys.readouterr().out
    app = build_app(ServeConfig(run=str(base_only), device="cpu", dtype="fp32"))  # a base-only run is served
    with live_server(app) as url:
        assert httpx.get(url + "/health").status_code == 200
