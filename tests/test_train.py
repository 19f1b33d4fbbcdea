"""The pretraining loop: loss goes down on real text, bits per byte, schedules, accumulation, masks, bad input.

Tiny models (1-2 layers, width 64) on byte-level shards of the Tiny Shakespeare fixture (tests/fixtures) written
here with numpy in the format of scalelab/lm/data/shards.py (vocab 256 + 6 special tokens,
<|bos|> before every paragraph).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import shakespeare_bytes

from scalelab.common import UsageError, read_jsonl
from scalelab.lm.data.loader import TokenSource
from scalelab.lm.train.loop import TrainConfig, train
from scalelab.lm.train.loss import eval_sums
from scalelab.lm.train.optim import lr_at


def make_byte_run(run: Path, max_bytes: int = 300_000) -> Path:
    text = shakespeare_bytes(max_bytes)
    ids: list[int] = []
    for para in text.split(b"\n\n"):
        ids += [0] + [b + 6 for b in para + b"\n\n"]
    arr = np.array(ids, dtype=np.uint16)
    n = int(len(arr) * 0.9)
    (run / "data").mkdir(parents=True, exist_ok=True)
    arr[:n].tofile(run / "data" / "train.bin")
    arr[n:].tofile(run / "data" / "val.bin")
    np.save(run / "data" / "token_bytes.npy", np.array([0] * 6 + [1] * 256, dtype=np.int32))
    (run / "data" / "meta.json").write_text(json.dumps(
        {"dtype": "uint16", "vocab_size": 262, "tokenizer_sha256": "bytes-v1", "splits": {}}))
    return run


def tiny(run: Path, **kw) -> TrainConfig:
    base = dict(run=str(run), depth=1, seq_len=64, batch_size=8, max_steps=30, warmup_steps=5, lr=3e-3,
                eval_every=0, eval_tokens=4096, log_every=1, dtype="fp32", device="cpu", preflight_steps=0,
                sample_max_tokens=0)
    base.update(kw)
    return TrainConfig(**base)


def losses(run: Path, stage: str = "base") -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r.get("stage") == stage and "loss" in r}


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory) -> Path:
    return make_byte_run(tmp_path_factory.mktemp("bytes"))


def test_loss_decreases_on_real_text(tmp_path: Path) -> None:
    run = make_byte_run(tmp_path / "r")
    out = train(tiny(run, max_steps=40, eval_every=20, sample_max_tokens=8, sample_prompts=["", "KING"]))
    rows = read_jsonl(run / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert {"stage", "step", "loss", "lr", "tokens_per_s", "mfu"} <= set(train_rows[0])
    assert train_rows[0]["loss"] > 5.0  # ~ln(262) at init
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 2.0
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    # bytes tokenizer: bits per byte = nats/ln2 over the non-special targets, near the loss in bits
    assert 0.8 * evals[-1]["val_loss"] / math.log(2) < evals[-1]["val_bpb"] < 1.2 * evals[-1]["val_loss"] / math.log(2)
    assert len(evals[-1]["samples"]) == 2 and not any("error" in x for x in evals[-1]["samples"])
    assert out["step"] == 40 and (run / "base" / "step_0000040" / "model.safetensors").is_file()
    assert (run / "loss_base.png").stat().st_size > 1000
    meta = json.loads((run / "base" / "step_0000040" / "meta.json").read_text())
    assert meta["tokenizer_sha256"] == "bytes-v1" and meta["tokens_seen"] == 40 * 8 * 64


def test_samples_under_bf16_autocast(tmp_path: Path) -> None:
    """The evaluation samples are drawn inside the trainer's autocast region (bf16 here) and must still work."""
    run = make_byte_run(tmp_path / "r")
    train(tiny(run, max_steps=4, eval_every=4, dtype="bf16", sample_max_tokens=6, sample_prompts=["KING"]))
    samples = [r for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r][-1]["samples"]
    assert len(samples) == 1 and "error" not in samples[0], samples


def test_bits_per_byte_hand_checked() -> None:
    logits = torch.zeros(1, 4, 4)  # uniform over 4 tokens: ln 4 nats each
    y = torch.tensor([[1, 2, 0, -1]])  # token 0 is special (0 bytes), -1 is masked
    token_bytes = torch.tensor([0, 1, 3, 1])
    nats, count, nats_b, nbytes = (float(v) for v in eval_sums(logits, y, token_bytes))
    assert count == 3 and nats == pytest.approx(3 * math.log(4))
    assert nbytes == 4 and nats_b == pytest.approx(2 * math.log(4))
    assert nats_b / math.log(2) / nbytes == pytest.approx(1.0)  # 2 tokens x 2 bits over 4 bytes


