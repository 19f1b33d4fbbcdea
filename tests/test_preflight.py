"""Preflight talks before it times anything, and a run that cannot fit is told at once what would fit."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import make_byte_run, tiny

from scalelab.common import UsageError
from scalelab.lm.model import ModelConfig
from scalelab.lm.train import preflight
from scalelab.lm.train.loop import train


def test_model_and_memory_lines_come_before_the_timed_steps(tmp_path: Path, capsys) -> None:
    run = make_byte_run(tmp_path / "run", max_bytes=30_000)
    train(tiny(run, preflight_steps=2, preflight_only=True))
    out = capsys.readouterr().out
    lines = [line.split(":")[0] for line in out.splitlines()]
    assert lines.index("model") < lines.index("memory/process") < lines.index("preflight") < lines.index("throughput")
    assert "preflight: timing 2 dry steps" in out


def test_the_memory_refusal_names_the_batch_that_fits_at_once(monkeypatch) -> None:
    mcfg = ModelConfig(vocab_size=32768, n_layer=12, n_embd=768, n_head=12, n_kv_head=12, max_seq_len=1024)
    params = 135_000_000
    est = preflight.estimate_memory(mcfg, params, 2048, 1024, "bf16")
    monkeypatch.setattr(preflight, "available_memory", lambda device: (24 * 1024**3, "available RAM"))
    plan = preflight.Plan(mcfg, params, 0, est, "cpu", "bf16", 1, 2048, 1024, 1)
    with pytest.raises(UsageError) as info:
        preflight.check_fits(plan)
    msg = str(info.value)
    suggested = int(msg.split("--batch-size ")[1].split()[0])
    budget = 0.9 * 24 * 1024**3
    fits = [b for b in range(1, 2048) if 2048 % b == 0
            and preflight.estimate_memory(mcfg, params, b, 1024, "bf16").total <= budget]
    assert suggested == max(fits) and suggested < 1024  # the largest that fits in one go, not one halving
    assert f"--total-batch-tokens {2048 * 1024} (the same tokens per step in {2048 // suggested} accumulation" in msg


def test_files_the_corpus_leaves_out_are_named(tmp_path: Path, capsys) -> None:
    from scalelab.lm.data.corpus import note_skipped_files, parse_source

    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.png").write_bytes(b"\x89PNG")
    (tmp_path / "c.png").write_bytes(b"\x89PNG")
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    assert note_skipped_files(parse_source(str(tmp_path))) == 3
    out = capsys.readouterr().out
    assert "skipped 3 file(s) that are not text (2 .png, 1 .jsonl)" in out and f"{tmp_path}#FIELD" in out


def test_throughput_is_the_median_step_so_one_stall_does_not_set_the_plan() -> None:
    import time

    delays = iter([0.0, 0.01, 0.5, 0.01, 0.01, 0.01])  # warm-up, then one 50x stall among five timed steps
    rate = preflight.measure_throughput(lambda: time.sleep(next(delays)), 1000, 5, "cpu")
    assert 50_000 < rate < 110_000  # 1000 tokens per ~0.01 s; the mean would give under 20,000


def test_omp_num_threads_sets_the_training_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from scalelab.common import omp_threads, setup_backend

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        setup_backend("cpu", 1)
        assert omp_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "lots")
        assert omp_threads() == 0  # unreadable: the core count decides, as without it
    finally:
        torch.set_num_threads(before)
