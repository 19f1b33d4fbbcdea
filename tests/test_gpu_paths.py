"""The GPU code paths' logic, on a CPU: batch and length buckets, the static decode step that CUDA graphs replay
(padding rows, static buffers, rows left out mid-prefill), sampling as tensor ops, the chunked cross-entropy and
the pinned batch copy. The same checks on a real GPU are in tests/test_gpu.py (marked ``gpu``)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from scalelab.lm.data.loader import to_device
from scalelab.lm.inference import batching, cpu_kernels, decoding, graphs
from scalelab.lm.inference.batching import generate, generate_batch
from scalelab.lm.inference.decoding import Decoder
from scalelab.lm.inference.engine import Engine
from scalelab.lm.inference.sampling import Sampler, sample_on_device, sample_rows
from scalelab.lm.model import GPT, ModelConfig
from scalelab.lm.train import loss as chunked_loss
from scalelab.lm.train.loss import LossSum

CFG = dict(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=64)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [7], [9] * 13 + [2], [3, 3]]


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**CFG)).eval()


def test_buckets() -> None:
    assert graphs.batch_buckets(1) == [1]
    assert graphs.batch_buckets(8) == [1, 2, 4, 8]
    assert graphs.batch_buckets(12) == [1, 2, 4, 8, 12]
    assert graphs.batch_buckets(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert graphs.length_buckets(1024) == [256, 512, 1024]
    assert graphs.length_buckets(100) == [100]
    assert graphs.length_buckets(600, 256) == [256, 512, 600]
    assert [graphs.pick([1, 2, 4, 8], n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError):
        graphs.pick([1, 2], 3)


def test_runner_pads_rows_into_static_buffers() -> None:
    """n rows go into bucket B with token 0 at position 0 beyond n; the step sees views of one static buffer."""
    seen = []

    def step(tokens, positions, length):
        seen.append((tokens.data_ptr(), tokens.tolist(), positions.tolist(), length))
        return torch.stack([tokens.float(), positions.float()], 1)

    runner = graphs.GraphRunner(step, max_batch=8, max_len=40, device=torch.device("cpu"), smallest_length=8)
    assert not runner.graphs  # no CUDA here: "replay" is a plain call on the same buffers
    out = runner.run([5, 6, 7], [3, 9, 1])
    assert out.tolist() == [[5, 3], [6, 9], [7, 1]]
    runner.run([8], [20])
    assert seen[0][1:] == ([5, 6, 7, 0], [3, 9, 1, 0], 16)
    assert seen[1][1:] == ([8], [20], 32)
    assert seen[0][0] == seen[1][0] == runner.inputs.data_ptr()
    assert runner.capture_all() == 0


@pytest.mark.parametrize("kernels", [True, False])
def test_static_step_equals_the_plain_decoder_and_the_model(model: GPT, kernels: bool) -> None:
    """Ragged rows (3 of a bucket of 4, at lengths 3, 10 and 1), several length buckets: the static step's logits
    equal the plain decoder's and the full forward's."""
    with cpu_kernels.disabled() if not kernels else contextlib.nullcontext():
        plain, static = Decoder(model, 4, cuda_graphs=False), Decoder(model, 4, cuda_graphs=True)
        static.runner.lengths = graphs.length_buckets(static.max_len, 8)
        assert static.runner is not None and not static.packed and plain.runner is None
        seqs = [list(p) for p in PROMPTS[:3]]
        for r, p in enumerate(seqs):
            torch.testing.assert_close(static.prefill(r, p), plain.prefill(r, p), atol=1e-5, rtol=1e-5)
        tokens = [5, 6, 7]
        for _ in range(12):
            a, b = plain.decode(tokens), static.decode(tokens)
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            for s, t in zip(seqs, tokens):
                s.append(t)
            tokens = a.argmax(-1).tolist()
        assert static.lengths == plain.lengths == [len(s) for s in seqs] + [0]
        for r, s in enumerate(seqs):  # the last decode's logits against the model's full forward
            with torch.no_grad():
                full = model(torch.tensor([s]))[0][0, -1]
            torch.testing.assert_close(a[r], full, atol=1e-4, rtol=1e-4)


def test_rows_left_out_keep_their_cache(model: GPT) -> None:
    """A row left out of a decode step (None: still prefilling) keeps its length; its next prefill chunk overwrites
    the padding write, so its logits equal a decoder that never saw the step."""
    a, b = Decoder(model, 2, cuda_graphs=True), Decoder(model, 2, cuda_graphs=True)
    for dec in (a, b):
        dec.prefill(0, [1, 2, 3])
        dec.prefill(1, [4, 5])
    a.decode([9, None])
    assert a.lengths == [4, 2]
    b.decode([9, 8])
    b.lengths[1] = 2  # forget row 1's decode: its next prefill overwrites position 2
    torch.testing.assert_close(a.prefill(1, [6, 7]), b.prefill(1, [6, 7]), atol=1e-6, rtol=1e-6)


def test_generation_through_the_static_path_equals_the_default(model: GPT, monkeypatch) -> None:
    """generate, generate_batch (3 rows for 5 prompts: rows freed and refilled, prompts chunked across steps) and
    the engine give the default path's tokens, greedy and seeded sampling alike."""
    greedy = generate_batch(model, PROMPTS, 20, temperature=0, max_batch=3)
    sampled = generate_batch(model, PROMPTS, 20, temperature=0.9, top_k=20, seed=3, max_batch=3)
    monkeypatch.setattr(decoding, "DEFAULT_CUDA_GRAPHS", True)
    monkeypatch.setattr(graphs, "SMALLEST_LENGTH", 8)
    monkeypatch.setattr(batching, "PREFILL_CHUNK", 5)
    assert generate_batch(model, PROMPTS, 20, temperature=0, max_batch=3) == greedy
    assert generate_batch(model, PROMPTS, 20, temperature=0.9, top_k=20, seed=3, max_batch=3) == sampled
    assert [list(generate(model, p, 20, temperature=0)) for p in PROMPTS] == greedy
    with Engine(model, max_batch=3) as engine:
        assert engine.stats()["decoder"] == "static decode step (eager)"
        reqs = [engine.submit(p, max_tokens=20, temperature=0.9, top_k=20, seed=3 + i) for i, p in enumerate(PROMPTS)]
        for r in reqs:
            r.wait(60)
        assert [r.token_ids for r in reqs] == sampled


