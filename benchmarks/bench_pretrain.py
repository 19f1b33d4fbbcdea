"""Pretraining speed: our GPT (best settings) vs Hugging Face LlamaForCausalLM (defaults: fp32, eager) side by side.

    .venv/bin/python benchmarks/bench_pretrain.py [--steps 30] [--threads 0] [--device cpu] [--out PATH]
    .venv/bin/python benchmarks/bench_pretrain.py --device cuda --model gpt2-small --vocab 32768 --seq-len 1024 \
        --batch-size 16 --steps 20          # on a GPU: bf16 autocast, fused AdamW, HF with SDPA; *_cuda.json

Same configuration (PERFORMANCE.md: vocab 4096, d 256, 4 layers, T 256, B 16), same initial weights (ours copied
into HF through scalelab.lm.interop.hf's name map), same batches (tiny_shakespeare bytes when ../shared holds
them, else the Python standard library's source files), same AdamW. The steps of the models are interleaved
(HF step, our step, ...) so machine load hits both alike; tokens/s = tokens / summed step time. The matmul peaks
(fp32 and bf16) are measured in the same run, so MFU and the ratio are self-anchored. Ours: bf16 autocast when
the measured bf16 matmul peak beats fp32 by 1.5x, and torch.compile (its warm-up is excluded from the timing but
reported). Writes benchmarks/results/bench_pretrain.json. Target: ours >= 2.5x HF's tokens/s with the final loss
within 2%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scalelab.common import atomic_write_text  # noqa: E402
from scalelab.lm.interop.hf import export_state, hf_config  # noqa: E402
from scalelab.lm.model import GPT, ModelConfig  # noqa: E402
from scalelab.lm.train.loss import LossSum  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, max_n: int = 2048, reps: int = 3, device: str = "cpu") -> float:
    """Best TFLOP/s of a square matmul; the size grows until one call takes 0.2 s (slow dtypes stay small)."""
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        if time.perf_counter() - t0 > 0.2 or n >= max_n:
            break
        n *= 2
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def corpus_bytes() -> bytes:
    """tiny_shakespeare from ../shared when it is there, else the standard library's source (any machine has it)."""
    if DATA.is_file():
        return DATA.read_bytes()
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return b"".join(p.read_bytes() for p in sorted(stdlib.glob("*.py"))[:80])


