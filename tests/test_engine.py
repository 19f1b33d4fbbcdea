"""The inference engine against references: full forwards, one-by-one generation, sampler support, the scheduler.

    .venv/bin/pytest tests/test_engine.py -q
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import pytest
import torch

from scalelab.lm.inference import batching, cpu_kernels
from scalelab.lm.inference.batching import generate, generate_batch
from scalelab.lm.inference.decoding import Decoder
from scalelab.lm.inference.engine import Engine, QueueFull
from scalelab.lm.inference.sampling import Sampler
from scalelab.lm.inference.textstream import TextStream
from scalelab.lm.model import GPT, ModelConfig
from scalelab.lm.special_tokens import ASSISTANT, BOS, END, SPECIAL_TOKENS

TEXT = ("Hello there! How are you today? I am fine, thanks. The quick brown fox jumps over the lazy dog. "
        "Write a short email to Maria about lunch. 12 + 34 = 46.\n") * 20


# ------------------------------------------------------------------------------------------------------ helpers

def random_model(max_seq_len: int = 64, n_kv_head: int = 2, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=n_kv_head, max_seq_len=max_seq_len)
    return GPT(cfg).eval()


def make_tokenizer():
    """A tiny byte-level BPE with the special tokens at ids 0..5 (as scalelab.lm.data.tokenizer makes them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    return tok


def scripted_model(tok, reply: str = "ok", max_seq_len: int = 64) -> GPT:
    """A model that answers every chat prompt with ``reply`` then <|end|>, and otherwise says <|end|>.

    The blocks are switched off (zero output projections), so the next token depends only on the current one:
    the embedding marks a few tokens with their own channel and the output layer maps each channel to the next
    token of the reply; channel 0 (on for every token) weakly votes for <|end|>.
    """
    chain = [tok.token_to_id(ASSISTANT)] + [tok.token_to_id(ch) for ch in reply] + [tok.token_to_id(END)]
    assert None not in chain and len(set(chain)) == len(chain)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                            max_seq_len=max_seq_len)).eval()
    with torch.no_grad():
        for block in model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.token_to_id(END), 0] = 5.0
        for ch, (cur, nxt) in enumerate(zip(chain, chain[1:]), start=1):
            model.embed_tokens.weight[cur, ch] = 10.0
            model.lm_head.weight[nxt, ch] = 20.0
    return model


def full_forward_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            out.append(int(logits[0, -1].argmax()))
            seq.append(out[-1])
    return out


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they lose 10-100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------ decoding

@pytest.mark.parametrize("kernels", ["scalelab CPU kernels", "torch only"])
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_decoder_logits_match_model_forward_with_ragged_rows(n_kv_head: int, kernels: str) -> None:

    model = random_model(n_kv_head=n_kv_head)
    with contextlib.nullcontext() if kernels == "scalelab CPU kernels" else cpu_kernels.disabled():
        dec = Decoder(model, max_batch=3)
    assert dec.packed == (kernels == "scalelab CPU kernels" and cpu_kernels.available())
    seqs = [torch.randint(0, 97, (n,)).tolist() for n in (11, 5, 1)]  # the first row the longest
    with torch.no_grad():
        for row, s in enumerate(seqs):
            ref = model(torch.tensor([s]))[0][0, -1]
            assert (dec.prefill(row, s)[0] - ref).abs().max() < 1e-4
        new = [3, 7, 11]
        got = dec.decode(new)  # three rows at three different positions, one forward
        for row, s in enumerate(seqs):
            ref = model(torch.tensor([s + [new[row]]]))[0][0, -1]
            assert (got[row] - ref).abs().max() < 1e-4
        got = dec.prefill(1, [4, 5, 6])  # a prefill after cached tokens (causal inside the new ones)
        assert (got[0] - model(torch.tensor([seqs[1] + [7, 4, 5, 6]]))[0][0, -1]).abs().max() < 1e-4
    assert dec.lengths == [12, 9, 2]