def test_schedule_shapes() -> None:
    kw = dict(max_lr=1.0, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(55, **kw) == pytest.approx(0.55)  # cosine midpoint: (1 + 0.1) / 2
    assert lr_at(100, **kw) == pytest.approx(0.1)
    wsd = dict(kw, schedule="wsd", decay_frac=0.2)
    assert lr_at(50, **wsd) == 1.0 and lr_at(79, **wsd) == 1.0
    assert lr_at(90, **wsd) == pytest.approx(0.55) and lr_at(100, **wsd) == pytest.approx(0.1)
    assert lr_at(60, **dict(kw, schedule="constant")) == 1.0


def test_grad_accumulation_matches_big_batch(tmp_path: Path, byte_run: Path) -> None:
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(byte_run / "data", a / "data")
    shutil.copytree(byte_run / "data", b / "data")
    train(tiny(a, max_steps=6, batch_size=8))
    train(tiny(b, max_steps=6, batch_size=4, total_batch_tokens=8 * 64))
    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys() == set(range(1, 7))
    for s in la:
        assert la[s] == pytest.approx(lb[s], abs=1e-5)


def test_loader_rank_slices_equal_accumulation(byte_run: Path) -> None:
    arr = np.fromfile(byte_run / "data" / "train.bin", dtype=np.uint16)
    one = TokenSource(arr, None, 32, 4, grad_accum=4, rank=0, world_size=1, seed=3)
    ranks = [TokenSource(arr, None, 32, 4, grad_accum=2, rank=r, world_size=2, seed=3) for r in range(2)]
    for step in (0, 7, 5000):  # 5000 steps wraps around several epochs
        x1 = torch.cat([one.next_batch(step, m)[0] for m in range(4)])
        x2 = torch.cat([src.next_batch(step, m)[0] for src in ranks for m in range(2)])
        assert torch.equal(x1, x2)
    x, y = one.next_batch(3, 1)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(one.next_batch(3, 1)[0], x)  # deterministic
    starts = {one._start(n) for n in range(one.num_windows)}
    assert len(starts) == one.num_windows  # one epoch visits every window once


class MaskedSource:
    """Wraps a source; every batch of step 1 has all targets masked."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def next_batch(self, step: int, micro_step: int):
        x, y = self.inner.next_batch(step, micro_step)
        return (x, torch.full_like(y, -1)) if step == 1 else (x, y)

    def val_batches(self):
        return self.inner.val_batches()

    def state_dict(self):
        return {"kind": "masked"}


def test_all_masked_batch_gives_no_nan(tmp_path: Path, byte_run: Path) -> None:
    import shutil

    from scalelab.lm.data.loader import token_source
    from scalelab.runs import RunDir

    run = tmp_path / "m"
    shutil.copytree(byte_run / "data", run / "data")
    src = MaskedSource(token_source(RunDir(run), 64, 8, 1, 0, 1, 1337, 4096))
    out = train(tiny(run, max_steps=3), source=src)
    ls = losses(run)
    assert ls[2] == 0.0 and math.isfinite(ls[3]) and math.isfinite(out["val_loss"])


def test_bad_input_is_a_usage_error(tmp_path: Path, byte_run: Path) -> None:
    with pytest.raises(UsageError, match="meta.json"):
        train(tiny(tmp_path / "nothing"))
    run = make_byte_run(tmp_path / "empty", max_bytes=2000)
    (run / "data" / "train.bin").write_bytes(b"")
    with pytest.raises(UsageError, match="train.bin: empty"):
        train(tiny(run))
    (run / "data" / "train.bin").write_bytes(b"\x01\x00" * 50)
    with pytest.raises(UsageError, match="--seq-len 64 needs at least 128"):
        train(tiny(run))
    with pytest.raises(UsageError, match="multiple of"):
        train(tiny(byte_run, total_batch_tokens=1000))


def test_preflight_only_and_memory_refusal(tmp_path: Path, byte_run: Path, capsys) -> None:
    out = train(tiny(byte_run, preflight_only=True, preflight_steps=1))
    assert out["preflight"]["tokens_per_s"] > 0 and out["preflight"]["num_params"] > 0
    assert "memory/process" in capsys.readouterr().out
    assert not (byte_run / "base").exists()
    with pytest.raises(UsageError, match="--batch-size"):
        train(tiny(byte_run, batch_size=1_000_000, preflight_only=True))


def test_replan_total_only_before_decay() -> None:
    from scalelab.lm.train.optim import decay_start, replan_total, resolve_schedule

    assert resolve_schedule("auto", 5.0) == "wsd" and resolve_schedule("auto", 0.0) == "cosine"
    kw = dict(max_steps=10_000, schedule="wsd", decay_frac=0.2)
    assert replan_total(10, 100, remaining_s=9.0, step_s=0.1, **kw) == 100  # 90 more steps fit
    assert replan_total(10, 100, remaining_s=19.0, step_s=0.1, **kw) == 200  # machine got faster
    assert replan_total(10, 100, remaining_s=19.0, step_s=0.1, **dict(kw, max_steps=150)) == 150  # capped
    assert replan_total(85, 100, remaining_s=100.0, step_s=0.1, **kw) == 100  # in the decay: frozen
    late = replan_total(60, 100, remaining_s=0.0, step_s=0.1, **kw)  # out of time: decay starts now, no LR jump
    assert decay_start(late, "wsd", 0.2) == 60


class SpeedChangingSource:
    """Wraps a source; each step's batch costs ``slow_s`` extra seconds from step ``at`` on (``fast_s`` before)."""

    def __init__(self, inner, at: int, fast_s: float, slow_s: float) -> None:
        self.inner, self.at, self.fast_s, self.slow_s = inner, at, fast_s, slow_s

    def next_batch(self, step: int, micro_step: int):
        import time

        time.sleep(self.slow_s if step >= self.at else self.fast_s)
        return self.inner.next_batch(step, micro_step)

    def val_batches(self):
        return self.inner.val_batches()

    def state_dict(self):
        return {"kind": "speed"}


@pytest.mark.parametrize("fast_s,slow_s", [(0.0, 0.06), (0.06, 0.0)], ids=["slows-down", "speeds-up"])
def test_time_budget_replans_and_completes_decay(tmp_path: Path, byte_run: Path, fast_s: float, slow_s: float) -> None:
    import shutil
    import time

    from scalelab.lm.data.loader import token_source
    from scalelab.runs import RunDir

    run = tmp_path / "tb"
    shutil.copytree(byte_run / "data", run / "data")
    src = SpeedChangingSource(token_source(RunDir(run), 64, 8, 1, 0, 1, 1337, 4096), at=20, fast_s=fast_s,
                              slow_s=slow_s)
    budget_s = 6.0
    t0 = time.perf_counter()
    out = train(tiny(run, max_steps=100_000, time_budget=budget_s / 60, log_every=5, warmup_steps=5,
                     eval_tokens=2048, eval_every=25,
                     num_threads=1), source=src)
    wall = time.perf_counter() - t0
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    plans = [r["planned_steps"] for r in rows]
    assert len(set(plans)) > 2  # re-planned as the speed changed (preflight was skipped: the first plan is the cap)
    assert out["stopped"] is None and out["step"] == out["total_steps"] == rows[-1]["step"] == plans[-1]
    # the wsd decay ran to its end: the last update used the last LR of the schedule, one decay step above the minimum
    total, lr_max, lr_min = out["total_steps"], 3e-3, 3e-4
    decay_steps = round(0.2 * total)
    assert rows[-1]["lr"] == pytest.approx(lr_at(total - 1, lr_max, total, 5, "wsd", 0.1, 0.2))
    assert rows[-1]["lr"] <= lr_min + (lr_max - lr_min) / decay_steps + 1e-12
    # about the budget; other processes on the machine make single windows slow, and a run found late starts its
    # decay at once and may take up to 1.5x the budget to finish it (the hard limit)
    assert 0.7 * budget_s <= out["elapsed_s"] <= 1.5 * budget_s + 1.0, out["elapsed_s"]
    assert wall < 1.5 * budget_s + 15  # plus model setup
    from scalelab.lm.checkpoint import load_trainer_state

    assert load_trainer_state(Path(out["checkpoint"]))["total_steps"] == total  # a resume continues this plan
    print(f"elapsed {out['elapsed_s']:.2f} s of {budget_s} s, plans {plans[:3]}..{plans[-3:]}")


def test_compile_failure_falls_back_to_eager(tmp_path: Path, monkeypatch, capsys) -> None:
    """A machine where torch.compile cannot work (no C++ compiler...) still trains, with a warning."""

    class Broken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda mod, *a, **k: Broken(mod))
    run = make_byte_run(tmp_path / "r")
    out = train(tiny(run, max_steps=3, compile=True))
    assert out["step"] == 3
    printed = capsys.readouterr()
    warning = "torch.compile failed (RuntimeError: InductorError: no working C++ compiler found)"
    assert warning in printed.out + printed.err
