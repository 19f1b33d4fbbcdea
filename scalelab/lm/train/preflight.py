"""Preflight: before training, say what the run will cost and refuse runs that cannot fit.

Run at the start of every pretrain/SFT (``scalelab pretrain --run DIR --preflight-only`` stops after it). It prints
the parameter count, FLOPs per token, a memory estimate (weights, gradients, optimizer, activations) against the
device's memory (CUDA: total memory; CPU: available RAM), tokens/s measured over a few dry steps, and the projected
run time. The dry steps run on the real (possibly compiled, wrapped) model with a throwaway AdamW at learning rate 0,
before the resumed optimizer state is loaded: the weights do not change (lr 0 leaves them bit-identical), so resume
stays exact, and a compile warm-up happens here rather than inside the timed loop.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from scalelab.common import UsageError, print0
from scalelab.lm.model import ModelConfig

GiB = 1024**3


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def estimate_memory(mcfg: ModelConfig, num_params: int, batch_size: int, seq_len: int, dtype: str,
                    world_size: int = 1, fsdp: bool = False) -> MemoryEstimate:
    """Bytes per process. fp32 master weights, grads and two AdamW moments (sharded by FSDP); activations saved
    for backward per micro-batch: per layer ~10 * C + 4 * I values in the compute dtype plus two fp32 norm inputs,
    and the output layer's logits (compute dtype + fp32 copy + fp32 gradient)."""
    shard = world_size if fsdp else 1
    weights = 4 * num_params // shard
    act_bytes = 2 if dtype in ("bf16", "fp16") else 4
    tokens = batch_size * seq_len
    C, inter = mcfg.n_embd, mcfg.intermediate_size
    per_layer = tokens * ((10 * C + 4 * inter) * act_bytes + 2 * C * 4)
    logits = tokens * mcfg.vocab_size * (act_bytes + 4 + 4)
    activations = int(1.2 * (mcfg.n_layer * per_layer + logits))  # 20% for allocator slack and temporaries
    return MemoryEstimate(weights, weights, 2 * weights, activations)


def available_memory(device: str) -> tuple[int, str]:
    """(bytes, description) of memory the run may use on ``device``."""
    if device.startswith("cuda"):
        dev = torch.device(device)
        return torch.cuda.get_device_properties(dev).total_memory, f"{torch.cuda.get_device_name(dev)} total"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical RAM"


@dataclass
class Plan:
    """What preflight reports on: the model, the batch geometry and the device of one run."""

    mcfg: ModelConfig
    num_params: int
    flops_per_token: int
    memory: MemoryEstimate
    device: str
    dtype: str
    world_size: int
    batch_size: int
    seq_len: int
    grad_accum: int
    fsdp: bool = False
    peak_tflops: float = 0.0

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum * self.world_size


def check_fits(plan: Plan) -> None:
    """UsageError when the run would not fit, naming at once the largest micro-batch that does."""
    est, avail_what = plan.memory, available_memory(plan.device)
    avail, what = avail_what
    budget = 0.9 * avail
    if est.total <= budget:
        return
    hints = []
    fixed = est.total - est.activations
    per_row = est.activations / plan.batch_size
    fits = int((budget - fixed) // per_row) if per_row > 0 and budget > fixed else 0
    rows = plan.batch_size * plan.grad_accum  # sequences per process per step: kept when the micro-batch divides it
    keep = max((b for b in range(1, min(fits, plan.batch_size - 1) + 1) if rows % b == 0), default=0)
    if keep:
        hints.append(f"--batch-size {keep} --total-batch-tokens {plan.tokens_per_step} (the same tokens per step "
                     f"in {rows // keep} accumulation steps)")
    if est.activations > est.weights * 4 and plan.seq_len > 64:
        hints.append(f"--seq-len {plan.seq_len // 2}")
    if plan.world_size > 1 and not plan.fsdp:
        hints.append("--parallel fsdp (shards weights, gradients and optimizer state)")
    hints.append("a smaller --model / --depth")
    raise UsageError(f"the run needs about {est.total / GiB:.1f} GiB per process (weights {est.weights / GiB:.2f}, "
                     f"gradients {est.gradients / GiB:.2f}, optimizer {est.optimizer / GiB:.2f}, activations "
                     f"{est.activations / GiB:.2f}) but {plan.device} has {avail / GiB:.1f} GiB {what}; try "
                     + ", or ".join(hints))


def describe(plan: Plan) -> None:
    """Print the model, batch and memory lines on rank 0 (before any dry step runs, so nothing is silent)."""
    mcfg, est = plan.mcfg, plan.memory
    avail, what = available_memory(plan.device)
    print0(f"model: {plan.num_params / 1e6:.2f}M parameters, {mcfg.n_layer} layers, width {mcfg.n_embd}, "
           f"{mcfg.n_head} heads, vocab {mcfg.vocab_size}, context {plan.seq_len}; "
           f"{plan.flops_per_token / 1e6:.1f} MFLOP/token (training)")
    print0(f"batch: {plan.batch_size} x {plan.seq_len} tokens x {plan.grad_accum} accumulation x "
           f"{plan.world_size} process(es) = {plan.tokens_per_step:,} tokens/step; device {plan.device}, {plan.dtype}")
    print0(f"memory/process: weights {est.weights / GiB:.3f} GiB, gradients {est.gradients / GiB:.3f}, optimizer "
           f"{est.optimizer / GiB:.3f}, activations {est.activations / GiB:.3f} = {est.total / GiB:.2f} GiB "
           f"(of {avail / GiB:.1f} GiB {what})")


def measure_throughput(dry_step: Callable[[], None], tokens_per_call: int, steps: int, device: str) -> float:
    """Tokens/s at the median of ``steps`` timed calls after one warm-up call (which also absorbs any torch.compile
    time); the median, because one call slowed by a page fault or a neighbour's burst would otherwise set the plan."""
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    print0(f"preflight: timing {steps} dry steps after a warm-up step...")
    t0 = time.perf_counter()
    dry_step()
    sync()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        dry_step()
        sync()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print0(f"preflight: warm-up step {warmup:.2f} s, then {steps} dry steps in {sum(times):.2f} s "
           f"(median {median:.3f} s)")
    return tokens_per_call / max(median, 1e-9)


def report(plan: Plan, total_steps: int, start_step: int, tokens_per_s: float | None) -> dict:
    """Print the projected run time on rank 0 and return the preflight summary as a dict."""
    out = {"num_params": plan.num_params, "flops_per_token": plan.flops_per_token, "memory_bytes": plan.memory.total,
           "tokens_per_step": plan.tokens_per_step, "tokens_per_s": tokens_per_s, "projected_s": None}
    if tokens_per_s:
        # tokens_per_s was measured per process; all processes advance together
        step_s = plan.tokens_per_step / (tokens_per_s * plan.world_size)
        remaining = max(0, total_steps - start_step)
        out["projected_s"] = remaining * step_s
        mfu = (f", MFU {100 * tokens_per_s * plan.flops_per_token / (plan.peak_tflops * 1e12):.1f}%"
               if plan.peak_tflops else "")
        print0(f"throughput: {tokens_per_s * plan.world_size:,.0f} tokens/s{mfu}; {step_s:.3f} s/step; "
               f"{remaining} steps to go -> about {out['projected_s'] / 60:.1f} min (plus evaluation)")
    return out