def test_decoder_follows_weight_changes_and_bf16_rows() -> None:
    """Fused weights are cached per model: an optimizer step, a load_state_dict or .to() must be seen next time."""
    model = random_model()
    seq = torch.randint(0, 97, (9,)).tolist()

    def check(tol: float) -> Decoder:
        dec = Decoder(model, max_batch=4)
        with torch.no_grad():
            ref = model(torch.tensor([seq]))[0][0, -1].float()
            for row in range(4):  # several rows: the packed (oneDNN) path on CPU
                dec.prefill(row, seq[:-1])
            got = dec.decode([seq[-1]] * 4)
        assert (got - ref).abs().max() < tol
        return dec

    check(1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.tensor([seq]), torch.tensor([seq]))[1].backward()
    opt.step()
    check(1e-4)
    model.load_state_dict(random_model(seed=3).state_dict())
    check(1e-4)
    model.to(torch.bfloat16)
    dec = check(0.1)
    assert dec.k.dtype == dec.v.dtype == torch.float32  # on CPU bf16 weights attend in fp32 (faster kernels there)


def test_greedy_generate_equals_argmax_of_full_forwards() -> None:
    model = random_model()
    prompt = [1, 2, 3, 4, 5]
    assert list(generate(model, prompt, 30, temperature=0)) == full_forward_greedy(model, prompt, 30)


def test_generation_stops_at_the_context_length_and_checks_the_prompt() -> None:
    model = random_model(max_seq_len=32)
    assert len(list(generate(model, list(range(10)), 100, temperature=0))) == 22  # prompt + output == context
    with pytest.raises(ValueError, match="context length is 32"):
        generate(model, list(range(32)), 5)  # raised at the call, not at the first next()
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [1, 97], 5)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [1], 5, temperature=-1)


@pytest.mark.skipif(not cpu_kernels.available(), reason="needs scalelab's CPU kernels (a C compiler)")
def test_packed_forward_mixes_decode_tokens_and_prompt_chunks() -> None:
    """One forward_tokens call: rows 0 and 2 decode a token each while row 1's prompt goes in as two chunks (the
    second chunk in a later call, behind cached tokens); every logit row matches the model's full forward."""
    model = random_model(n_kv_head=2)
    dec = Decoder(model, max_batch=3)
    assert dec.packed
    a, b, c = ([int(t) for t in torch.randint(0, 97, (n,))] for n in (6, 9, 3))
    with torch.no_grad():
        dec.prefill(0, a[:-1])
        dec.prefill(2, c[:-1])
        got = dec.forward_tokens([a[-1], *b[:5], c[-1]], [0, 1, 1, 1, 1, 1, 2], [5, 0, 1, 2, 3, 4, 2], [0, 4, 5, 6])
        for row, seq in zip(got, (a, b[:4], b[:5], c)):
            assert (row - model(torch.tensor([seq]))[0][0, -1]).abs().max() < 1e-4
        got = dec.forward_tokens(b[5:], [1] * 4, range(5, 9))  # the prompt's rest, causal over its cached start
        for i in range(4):
            assert (got[i] - model(torch.tensor([b[:6 + i]]))[0][0, -1]).abs().max() < 1e-4
        with pytest.raises(ValueError, match="context length"):
            dec.forward_tokens([1], [0], [dec.max_len])


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("chunk", [512, 4])
def test_batched_generation_equals_one_by_one(monkeypatch, chunk: int, kernels: bool) -> None:
    """chunk 4: prompts go in 4 tokens a step (chunked prefill) while the other rows decode. kernels False: torch's
    attention, where each prompt is prefilled on admission."""
    monkeypatch.setattr(batching, "PREFILL_CHUNK", chunk)
    if not kernels:
        monkeypatch.setitem(cpu_kernels._state, "off", True)
    model = random_model()
    torch.manual_seed(1)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (3, 9, 1, 15, 4, 7)]
    alone = [list(generate(model, p, 12, temperature=0)) for p in prompts]
    assert alone[3] == full_forward_greedy(model, prompts[3], 12)
    # one long prompt alone: its first steps feed chunks and sample nothing
    assert generate_batch(model, [prompts[3]], 12, temperature=0, max_batch=1) == [alone[3]]
    stop = alone[0][3]  # a stop id that ends some rows early, at different steps
    alone_stop = [list(generate(model, p, 12, temperature=0, stop_ids=[stop])) for p in prompts]
    assert any(len(a) < 12 for a in alone_stop)
    for max_batch in (2, 4, 32):  # 2 and 4: rows retire and free rows take the waiting prompts
        assert generate_batch(model, prompts, 12, temperature=0, max_batch=max_batch) == alone
        assert generate_batch(model, prompts, 12, temperature=0, stop_ids=[stop], max_batch=max_batch) == alone_stop
    sampled = generate_batch(model, prompts, 10, temperature=1.0, seed=7, max_batch=3)
    assert sampled == [list(generate(model, p, 10, temperature=1.0, seed=7 + i)) for i, p in enumerate(prompts)]


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("chunk", [512, 4])
def test_every_row_samples_from_its_full_forward_logits(monkeypatch, chunk: int, kernels: bool) -> None:
    """Whatever the batch does (ragged rows, the longest first or last, rows retired and moved, prompts chunked
    beside decode tokens), each logit row sampled equals the model's full forward of that row's tokens so far.
    (Greedy tokens of a random model hardly move when a row's positions are wrong; logits do.)"""
    monkeypatch.setattr(batching, "PREFILL_CHUNK", chunk)
    if not kernels:
        monkeypatch.setitem(cpu_kernels._state, "off", True)
    model = random_model(n_kv_head=2)
    torch.manual_seed(3)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (13, 2, 7, 1, 10)]
    rows: dict[int, list[int]] = {}  # id(sampler) -> prompt + output so far
    checked = []

    def record(logits, samplers, tokens) -> None:
        for lg, smp, t in zip(logits, samplers, tokens):
            seq = rows[id(smp)]
            with torch.no_grad():
                ref = model(torch.tensor([seq]))[0][0, -1]
            checked.append(float((lg - ref).abs().max()))
            seq.append(t)

    class Tracked(batching.Sampler):  # one row's draws outside a batch (torch's path: the first, on admission)
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            rows[id(self)] = list(prompts[len(rows)])

        def __call__(self, logits):
            token = super().__call__(logits)
            record(logits[None], [self], [token])
            return token

    real = batching.sample_rows

    def batched(logits, samplers):
        tokens = real(logits, samplers)
        record(logits, samplers, tokens)
        return tokens

    monkeypatch.setattr(batching, "sample_rows", batched)
    monkeypatch.setattr(batching, "Sampler", Tracked)
    for smp_rows in (2, 32):
        rows.clear()
        generate_batch(model, prompts, 9, temperature=0, max_batch=smp_rows)
    assert len(checked) > 40 and max(checked) < 1e-4, max(checked)


