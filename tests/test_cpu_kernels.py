"""scalelab's few-row CPU kernels (lm/inference/cpu_kernels.c) against torch: products, attention, the build."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from scalelab.lm.inference import cpu_kernels

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(), reason=f"no kernels: {cpu_kernels.why_unavailable()}")


@pytest.mark.skipif(cpu_kernels._compiler() is None, reason="no C compiler on this machine")
def test_kernels_build_where_a_compiler_exists() -> None:
    """Where there is a compiler the kernels must build: a compile error would otherwise only skip their tests."""
    assert cpu_kernels.available(), cpu_kernels.why_unavailable()


@needs_kernels
@pytest.mark.parametrize("k, n", [(256, 768), (64, 97), (7, 5), (704, 256), (33, 1000)])
def test_linear_matches_torch_for_any_row_count_and_width(k: int, n: int) -> None:
    torch.manual_seed(k + n)
    w = torch.randn(k, n)
    wp = cpu_kernels.pack(w)
    for m in (1, 2, 3, 5, 8, 9, 17, 64):
        x, r = torch.randn(m, k), torch.randn(m, n)
        torch.testing.assert_close(cpu_kernels.linear(x, wp, n), x @ w, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cpu_kernels.linear(x, wp, n, residual=r), x @ w + r, atol=1e-4, rtol=1e-4)


@needs_kernels
def test_linear_refuses_what_it_cannot_take() -> None:
    wp = cpu_kernels.pack(torch.randn(8, 4))
    with pytest.raises(ValueError, match="fp32"):
        cpu_kernels.linear(torch.randn(2, 8).double(), wp, 4)
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernels.linear(torch.randn(8, 2).t(), wp, 4)
    with pytest.raises(ValueError, match="residual"):
        cpu_kernels.linear(torch.randn(2, 8), wp, 4, residual=torch.randn(3, 4))
    with pytest.raises(ValueError, match="2-D fp32 CPU"):
        cpu_kernels.pack(torch.randn(8, 4, dtype=torch.float64))


@needs_kernels
def test_attention_refuses_positions_outside_the_cache() -> None:
    kc, q = torch.zeros(2, 1, 8, 16), torch.zeros(2, 1, 16)
    for bad in ([0, 8], [-1, 0], [0]):
        with pytest.raises(ValueError, match="positions"):
            cpu_kernels.attention(q, q, q, kc, kc.clone(), torch.tensor(bad), 0.25)
    with pytest.raises(ValueError, match="fp32"):
        cpu_kernels.attention(q.double(), q, q, kc, kc.clone(), torch.tensor([0, 1]), 0.25)


@needs_kernels
@pytest.mark.parametrize("b, h, hkv, hd", [(8, 4, 4, 64), (3, 8, 2, 32), (1, 4, 4, 64), (2, 6, 3, 16)])
def test_attention_writes_the_cache_and_matches_sdpa_per_row(b: int, h: int, hkv: int, hd: int) -> None:
    if not cpu_kernels.attention_supported(hd):
        pytest.skip(f"head size {hd} is not a multiple of this CPU's vector width")
    torch.manual_seed(b * h + hd)
    T = 160
    kc, vc = torch.randn(b + 1, hkv, T, hd), torch.randn(b + 1, hkv, T, hd)
    pos = torch.tensor([(37 * r + 5) % T for r in range(b)], dtype=torch.long)  # rows at different positions
    qkv = torch.randn(b, (h + 2 * hkv) * hd) * 4  # large scores: some exp(s - max) underflow to 0
    q, kn, vn = (t.reshape(b, -1, hd) for t in qkv.split([h * hd, hkv * hd, hkv * hd], dim=1))  # strided rows
    kref, vref = kc.clone(), vc.clone()
    out = cpu_kernels.attention(q, kn, vn, kc, vc, pos, 1 / math.sqrt(hd))
    for r in range(b):
        kref[r, :, pos[r]], vref[r, :, pos[r]] = kn[r], vn[r]
    torch.testing.assert_close(kc, kref, atol=0, rtol=0)
    torch.testing.assert_close(vc, vref, atol=0, rtol=0)
    for r in range(b):
        L = int(pos[r]) + 1
        ref = F.scaled_dot_product_attention(q[r][:, None], kref[r, :, :L], vref[r, :, :L], enable_gqa=h != hkv)
        torch.testing.assert_close(out[r], ref.reshape(-1), atol=2e-5, rtol=1e-4)


@needs_kernels
def test_attention_takes_a_prompt_and_decode_tokens_in_one_call() -> None:
    """Packed queries: row 1's prompt chunk (positions 3..7, causal over its cached 0..2) between decode tokens of
    rows 2 and 0; each query matches SDPA over its own row's prefix, its own new key included."""
    torch.manual_seed(5)
    hd = 32 if cpu_kernels.attention_supported(32) else 64
    kc, vc = torch.randn(3, 2, 24, hd), torch.randn(3, 2, 24, hd)
    rows, pos = torch.tensor([2, 1, 1, 1, 1, 1, 0]), torch.tensor([9, 3, 4, 5, 6, 7, 0])
    q, kn, vn = torch.randn(7, 4, hd), torch.randn(7, 2, hd), torch.randn(7, 2, hd)
    kref, vref = kc.clone(), vc.clone()
    out = cpu_kernels.attention(q, kn, vn, kc, vc, pos, 1 / math.sqrt(hd), rows)
    for i in range(7):
        kref[rows[i], :, pos[i]], vref[rows[i], :, pos[i]] = kn[i], vn[i]
    torch.testing.assert_close(kc, kref, atol=0, rtol=0)
    for i in range(7):
        r, L = int(rows[i]), int(pos[i]) + 1
        ref = F.scaled_dot_product_attention(q[i][:, None], kref[r, :, :L], vref[r, :, :L], enable_gqa=True)
        torch.testing.assert_close(out[i], ref.reshape(-1), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="rows"):
        cpu_kernels.attention(q, kn, vn, kc, vc, pos, 0.1, torch.tensor([0, 1, 1, 1, 1, 1, 3]))


