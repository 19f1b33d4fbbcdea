"""The whole LM pipeline through the CLI at toy size: tokenizer -> pretrain -> SFT (+ resume) -> eval -> report -> chat.

Tiny on purpose (a few stdlib files, vocab 512, a 2-layer width-64 model, a few dozen steps): it checks that the
stages meet through files and that SFT resumes through the shared train loop, not that the model is any good.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scalelab.__main__ import main
from scalelab.runs import RunDir

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODEL = ["--depth", "1", "--n-embd", "64", "--n-head", "2", "--seq-len", "64", "--batch-size", "8",
         "--sample-max-tokens", "0", "--preflight-steps", "0", "--device", "cpu", "--dtype", "fp32"]


def _run(args: list[str], capsys) -> str:
    rc = main(args)
    out = capsys.readouterr()
    assert rc == 0, f"scalelab {' '.join(args)} -> {rc}\n{out.err[-2000:]}"
    return out.out


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SCALELAB_NO_PROGRESS", "1")
    run = RunDir(tmp_path / "run")
    corpus = [str(STDLIB / "json"), str(STDLIB / "textwrap.py"), str(STDLIB / "string.py")]
    _run(["tokenizer", "--run", str(run.root), "--corpus", *corpus, "--vocab-size", "512", "--val-fraction", "0.2"],
         capsys)
    assert run.tokenizer_json.is_file() and run.data_file("train").is_file()

    _run(["pretrain", "--run", str(run.root), *MODEL, "--max-steps", "30", "--warmup-steps", "5", "--lr", "0.01",
          "--eval-every", "0", "--log-every", "5"], capsys)
    assert run.latest_step_dir("base").name == "step_0000030"

    # SFT: the task mixture + a user file, through the shared loop (stage chat, from base)
    chats = tmp_path / "mine.jsonl"
    chats.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}."},
                                                        {"role": "assistant", "content": w}]})
                               for w in ("hello", "goodbye", "yes", "no")) + "\n")
    sft = ["sft", "--run", str(run.root), *MODEL, "--tasks", "arithmetic:2", "--data", f"{chats}:1",
           "--conversations", "300", "--val-conversations", "20", "--max-steps", "12", "--save-every", "6",
           "--warmup-steps", "2", "--eval-every", "0", "--log-every", "3", "--keep-last", "0"]
    out = _run(sft, capsys)
    assert "SFT data: 280 conversations" in out and "held out for validation" in out
    chat_dir = run.stage_dir("chat")
    final = load_file(str(chat_dir / "step_0000012" / "model.safetensors"))
    base = load_file(str(run.latest_step_dir("base") / "model.safetensors"))
    assert any(not torch.equal(final[k], base[k]) for k in final)  # SFT changed the weights
    meta = json.loads((chat_dir / "step_0000012" / "meta.json").read_text())
    assert meta["stage"] == "chat" and meta["train_config"]["init_from"] == "base"
    metrics = [json.loads(line) for line in run.metrics_jsonl.read_text().splitlines()]
    assert {m["stage"] for m in metrics} == {"base", "chat"}
    assert all(m["loss"] == m["loss"] for m in metrics if "loss" in m)  # no NaN

    # resume: lose the last checkpoint, rerun the same command -> continues from step 6 and ends where it did
    import shutil

    shutil.rmtree(chat_dir / "step_0000012")
    (chat_dir / "latest").unlink()
    out = _run(sft, capsys)
    assert run.latest_step_dir("chat").name == "step_0000012"
    resumed = load_file(str(chat_dir / "step_0000012" / "model.safetensors"))
    assert all(torch.allclose(resumed[k], final[k], atol=1e-6) for k in final)
    steps = [m["step"] for m in map(json.loads, run.metrics_jsonl.read_text().splitlines())
             if m["stage"] == "chat" and "loss" in m]
    assert steps == sorted(set(steps)) == [3, 6, 9, 12]  # no duplicated lines after the resume

    # eval both stages on one task, then the report and one chat turn
    for stage in ("base", "chat"):
        out = _run(["eval", "--run", str(run.root), "--stage", stage, "--tasks", "arithmetic", "--limit", "4",
                    "--max-tokens", "6", "--device", "cpu"], capsys)
        assert "arithmetic" in out
        res = json.loads(run.eval_json(stage).read_text())
        assert res["tasks"]["arithmetic"]["n"] == 4 and 0.0 <= res["tasks"]["arithmetic"]["score"] <= 1.0
    assert "base (few-shot) vs chat (template)" in out
    out = _run(["report", "--run", str(run.root)], capsys)
    assert run.report_md.is_file() and (run.root / "loss.png").is_file() and "arithmetic" in out
    out = _run(["chat", "--run", str(run.root), "--prompt", "What is 2 plus 2?", "--max-tokens", "8",
                "--temperature", "0", "--device", "cpu"], capsys)
    assert isinstance(out, str)
