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