def test_generation_stops_at_end_of_turn(tok) -> None:
    model = scripted_model(tok)
    end = tok.token_to_id(END)
    bos, asst = tok.token_to_id(BOS), tok.token_to_id(ASSISTANT)
    assert list(generate(model, [bos], 10, temperature=0, stop_ids=[end])) == [end]
    assert list(generate(model, [bos], 5, temperature=0)) == [end] * 5  # without a stop id: the budget ends it
    reply = list(generate(model, [bos, asst], 10, temperature=0.8, seed=1, stop_ids=[end]))
    assert tok.decode(reply) == "ok" and reply[-1] == end


def test_seed_reproducibility() -> None:
    model = random_model()
    a = list(generate(model, [1, 2], 20, temperature=1.0, seed=3))
    assert a == list(generate(model, [1, 2], 20, temperature=1.0, seed=3))
    assert a != list(generate(model, [1, 2], 20, temperature=1.0, seed=4))
    assert list(generate(model, [1, 2], 20, temperature=1.0, top_k=1, seed=5)) == full_forward_greedy(model, [1, 2], 20)


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    logits = torch.cat([logits, torch.full((60,), -8.0)])  # a long tail (2% of the mass) that filters must cut
    seen_k = {Sampler(1.0, top_k=3, seed=s)(logits) for s in range(200)}
    assert seen_k == {0, 1, 2}
    seen_p = {Sampler(1.0, top_p=0.75, seed=s)(logits) for s in range(200)}  # 0.5 + 0.3 reaches 0.75
    assert seen_p == {0, 1}
    seen_kp = {Sampler(2.0, top_k=3, top_p=0.6, seed=s)(logits) for s in range(200)}
    assert seen_kp <= {0, 1, 2} and 0 in seen_kp
    # rows with different settings sampled in one batched pass draw what each would draw alone
    from scalelab.lm.inference.sampling import sample_rows

    settings = [dict(temperature=1.0, top_k=3), dict(temperature=0.5, top_p=0.75), dict(temperature=2.0),
                dict(temperature=1.5, top_k=10, top_p=0.9)]
    batch = torch.stack([logits, logits.flip(0), logits * 0.5, logits.roll(7)])
    for seed in range(20):
        together = sample_rows(batch, [Sampler(**kw, seed=seed + i) for i, kw in enumerate(settings)])
        assert together == [Sampler(**kw, seed=seed + i)(batch[i]) for i, kw in enumerate(settings)]
        assert together[0] in {0, 1, 2} and together[1] in {63, 62}
    seen_all = {Sampler(1.0, seed=s)(logits) for s in range(300)}
    assert len(seen_all) > 4  # without filters the tail is reachable
    assert Sampler(0.0)(logits) == 0
    for bad in (dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            Sampler(**bad)


@pytest.mark.parametrize("kernels", ["scalelab CPU kernels", "torch only"])
def test_sampled_frequencies_follow_the_filtered_softmax(kernels: str) -> None:
    """Draws follow softmax(logits / T) restricted by top-k / top-p and renormalised (4,000 draws a setting)."""
    from scalelab.lm.inference.sampling import sample_rows

    with contextlib.nullcontext() if kernels == "scalelab CPU kernels" else cpu_kernels.disabled():
        _check_sampled_frequencies(sample_rows)


def _check_sampled_frequencies(sample_rows) -> None:

    logits = torch.tensor([2.0, 1.5, 1.5, 0.5, 0.0, -1.0, -3.0, 1.0])
    n = 4000
    for kw, support in ((dict(temperature=0.7), range(8)), (dict(temperature=1.3, top_k=3), [0, 1, 2]),
                        (dict(temperature=1.0, top_p=0.8), [0, 1, 2, 7])):
        p = torch.softmax(logits / kw["temperature"], -1)
        expected = torch.zeros(8)
        expected[list(support)] = p[list(support)] / p[list(support)].sum()
        draws = sample_rows(logits.expand(n, 8).contiguous(), [Sampler(**kw, seed=s) for s in range(n)])
        freq = torch.bincount(torch.tensor(draws), minlength=8).float() / n
        tolerance = 4 * (expected * (1 - expected) / n).sqrt() + 1e-9
        assert ((freq - expected).abs() <= tolerance).all(), (kw, freq, expected)
    # greedy: the first of tied maxima, as torch.argmax
    tied = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    assert sample_rows(tied, [Sampler(0.0), Sampler(0.0)]) == tied.argmax(-1).tolist() == [1, 0]


def test_text_stream_never_emits_broken_utf8(tok) -> None:
    text = "héllo 🙂 wörld ✓ 12 + 34"
    ids = tok.encode(text).ids
    stream = TextStream(tok)
    deltas = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text
    assert deltas.count("") > 2  # multi-byte characters span tokens: held back until complete
    bad = TextStream(tok)  # a stray continuation byte is flushed at the end rather than lost
    bad.push(tok.encode("🙂").ids[0])
    assert bad.flush() == "\ufffd"


def test_stop_strings_are_trimmed_and_held_back(tok) -> None:
    from scalelab.lm.inference.textstream import StopStrings

    s = StopStrings(["\n\n", "END"])
    outs = [s.push(d) for d in ("Hi", "\n", "there", "E", "N", "D more")]
    assert "".join(o for o, _ in outs) == "Hi\nthere" and outs[-1][1]
    assert outs[1] == ("", False) and outs[3] == ("", False)  # a possible start of a stop string waits


# ------------------------------------------------------------------------------------------------------ the engine

def test_engine_concurrent_requests_equal_sequential_generation() -> None:
    model = random_model()
    torch.manual_seed(2)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (3, 9, 1, 15, 4, 7, 2)]
    expected = [list(generate(model, p, 10 + i, temperature=0)) for i, p in enumerate(prompts)]
    results: dict[int, object] = {}
    with Engine(model, max_batch=3, max_queue=16) as engine:
        def client(i: int) -> None:
            req = engine.submit(prompts[i], max_tokens=10 + i, temperature=0)
            req.wait(60)
            results[i] = req

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        sampled = engine.submit(prompts[1], max_tokens=8, temperature=0.9, top_k=20, seed=11)
        sampled.wait(60)
    for i, req in results.items():
        assert req.token_ids == expected[i] and req.finish_reason == "length"
        assert req.prompt_tokens == len(prompts[i]) and req.completion_tokens == 10 + i
    assert sampled.token_ids == list(generate(model, prompts[1], 8, temperature=0.9, top_k=20, seed=11))


