"""GGUF export: read the file back with ``gguf.GGUFReader`` (names, shapes, values, tokenizer metadata) and check the
q/k permutation against llama.cpp's interleaved RoPE.

    .venv/bin/pytest -q tests/test_gguf.py

A greedy comparison with llama.cpp itself lives in scripts/check_gguf_llamacpp.py (needs llama-cpp-python).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scalelab.__main__ import main
from scalelab.lm.chat import CHAT_TEMPLATE
from scalelab.lm.checkpoint import load_model
from scalelab.lm.interop.gguf import permute_qk, unpermute_qk
from scalelab.lm.interop.hf import expected_names, map_name
from scalelab.lm.model import apply_rope, rope_tables

try:  # tests/ is not a package: pytest puts it on sys.path, so the sibling module imports by its own name
    from test_export import tiny_run
except ImportError:  # pragma: no cover - if tests/ ever becomes a package
    from tests.test_export import tiny_run

gguf = pytest.importorskip("gguf")


def _field(reader, key: str):
    return reader.fields[key].contents()


def _rope_interleaved(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/hd)."""
    T, hd = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]  # (T, hd/2)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.stack((a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()), dim=-1)
    return out.flatten(-2)


def test_permutation_turns_rotate_half_into_llamacpp_interleaved_rope() -> None:
    """Attention scores with our weights + rotate-half RoPE equal those with permuted weights + interleaved RoPE."""
    torch.manual_seed(0)
    n_head, n_kv, hd, C, T = 4, 2, 16, 64, 9
    wq, wk = torch.randn(n_head * hd, C), torch.randn(n_kv * hd, C)
    x = torch.randn(T, C)
    cos, sin = rope_tables(hd, T, 10000.0)

    def heads(w, n):
        return (x @ w.T).view(T, n, hd).transpose(0, 1)  # (H, T, hd)

    q, k = apply_rope(heads(wq, n_head), cos, sin), apply_rope(heads(wk, n_kv), cos, sin)
    ours = q @ k.repeat_interleave(n_head // n_kv, 0).transpose(1, 2)
    q2 = _rope_interleaved(heads(permute_qk(wq, n_head), n_head), 10000.0)
    k2 = _rope_interleaved(heads(permute_qk(wk, n_kv), n_kv), 10000.0)
    theirs = q2 @ k2.repeat_interleave(n_head // n_kv, 0).transpose(1, 2)
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert torch.equal(unpermute_qk(permute_qk(wk, n_kv), n_kv), wk)
    assert not torch.equal(permute_qk(wk, n_kv), wk)


def current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("tie, dtype", [(False, "f32"), (False, "f16"), (True, "f16")])
def test_gguf_reads_back(tmp_path, tmp_path_factory, tie: bool, dtype: str) -> None:
    run = tiny_run(tmp_path_factory, tie)
    out = tmp_path / f"model-{dtype}.gguf"
    assert main(["export", "--run", str(run), "--format", "gguf", "--gguf-dtype", dtype, "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # an Ollama service (another user) reads it
    model, _, _ = load_model(run)
    cfg = model.config
    reader = gguf.GGUFReader(str(out))

    # metadata
    assert _field(reader, "general.architecture") == "llama"
    want = {"llama.block_count": cfg.n_layer, "llama.embedding_length": cfg.n_embd,
            "llama.feed_forward_length": cfg.intermediate_size, "llama.attention.head_count": cfg.n_head,
            "llama.attention.head_count_kv": cfg.n_kv_head, "llama.context_length": cfg.max_seq_len,
            "llama.rope.dimension_count": cfg.head_dim, "llama.vocab_size": cfg.vocab_size,
            "general.file_type": 1 if dtype == "f16" else 0,
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 5, "tokenizer.ggml.padding_token_id": 1}
    assert {k: _field(reader, k) for k in want} == want
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.add_bos_token")
    assert _field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    tj = json.loads((Path(run) / "tokenizer" / "tokenizer.json").read_text())
    vocab = {i: t for t, i in tj["model"]["vocab"].items()} | {a["id"]: a["content"] for a in tj["added_tokens"]}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert tokens == [vocab[i] for i in range(cfg.vocab_size)]
    assert _field(reader, "tokenizer.ggml.token_type") == [3] * 6 + [1] * (cfg.vocab_size - 6)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    assert _field(reader, "tokenizer.ggml.merges") == merges

    # tensors: the standard names, our shapes, our values after undoing the q/k permutation
    ours = {k: v for k, v in model.state_dict().items() if not (tie and k == "lm_head.weight")}
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected_names(cfg, "gguf"))
    assert ("output.weight" in tensors) is not tie
    for name, w in ours.items():
        t = tensors[map_name(name, "scalelab", "gguf")]
        got = torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(w.shape)
        assert list(t.shape) == list(reversed(w.shape))  # GGUF lists dimensions innermost first
        if name.endswith("q_proj.weight"):
            got = unpermute_qk(got, cfg.n_head)
        elif name.endswith("k_proj.weight"):
            got = unpermute_qk(got, cfg.n_kv_head)
        ref = w.half().float() if dtype == "f16" and w.dim() == 2 else w
        assert torch.equal(got, ref), name
        assert t.data.dtype == (np.float16 if dtype == "f16" and w.dim() == 2 else np.float32)


def test_gguf_out_must_be_a_file(tmp_path, tmp_path_factory, capsys) -> None:
    run = tiny_run(tmp_path_factory)
    assert main(["export", "--run", str(run), "--format", "gguf", "--out", str(tmp_path)]) == 2
    assert "--out must name a .gguf file" in capsys.readouterr().err