def _python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


CHECK = "from scalelab.lm.inference import cpu_kernels as k; print(k.available(), '|', k.why_unavailable())"


def test_without_a_compiler_or_when_turned_off_torch_paths_stay(tmp_path) -> None:
    out = _python(CHECK, CC="no-such-cc", PATH=str(tmp_path), SCALELAB_KERNEL_CACHE=str(tmp_path / "cache"))
    assert out == "False | no C compiler found (set CC)"
    assert _python(CHECK, SCALELAB_CPU_KERNELS="0") == "False | turned off by SCALELAB_CPU_KERNELS=0"
    # and a decoder then runs on torch's paths, same logits as the model
    code = ("import torch; from scalelab.lm.model import GPT, ModelConfig\n"
            "from scalelab.lm.inference.decoding import Decoder\n"
            "torch.manual_seed(0)\n"
            "m = GPT(ModelConfig(vocab_size=50, n_layer=1, n_embd=32, n_head=2, n_kv_head=2)).eval()\n"
            "d = Decoder(m, max_batch=2); d.prefill(0, [1, 2, 3]); d.prefill(1, [4])\n"
            "got = d.decode([5, 6]); ref = m(torch.tensor([[1, 2, 3, 5]]))[0][0, -1]\n"
            "print(d.packed, d.layers[0][0].panels is None, bool((got[0] - ref).abs().max() < 1e-4))")
    assert _python(code, SCALELAB_CPU_KERNELS="0") == "False True True"