def test_engine_text_stop_ids_stop_strings_and_async(tok) -> None:
    model = scripted_model(tok, reply="ok")
    end, bos, asst = tok.token_to_id(END), tok.token_to_id(BOS), tok.token_to_id(ASSISTANT)
    with Engine(model, tok, max_batch=2) as engine:
        req = engine.submit([bos, asst], max_tokens=10, stop_ids=[end])
        assert "".join(req) == "ok" and req.text == "ok"
        assert req.finish_reason == "stop" and req.completion_tokens == 3 and req.token_ids[-1] == end
        req = engine.submit([bos, asst], max_tokens=10, stop_ids=[end], stop_strings=["k"])
        assert req.result(30) == "o" and req.finish_reason == "stop"
        req = engine.submit([bos, asst], max_tokens=1, stop_ids=[end])
        assert req.result(30) == "o" and req.finish_reason == "length"

        async def collect() -> str:
            r = engine.submit("o", max_tokens=5, stop_ids=[end])  # a text prompt, encoded by the engine
            return "".join([d async for d in r])

        assert asyncio.run(collect()) == "k"
        with pytest.raises(ValueError, match="context length"):
            engine.submit([bos] * 64, max_tokens=1)
        with pytest.raises(ValueError, match="top_p"):
            engine.submit([bos], top_p=0)