def batches(steps: int, B: int, T: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = np.frombuffer(corpus_bytes(), dtype=np.uint8).astype(np.int64) + 6
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        starts = rng.integers(0, len(data) - T - 1, B)
        rows = torch.from_numpy(np.stack([data[s:s + T + 1] for s in starts]))
        out.append((rows[:, :-1].contiguous(), rows[:, 1:].contiguous()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--no-compile", action="store_true", help="ours without torch.compile")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--model", default="", help="model preset (empty: vocab 4096, width 256, 4 layers)")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary size with --model")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per row (T)")
    ap.add_argument("--batch-size", type=int, default=16, help="rows per step (B)")
    ap.add_argument("--out", default="", help="results file (default: benchmarks/results/bench_pretrain"
                                              "[_<device>].json)")
    args = ap.parse_args(argv)
    dev = args.device
    cuda = dev.startswith("cuda")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch.set_flush_denormal(True)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    from transformers import LlamaConfig, LlamaForCausalLM

    B, T = args.batch_size, args.seq_len
    if args.model:
        cfg = ModelConfig.preset(args.model, vocab_size=args.vocab, max_seq_len=T)
    else:
        cfg = ModelConfig(vocab_size=4096, n_layer=4, n_embd=256, n_head=4, n_kv_head=4, max_seq_len=T)
    max_n = 8192 if cuda else 2048
    peak32 = matmul_peak(torch.float32, max_n, device=dev)
    peak16 = matmul_peak(torch.bfloat16, max_n, device=dev)
    use_bf16 = peak16 > 1.5 * peak32
    print(f"matmul peak: fp32 {peak32:.3f} TFLOP/s, bf16 {peak16:.3f} TFLOP/s -> ours uses "
          f"{'bf16 autocast' if use_bf16 else 'fp32'}{'' if args.no_compile else ' + torch.compile'}")

    torch.manual_seed(0)
    ours = GPT(cfg)
    hf = LlamaForCausalLM(LlamaConfig(**hf_config(cfg)))
    hf.load_state_dict(export_state(ours, "hf"), strict=False)
    if cuda:
        hf.config._attn_implementation = "sdpa"
    ours.to(dev)
    hf.to(dev)
    hf.train()
    flops_tok = ours.flops_per_token(T)
    n_params = ours.num_params()
    fused = {"fused": True} if cuda else {}
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-3, weight_decay=0.0, **fused)
    opt_h = torch.optim.AdamW(hf.parameters(), lr=1e-3, weight_decay=0.0, **fused)
    step_mod = LossSum(ours)
    if not args.no_compile:
        step_mod = torch.compile(step_mod)
    amp = torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16)
    amp_hf = torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16 and cuda)

    def step_ours(x, y) -> float:
        with amp:
            loss = step_mod(x, y) / y.numel()
        loss.backward()
        opt_o.step()
        opt_o.zero_grad(set_to_none=True)
        return float(loss.detach())

    def step_hf(x, y) -> float:
        with amp_hf:  # on a GPU the anchor the issue names: bf16 autocast, SDPA (on CPU: defaults, fp32)
            logits = hf(input_ids=x).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        opt_h.step()
        opt_h.zero_grad(set_to_none=True)
        return float(loss.detach())

    warm = 2
    data = [(x.to(dev), y.to(dev)) for x, y in batches(args.steps + warm, B, T)]
    t0 = time.perf_counter()
    step_ours(*data[0])
    compile_s = time.perf_counter() - t0
    step_hf(*data[0])
    step_ours(*data[1])
    step_hf(*data[1])
    print(f"warm-up (first step incl. compile): {compile_s:.1f} s")
    t_o = t_h = 0.0
    loss_o, loss_h = [], []
    for i, (x, y) in enumerate(data[warm:]):
        t0 = time.perf_counter()
        loss_h.append(step_hf(x, y))
        t1 = time.perf_counter()
        loss_o.append(step_ours(x, y))
        t2 = time.perf_counter()
        t_h += t1 - t0
        t_o += t2 - t1
        if (i + 1) % 10 == 0:
            print(f"  step {i + 1}/{args.steps}: HF loss {loss_h[-1]:.4f} ({B * T * (i + 1) / t_h:,.0f} tok/s), "
                  f"ours {loss_o[-1]:.4f} ({B * T * (i + 1) / t_o:,.0f} tok/s)", flush=True)
    tokens = B * T * args.steps
    tps_o, tps_h = tokens / t_o, tokens / t_h
    peak_o = peak16 if use_bf16 else peak32
    final_o, final_h = float(np.mean(loss_o[-5:])), float(np.mean(loss_h[-5:]))
    res = {
        "config": {"vocab_size": cfg.vocab_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "seq_len": T,
                   "batch_size": B,
                   "params": n_params, "flops_per_token": flops_tok, "steps": args.steps,
                   "threads": torch.get_num_threads()},
        "peak_tflops": {"fp32": peak32, "bf16": peak16},
        "hf": {"tokens_per_s": tps_h, "mfu_fp32": tps_h * flops_tok / (peak32 * 1e12), "final_loss": final_h,
               "settings": "LlamaForCausalLM defaults, fp32, eager"},
        "ours": {"tokens_per_s": tps_o, "mfu": tps_o * flops_tok / (peak_o * 1e12),
                 "mfu_vs_fp32_peak": tps_o * flops_tok / (peak32 * 1e12), "final_loss": final_o,
                 "settings": ("bf16 autocast" if use_bf16 else "fp32") + ("" if args.no_compile else " + compile"),
                 "warmup_s": compile_s},
        "ratio": tps_o / tps_h, "loss_rel_diff": abs(final_o - final_h) / final_h,
    }
    res["target_met"] = bool(res["ratio"] >= 2.5 and res["loss_rel_diff"] <= 0.02)
    if cuda:
        from scalelab.lm.train.optim import peak_tflops

        vendor = peak_tflops(dev, "bf16" if use_bf16 else "fp32")
        res["device"] = torch.cuda.get_device_name(dev)
        res["hf"]["settings"] = "LlamaForCausalLM, SDPA, bf16 autocast, eager" if use_bf16 else "fp32, SDPA"
        res["ours"]["mfu_vs_vendor_peak"] = tps_o * flops_tok / (vendor * 1e12) if vendor else None
        res["vendor_peak_tflops"] = vendor
    print(f"HF   : {tps_h:,.0f} tokens/s, MFU {100 * res['hf']['mfu_fp32']:.1f}% of fp32 peak, loss {final_h:.4f}")
    print(f"ours : {tps_o:,.0f} tokens/s, MFU {100 * res['ours']['mfu']:.1f}% of its dtype's peak "
          f"({100 * res['ours']['mfu_vs_fp32_peak']:.1f}% of fp32 peak), loss {final_o:.4f}")
    print(f"ratio ours/HF: {res['ratio']:.2f}x (target 2.5x); loss difference {100 * res['loss_rel_diff']:.2f}% "
          f"(target <= 2%) -> {'met' if res['target_met'] else 'NOT met'}")
    name = "bench_pretrain" + ("" if dev == "cpu" else f"_{dev.split(':')[0]}") + ".json"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name
    atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
