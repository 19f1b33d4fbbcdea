"""On a CUDA GPU (marked ``gpu``; skipped without one): the decoder against the full forward for ragged rows, CUDA
graph replay against the same step run eagerly, concurrent requests against sequential generation, bf16 training
that learns and resumes exactly, the Hugging Face export's logits, all on the device.

    .venv/bin/python -m pytest -q -m gpu tests        # or scripts/gpu_check.sh for these and the benchmarks
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from scalelab.lm.inference.batching import generate
from scalelab.lm.inference.decoding import Decoder
from scalelab.lm.inference.engine import Engine
from scalelab.lm.model import GPT, ModelConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CFG = dict(vocab_size=512, n_layer=2, n_embd=128, n_head=4, n_kv_head=2, max_seq_len=128)
PROMPTS = [[1, 2, 3], list(range(10, 40)), [7], [9] * 13 + [2], [3, 3], list(range(50, 61))]
TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}


def cuda_model(dtype: torch.dtype = torch.float32, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**CFG, **kw})).to("cuda", dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_logits_equal_the_full_forward_for_ragged_rows(dtype: torch.dtype) -> None:
    model = cuda_model(dtype)
    dec = Decoder(model, 4)
    assert dec.runner is not None and dec.runner.graphs, dec.backend
    seqs = [list(p) for p in PROMPTS[:3]]
    for r, p in enumerate(seqs):
        dec.prefill(r, p)
    tokens = [5, 6, 7]
    for _ in range(10):
        logits = dec.decode(tokens)
        for s, t in zip(seqs, tokens):
            s.append(t)
        tokens = logits.argmax(-1).tolist()
    with torch.no_grad():
        for r, s in enumerate(seqs):
            full = model(torch.tensor([s], device="cuda"))[0][0, -1]
            torch.testing.assert_close(logits[r].float(), full.float(), **TOL[dtype])
    assert dec.runner.replays >= 10 and not dec.runner.failed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replay_equals_the_same_step_run_eagerly(dtype: torch.dtype) -> None:
    """Same static step, replayed as a graph vs called eagerly: identical logits and greedy tokens."""
    model = cuda_model(dtype)
    replay, eager = Decoder(model, 8), Decoder(model, 8)
    eager.runner.graphs = False
    outs = []
    for dec in (replay, eager):
        for r, p in enumerate(PROMPTS[:5]):
            dec.prefill(r, p)
        tokens, steps = [1, 2, 3, 4, 5], []
        for _ in range(20):
            logits = dec.decode(tokens)
            steps.append(logits.clone())
            tokens = logits.argmax(-1).tolist()
        outs.append(steps)
    for a, b in zip(*outs):
        if dtype == torch.float32:
            assert torch.equal(a, b)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert replay.runner.captured and not eager.runner.captured


def test_concurrent_requests_equal_sequential_generation() -> None:
    model = cuda_model(torch.float32)
    greedy = [list(generate(model, p, 24, temperature=0)) for p in PROMPTS]
    sampled = [list(generate(model, p, 24, temperature=0.8, top_p=0.9, seed=10 + i)) for i, p in enumerate(PROMPTS)]
    with Engine(model, max_batch=4) as engine:
        reqs = [engine.submit(p, max_tokens=24, temperature=0) for p in PROMPTS]
        reqs += [engine.submit(p, max_tokens=24, temperature=0.8, top_p=0.9, seed=10 + i)
                 for i, p in enumerate(PROMPTS)]
        for r in reqs:
            assert r.wait(120)
        assert engine.stats()["decoder"] == "torch + CUDA graphs"
    assert [r.token_ids for r in reqs] == greedy + sampled


def _byte_run(run: Path) -> Path:
    """Byte-level shards of the standard library's source (vocab 256 + 6 specials), as tests/test_train.py's."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = b"".join(p.read_bytes() for p in sorted(stdlib.glob("*.py"))[:40])[:400_000]
    arr = np.array([0] + [b + 6 for b in text], dtype=np.uint16)
    n = int(len(arr) * 0.9)
    (run / "data").mkdir(parents=True, exist_ok=True)
    arr[:n].tofile(run / "data" / "train.bin")
    arr[n:].tofile(run / "data" / "val.bin")
    (run / "data" / "meta.json").write_text(json.dumps(
        {"dtype": "uint16", "vocab_size": 262, "tokenizer_sha256": "bytes-v1", "splits": {}}))
    return run


def test_bf16_training_learns_and_resumes_exactly(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from scalelab.common import read_jsonl
    from scalelab.lm.train.loop import TrainConfig, train

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        def cfg(run: Path, steps: int) -> TrainConfig:
            return TrainConfig(run=str(run), depth=2, seq_len=128, batch_size=16, max_steps=40, warmup_steps=4,
                               lr=3e-3, eval_every=0, eval_tokens=8192, log_every=5, dtype="bf16", device="cuda",
                               preflight_steps=0, sample_max_tokens=0, save_every=steps)

        full = _byte_run(tmp_path / "full")
        out = train(cfg(full, 40))
        losses = [r["loss"] for r in read_jsonl(full / "metrics.jsonl") if "loss" in r]
        assert losses[-1] < 0.6 * losses[0], losses
        part = _byte_run(tmp_path / "part")
        first = cfg(part, 20)
        first.max_steps = 20
        train(first)
        train(cfg(part, 20))  # resumes from step 20 to 40
        from scalelab.runs import RunDir

        a, b = (load_file(str(RunDir(r).step_dir("base", 40) / "model.safetensors")) for r in (full, part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not bit-exact"
        assert out["step"] == 40
    finally:
        torch.use_deterministic_algorithms(False)


def test_hf_export_logits_match_on_the_device() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from scalelab.lm.interop.hf import export_state, hf_config

    model = cuda_model(torch.float32)
    cfg = hf_config(model.config)
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("torch_dtype", "dtype")}))
    hf.load_state_dict(export_state(model, "hf"), strict=False)
    hf.to("cuda").eval()
    ids = torch.randint(0, CFG["vocab_size"], (2, 50), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits.float(), model(ids)[0], atol=1e-4, rtol=1e-4)