def test_stream_interval_hands_readers_text_every_k_tokens(tok) -> None:
    """The first text at once, then every k deltas, then the end: fewer, longer deltas; the same text."""
    model = random_model()
    prompt = torch.randint(6, 97, (5,)).tolist()

    def deltas(interval: int) -> tuple[list[str], int]:
        with Engine(model, tok, max_batch=2, stream_interval=interval) as engine:
            async def collect() -> tuple[list[str], int]:
                req = engine.submit(prompt, max_tokens=40, temperature=0)
                return [d async for d in req], req.completion_tokens
            return asyncio.run(collect())

    every, n = deltas(1)
    assert n == 40
    for interval in (4, 1000):
        got, _ = deltas(interval)  # (a reader that wakes late reads what came meanwhile as one delta)
        assert "".join(got) == "".join(every)
        assert len(got) <= 2 + (n - 1) // interval  # woken every k deltas (+ the first and the end)
    with pytest.raises(ValueError, match="stream_interval"):
        Engine(model, stream_interval=0)

    # the gating itself, without timing: which deltas wake a waiting reader
    from scalelab.lm.inference.engine import Request, _EngineRow

    class Woken:
        def __init__(self) -> None:
            self.count = 0

        def add(self, loop, event) -> None:
            self.count += 1

    woken = Woken()
    row = _EngineRow([1], 100, Sampler(0.0), [])
    req = row.request = Request(row, tok, [], woken, stream_interval=4)
    seen = []
    for _ in range(10):
        req._waiters.append((None, None))  # a reader waiting for the next delta
        req.emit("x")
        seen.append(woken.count)
        req._waiters.clear()
    req._waiters.append((None, None))
    req.emit("", finish="length")
    assert seen == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3] and woken.count == 4  # first at once, then every 4, then the end

    # "auto": the engine sets the interval each step (auto_stream_interval; here 4: every 4 deltas)
    woken.count, woken.interval = 0, 4
    row = _EngineRow([1], 100, Sampler(0.0), [])
    req = row.request = Request(row, tok, [], woken, stream_interval=None)
    for _ in range(5):
        req._waiters.append((None, None))
        req.emit("x")
        req._waiters.clear()
    assert woken.count == 2
    with Engine(model, tok, max_batch=8, stream_interval="auto") as engine:
        async def eight() -> list[list[str]]:
            reqs = [engine.submit(prompt, max_tokens=40, temperature=0) for _ in range(8)]
            return await asyncio.gather(*[_collect_deltas(r) for r in reqs])
        outs = asyncio.run(eight())
    assert all("".join(o) == "".join(every) for o in outs)
    assert all(len(o) <= 2 + (n - 1) // 2 for o in outs)  # 8 rows for most steps: at least 2 tokens an event
    with pytest.raises(ValueError, match="stream_interval"):
        Engine(model, stream_interval="fast")


def test_auto_stream_interval_is_one_wakeup_a_step_within_the_delay_bound() -> None:
    from scalelab.lm.inference.engine import AUTO_MAX_DELAY, auto_stream_interval

    assert auto_stream_interval(1, 0.001) == 1  # one stream: every token
    assert auto_stream_interval(8, 0.001) == 8  # 8 streams, 1 ms steps: 8 tokens (7 ms held back at most)
    assert auto_stream_interval(8, 0.005) == 5  # 5 ms steps: 4 steps = 20 ms held back at most
    assert auto_stream_interval(8, 0.05) == 1  # a slow model streams every token
    assert auto_stream_interval(16, 0.0) == 16 and auto_stream_interval(0, 0.001) == 1
    for rows in range(1, 33):
        for step in (1e-4, 1e-3, 4e-3, 0.01, 0.03):
            k = auto_stream_interval(rows, step)
            assert 1 <= k <= rows and ((k - 1) * step <= AUTO_MAX_DELAY + 1e-12 or k == 1)


def test_auto_stream_interval_sends_every_token_of_a_slow_model(tok) -> None:
    """Steps of 30 ms (a big model): "auto" holds no text back, from the first steps on."""
    model = random_model()
    prompt = torch.randint(6, 97, (5,)).tolist()
    with Engine(model, tok, max_batch=4, stream_interval="auto") as engine:
        batch = engine._batch
        step = batch.step
        batch.step = lambda: (time.sleep(0.03), step())[1]

        async def four() -> list[list[str]]:
            reqs = [engine.submit(prompt, max_tokens=6, temperature=0) for _ in range(4)]
            return await asyncio.gather(*[_collect_deltas(r) for r in reqs])
        outs = asyncio.run(four())
    assert [len(o) for o in outs] == [6, 6, 6, 6]


async def _collect_deltas(req) -> list[str]:
    return [d async for d in req]


def test_engine_cancel_and_queue_full() -> None:
    model = random_model(max_seq_len=4096)
    engine = Engine(model, max_batch=1, max_queue=2)
    try:
        long = engine.submit([1, 2, 3], max_tokens=None, temperature=0)
        deadline = time.monotonic() + 60
        while long.completion_tokens < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        waiting = [engine.submit([4], max_tokens=5, temperature=0) for _ in range(2)]
        with pytest.raises(QueueFull):
            engine.submit([5], max_tokens=5)
        waiting[0].cancel()  # cancelled while waiting: never admitted
        long.cancel()
        assert long.wait(60) and long.finish_reason == "cancelled"
        assert 2 <= long.completion_tokens < 4093
        assert waiting[1].wait(60) and waiting[1].finish_reason == "length" and waiting[1].completion_tokens == 5
        assert waiting[0].finish_reason == "cancelled" and waiting[0].completion_tokens == 0
        unfinished = engine.submit([6], max_tokens=None)
    finally:
        engine.close()
    assert unfinished.wait(10) and unfinished.finish_reason == "cancelled"
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit([1], max_tokens=1)


def test_engine_serves_a_loaded_checkpoint_and_tokenizer(tmp_path: Path, tok) -> None:
    from scalelab.lm.checkpoint import save_checkpoint
    from scalelab.lm.inference.loading import load_for_inference, run_in_fresh_thread
    from scalelab.runs import RunDir

    run = RunDir(tmp_path / "run")
    run.tokenizer_dir.mkdir(parents=True)
    tok.save(str(run.tokenizer_json))
    model = scripted_model(tok)
    step = save_checkpoint(run, "chat", 1, model, {"model_config": model.config.to_dict()})
    bos, asst, end = tok.token_to_id(BOS), tok.token_to_id(ASSISTANT), tok.token_to_id(END)
    for where in (run.root, step):
        loaded, tokenizer, _ = run_in_fresh_thread(load_for_inference, where, None, "cpu", "fp32")
        with Engine(loaded, tokenizer, max_batch=2) as engine:
            assert engine.submit([bos, asst], max_tokens=5, stop_ids=[end]).result(30) == "ok"


# ------------------------------------------------------------------------------------------------------ dtypes

def test_inference_dtype_auto_keeps_cache_sized_models_in_fp32(monkeypatch, tmp_path: Path) -> None:
    import scalelab.common as common
    from scalelab.lm.checkpoint import save_checkpoint
    from scalelab.lm.data.tokenizer import save_tokenizer
    from scalelab.lm.inference import loading
    from scalelab.lm.inference.loading import load_for_inference
    from scalelab.runs import RunDir

    monkeypatch.setattr(common, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(loading, "last_level_cache_bytes", lambda: 32 << 20)
    assert loading.resolve_dtype_for("auto", "cpu", 5_000_000) == "fp32"  # 20 MB of fp32 weights: cached
    assert loading.resolve_dtype_for("auto", "cpu", 17_000_000) == "bf16"  # 68 MB: halve the bytes
    assert loading.resolve_dtype_for("bf16", "cpu", 5_000_000) == "bf16"  # an explicit choice stands
    assert loading.resolve_dtype_for("fp32", "cpu", 17_000_000) == "fp32"

    run = RunDir(tmp_path / "run")
    save_tokenizer(make_tokenizer(), run.tokenizer_dir)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_kv_head=2, max_seq_len=32))
    save_checkpoint(run, "chat", 1, model, {"model_config": model.config.to_dict()})
    loaded, _, _ = load_for_inference(tmp_path / "run", None, "cpu", "auto")  # small: fp32, bit-exact
    assert loaded.lm_head.weight.dtype == torch.float32
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    monkeypatch.setattr(loading, "last_level_cache_bytes", lambda: 1024)  # now it does not fit: bf16
    loaded, _, _ = load_for_inference(tmp_path / "run", None, "cpu", "auto")
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.bfloat16())