@pytest.mark.skipif(not cpu_kernels.available(), reason="needs a C compiler")
def test_the_build_is_cached_per_machine(tmp_path) -> None:
    cache = tmp_path / "cache"
    assert _python(CHECK, SCALELAB_KERNEL_CACHE=str(cache)) == "True |"
    built = list(cache.glob("cpu_kernels-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert _python(CHECK, SCALELAB_KERNEL_CACHE=str(cache)) == "True |"  # loaded, not rebuilt
    assert list(cache.glob("*")) == built and built[0].stat().st_mtime_ns == stamp


@needs_kernels
def test_sampling_kernel_draws_what_the_torch_path_draws() -> None:
    """Same seeds, same settings: the C sampler (temperature, top-k threshold, nucleus cut, inverse CDF) picks the
    token torch's softmax + sort + cumsum + searchsorted picks, but for draws within rounding of a CDF step."""
    from scalelab.lm.inference.sampling import Sampler, sample_rows

    torch.manual_seed(0)
    settings = [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9), dict(temperature=1.3, top_k=40),
                dict(temperature=0.9, top_k=200, top_p=0.5), dict(temperature=2.0, top_p=0.99),
                dict(temperature=0.2, top_p=0.3)]
    logits = torch.randn(64, 1000) * 3
    logits[::5, :10] = 4.0  # exact ties at the top
    same = total = 0
    def samplers(seed: int) -> list[Sampler]:
        return [Sampler(**settings[i % len(settings)], seed=seed * 100 + i) for i in range(64)]

    for seed in range(5):
        fast = sample_rows(logits, samplers(seed))
        with cpu_kernels.disabled():
            slow = sample_rows(logits, samplers(seed))
        same += sum(a == b for a, b in zip(fast, slow))
        total += len(fast)
    assert same / total > 0.99, f"{same} of {total} draws agree"


CHECK_ALL = """
import math, torch, torch.nn.functional as F
from scalelab.lm.inference import cpu_kernels as k
from scalelab.lm.inference.sampling import Sampler, sample_rows
assert k.available(), k.why_unavailable()
torch.manual_seed(0)
w = torch.randn(64, 97); wp = k.pack(w)
for m in (1, 3, 8, 9):
    x, r = torch.randn(m, 64), torch.randn(m, 97)
    torch.testing.assert_close(k.linear(x, wp, 97, r), x @ w + r, atol=1e-4, rtol=1e-4)
kc, vc = torch.randn(3, 2, 40, 32), torch.randn(3, 2, 40, 32)
q, kn, vn = torch.randn(3, 4, 32), torch.randn(3, 2, 32), torch.randn(3, 2, 32)
pos = torch.tensor([5, 39, 0])
out = k.attention(q, kn, vn, kc, vc, pos, 1 / math.sqrt(32))
for b in range(3):
    L = int(pos[b]) + 1
    ref = F.scaled_dot_product_attention(q[b][:, None], kc[b, :, :L], vc[b, :, :L], enable_gqa=True)
    torch.testing.assert_close(out[b], ref.reshape(-1), atol=2e-5, rtol=1e-4)
logits = torch.randn(6, 500) * 3
kw = [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9), dict(temperature=1.3, top_k=40)]
fast = sample_rows(logits, [Sampler(**kw[i % 3], seed=i) for i in range(6)])
with k.disabled():
    slow = sample_rows(logits, [Sampler(**kw[i % 3], seed=i) for i in range(6)])
assert fast == slow, (fast, slow)
print("ok", k._state["panel"])
"""


@pytest.mark.skipif(cpu_kernels._compiler() is None or sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="needs a C compiler on x86-64")
@pytest.mark.parametrize("arch, panel", [("x86-64-v3", 16), ("x86-64", 8)])
def test_the_avx2_and_sse_builds_compute_the_same(tmp_path, arch: str, panel: int) -> None:
    """The kernels built for narrower vectors (AVX2: 8 floats, SSE2: 4), as on machines without AVX-512."""
    assert _python(CHECK_ALL, SCALELAB_KERNEL_ARCH=arch, SCALELAB_KERNEL_CACHE=str(tmp_path)) == f"ok {panel}"