def test_device_sampling_draws_what_the_cpu_paths_draw() -> None:
    """sample_tensor (the GPU's one-pass draw) against the C kernel and torch's CPU path: same seeds, same tokens,
    greedy rows mixed in, ties at the top."""
    torch.manual_seed(0)
    settings = [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9), dict(temperature=1.3, top_k=40),
                dict(temperature=0.9, top_k=200, top_p=0.5), dict(temperature=0.2, top_p=0.3), dict(temperature=0)]
    logits = torch.randn(60, 1000) * 3
    logits[::5, :10] = 4.0

    def samplers(seed: int) -> list[Sampler]:
        return [Sampler(**settings[i % len(settings)], seed=seed * 100 + i) for i in range(60)]

    same = total = 0
    for seed in range(4):
        device = sample_on_device(logits, samplers(seed)).tolist()
        with cpu_kernels.disabled():
            same += sum(a == b for a, b in zip(device, sample_rows(logits, samplers(seed))))
        same += sum(a == b for a, b in zip(device, sample_rows(logits, samplers(seed))))
        total += 2 * len(device)
    assert same / total > 0.99, f"{same} of {total} draws agree"
    tied = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    assert sample_on_device(tied, [Sampler(0.0), Sampler(0.0)]).tolist() == [1, 0]
    top1 = sample_on_device(tied, [Sampler(1.0, top_k=1, seed=1), Sampler(1.0, top_p=0.01, seed=2)]).tolist()
    assert top1[0] == 1 and top1[1] in range(4)


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_cross_entropy_equals_the_full_logits_path(tie: bool, monkeypatch) -> None:
    """Loss and every gradient of the chunked loss (7 rows a chunk, masked targets) equal F.cross_entropy on the
    whole batch's logits: fp32 to rounding, bf16 autocast within bf16's precision."""
    monkeypatch.setattr(chunked_loss, "CHUNK_ELEMENTS", 97 * 7)
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**CFG, "tie_embeddings": tie}))
    x, y = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    y[0, :5] = -1
    for autocast, tol in ((False, 1e-5), (True, 2e-2)):
        results = []
        for chunked in (False, True):
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                value = LossSum(model, chunked=chunked)(x, y)
            (value * 0.5).backward()
            results.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
        (full, g_full), (chunk, g_chunk) = results
        torch.testing.assert_close(chunk, full, rtol=tol, atol=tol)
        for a, b in zip(g_chunk, g_full):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))
    assert not LossSum(model).chunked  # the default on CPU: today's path
    with torch.no_grad():
        ref = F.cross_entropy(model(x)[0].view(-1, 97), y.view(-1), ignore_index=-1, reduction="sum")
        h, _ = model(x, hidden=True)
    torch.testing.assert_close(chunked_loss.linear_cross_entropy(h.view(-1, 64), model.lm_head.weight, y), ref)


def test_to_device_on_cpu_is_the_same_tensor_values() -> None:
    x = torch.arange(12).view(3, 4)
    assert torch.equal(to_device(x, "cpu"), x)