def test_decoding_inside_a_training_autocast_region() -> None:
    """Trainers sample mid-run under bf16 autocast: the decoder runs in the weights' dtype and gives the same ids."""
    model = random_model()
    prompt = [1, 2, 3, 4, 5]
    expected = list(generate(model, prompt, 12, temperature=0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert list(generate(model, prompt, 12, temperature=0)) == expected
        assert generate_batch(model, [prompt, prompt[:3]], 12, temperature=0)[0] == expected


@pytest.mark.parametrize("threads", [1, 2])
def test_one_row_projection_paths_match_the_model(threads: int) -> None:
    """Without scalelab's CPU kernels, one row goes through per-thread weight slices (bmm) when torch has several
    threads, plain mm otherwise."""
    from scalelab.lm.inference.decoding import _fused_weights

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with cpu_kernels.disabled():
            model = random_model(seed=threads)  # a new model: fused weights are cached per model
            layers, lm_head = _fused_weights(model)
            assert layers[0][0].panels is None
            assert (layers[0][0].split is not None) == (threads > 1 and torch.backends.mkldnn.is_available())
            seq = torch.randint(0, 97, (7,)).tolist()
            dec = Decoder(model, max_batch=1)
            with torch.no_grad():
                dec.prefill(0, seq[:-1])
                got = dec.decode([seq[-1]])[0]
                ref = model(torch.tensor([seq]))[0][0, -1]
        assert (got - ref).abs().max() < 1e-4
    finally:
        torch.set_num_threads(before)


def test_trainer_samples_do_not_keep_a_decoding_copy_of_the_weights() -> None:
    from scalelab.lm.inference.decoding import _FUSED
    from scalelab.lm.train.log import sample_completions

    model = random_model(seed=5)
    out = sample_completions(model, ["", "x"], None, 4, seed=0)
    assert len(out) == 2 and all("completion" in o for o in out)
    assert model not in _FUSED  # released: training would change the weights before the next sample


@pytest.mark.parametrize("where", ["step", "admit"])
def test_out_of_memory_fails_those_requests_and_the_engine_serves_on(monkeypatch, where: str) -> None:
    from scalelab.lm.inference import batching

    model = random_model(max_seq_len=256)
    real = getattr(batching.Batch, where)
    calls = {"n": 0}

    def flaky(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:  # the second admission / step runs out of device memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args)

    monkeypatch.setattr(batching.Batch, where, flaky)
    with Engine(model, max_batch=4) as engine:
        first = engine.submit([1, 2, 3], max_tokens=4, temperature=0)
        assert first.wait(60)
        hit = engine.submit([4, 5], max_tokens=4, temperature=0)
        assert hit.wait(60) and hit.finish_reason in ("error", "length")
        after = engine.submit([6, 7], max_tokens=4, temperature=0)
        assert after.wait(60) and after.finish_reason == "length" and after.completion_tokens == 4
        failed = [r for r in (first, hit) if r.finish_reason == "error"]
        assert len(failed) == 1 and "out of memory" in str(failed[0].error)
