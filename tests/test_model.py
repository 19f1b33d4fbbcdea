"""The model against references: Hugging Face Llama logits, rotary formula, causality, KV cache, FLOP count."""

from __future__ import annotations

import math

import pytest
import torch

from scalelab.lm.model import GPT, ModelConfig, apply_rope, rope_tables


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def test_causality_future_tokens_never_change_earlier_logits() -> None:
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 97, (2, 16))
    logits, _ = model(idx)
    changed = idx.clone()
    changed[:, 10:] = torch.randint(0, 97, (2, 6))
    logits2, _ = model(changed)
    assert torch.equal(logits[:, :10], logits2[:, :10])
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:])


def test_rope_matches_complex_rotation_reference() -> None:
    """Rotate-half RoPE equals multiplying (x_i, x_{i+d/2}) as a complex number by exp(i * pos * theta_i)."""
    hd, T = 8, 5
    x = torch.randn(1, 1, T, hd)
    cos, sin = rope_tables(hd, T, 10000.0)
    got = apply_rope(x, cos, sin)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:])
    ang = torch.arange(T)[:, None] * (1.0 / 10000 ** (torch.arange(0, hd, 2) / hd))[None, :]
    ref = z * torch.polar(torch.ones_like(ang), ang)
    assert torch.allclose(got, torch.cat([ref.real, ref.imag], -1), atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_transformers_llama(tie: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = tiny(tie_embeddings=tie)
    ours = GPT(cfg).eval()
    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                         num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.max_seq_len,
                         rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=tie,
                         attention_bias=False, mlp_bias=False)
    hf = LlamaForCausalLM(hf_cfg).eval()
    state = {("model." + k if not k.startswith("lm_head") else k): v for k, v in ours.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        a, _ = ours(idx)
        b = hf(idx).logits
    assert (a - b).abs().max() < 1e-4


def test_kv_cache_matches_full_forward_with_ragged_rows() -> None:
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    seqs = [torch.randint(0, 97, (n,)) for n in (7, 12)]
    cache = model.new_cache(batch_size=2, max_len=32)
    with torch.no_grad():
        # prefill each row separately (different lengths), then decode both together
        for row, s in enumerate(seqs):
            sub = model.new_cache(batch_size=1, max_len=32)
            model(s[None], cache=sub)
            for layer in range(len(cache.k)):
                cache.k[layer][row] = sub.k[layer][0]
                cache.v[layer][row] = sub.v[layer][0]
            cache.lengths[row] = len(s)
        nxt = torch.tensor([[3], [5]])
        last, _ = model(nxt, cache=cache)
        for row, s in enumerate(seqs):
            full, _ = model(torch.cat([s, nxt[row]])[None])
            assert (full[0, -1] - last[row]).abs().max() < 1e-4
    assert cache.lengths.tolist() == [8, 13]


def test_loss_ignores_masked_targets_and_flops_counted_from_shapes() -> None:
    model = GPT(tiny())
    idx = torch.randint(0, 97, (1, 8))
    targets = torch.full((1, 8), -1)
    targets[0, 3] = 5
    _, loss = model(idx, targets)
    logits, _ = model(idx)
    assert math.isclose(loss.item(), torch.nn.functional.cross_entropy(logits[0, 3:4], targets[0, 3:4]).item(),
                        rel_tol=1e-5)
    cfg = model.config
    per_layer = 2 * cfg.n_embd * cfg.n_embd + 2 * cfg.n_embd * cfg.n_kv_head * cfg.head_dim \
        + 3 * cfg.n_embd * cfg.intermediate_size
    expect = 6 * (cfg.n_layer * per_layer + cfg.vocab_size * cfg.n_embd) + 12 * cfg.n_layer * cfg.n_embd * 32
    assert model.flops_per_token() == expect


def test_presets_depth_dial() -> None:
    sizes = {name: GPT(ModelConfig.preset(name, vocab_size=4096)).num_params() for name in ("nano", "micro")}
    assert 0.5e6 < sizes["nano"] < 2e6 and sizes["micro"] > sizes["nano"]
    assert ModelConfig.preset("gpt2-small").n_embd == 768
