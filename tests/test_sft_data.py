"""SFT's data contract: a resume continues on the data it started on (or says what changed), the user's own files
are counted, and a huge conversation is cut before it is tokenized, not after."""

from __future__ import annotations

import json
import sysconfig
import time
from pathlib import Path

import pytest

from scalelab.__main__ import main
from scalelab.runs import RunDir

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODEL = ["--depth", "1", "--n-embd", "64", "--n-head", "2", "--seq-len", "64", "--batch-size", "8",
         "--sample-max-tokens", "0", "--preflight-steps", "0", "--device", "cpu", "--dtype", "fp32",
         "--eval-every", "0", "--log-every", "2"]


def run_ok(args: list[str], capsys) -> str:
    rc = main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    return out.out


def chats(path: Path, words: tuple[str, ...]) -> Path:
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}."},
                                                       {"role": "assistant", "content": w}]}) for w in words) + "\n")
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("sftdata") / "run")
    assert main(["tokenizer", "--run", str(run.root), "--corpus", str(STDLIB / "json"), "--vocab-size", "300"]) == 0
    assert main(["pretrain", "--run", str(run.root), *MODEL, "--max-steps", "2"]) == 0
    return run


def test_resume_on_other_data_is_refused_with_what_changed(base_run: RunDir, tmp_path: Path, capsys,
                                                           monkeypatch) -> None:
    import shutil

    monkeypatch.setenv("SCALELAB_NO_PROGRESS", "1")
    run = tmp_path / "run"
    shutil.copytree(base_run.root, run)
    mine = chats(tmp_path / "mine.jsonl", ("hello", "goodbye", "yes", "no"))
    sft = ["sft", "--run", str(run), *MODEL, "--tasks", "arithmetic:1", "--data", f"{mine}:1",
           "--conversations", "60", "--val-conversations", "6", "--warmup-steps", "1"]
    out = run_ok([*sft, "--max-steps", "2"], capsys)
    assert "SFT data: 30 conversations drawn from your mine.jsonl" in out
    # the same command on the same data resumes
    out = run_ok([*sft, "--max-steps", "4"], capsys)
    assert "resuming" in out and "at step 2" in out
    # the file changed under the run: refused, naming what changed, nothing written
    chats(mine, ("red", "green", "blue", "yellow", "purple"))
    assert main([*sft, "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "the training data differ from the checkpoint's (data_sha256:" in err
    assert "--resume-on-new-data" in err
    assert RunDir(run).latest_step_dir("chat").name == "step_0000004"
    out = run_ok([*sft, "--max-steps", "6", "--resume-on-new-data"], capsys)
    assert "warning: resuming on different data" in out
    assert RunDir(run).latest_step_dir("chat").name == "step_0000006"


def test_a_huge_conversation_is_cut_before_tokenizing(base_run: RunDir) -> None:
    from scalelab.lm.chat import render
    from scalelab.lm.data.tokenizer import load_tokenizer, token_byte_lengths
    from scalelab.lm.posttrain.sft import clip_conversation, fit_conversation

    tok = load_tokenizer(base_run.root)
    huge = [{"role": "user", "content": "Tell me everything."},
            {"role": "assistant", "content": "def f(x):\n    return x + 1\n" * 400_000}]  # ~11 MB
    max_chars = 2 * 65 * int(token_byte_lengths(tok).max())
    t0 = time.perf_counter()
    ids, mask = render(tok, clip_conversation(huge, max_chars))
    assert time.perf_counter() - t0 < 2.0
    cut, what = fit_conversation(ids, mask, 65)
    assert what == "truncated" and len(cut[0]) == 65
    # the same first 65 tokens as rendering it whole would have kept (checked on a 100 kB version)
    small = [huge[0], {**huge[1], "content": huge[1]["content"][:100_000]}]
    full_ids, full_mask = render(tok, small)
    assert fit_conversation(full_ids, full_mask, 65)[0] == cut
