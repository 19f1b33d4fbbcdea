"""Optimizer, learning-rate schedules and the hardware peak used for MFU (helpers of scalelab/lm/train/loop.py).

    opt = build_optimizer(model, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), device="cpu")
    lr = lr_at(step, max_lr=3e-3, total_steps=1000, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1)

Schedules (``step`` counts finished optimizer steps, so the first update uses ``lr_at(0)``):
  - warmup: linear from max_lr / warmup_steps up to max_lr over ``warmup_steps`` steps (at most half the run);
  - cosine: then half a cosine from max_lr down to min_lr_ratio * max_lr at ``total_steps``;
  - wsd (warmup-stable-decay): constant max_lr, then a linear decay over the last ``decay_frac`` of the steps;
  - constant: max_lr after warmup.
``schedule="auto"`` (the TrainConfig default) resolves to wsd under a time budget and cosine otherwise
(``resolve_schedule``).

Under a time budget (``--time-budget MIN``) preflight's timed steps give a first plan; then at every log step the
trainer re-plans ``total_steps`` (``replan_total``) from the wall time left and the measured seconds per step (the
median of the last 3 log windows, plus evaluation/checkpoint time amortised over the steps so far; the latest
evaluation + save is reserved for the end) until the decay phase starts (``decay_start``); after that the total is
frozen so the decay always runs to its end. A run found late starts its decay at once; a run past 1.5x its budget
stops (a safety stop for a machine that became much slower); under torchrun rank 0's plan is broadcast.
For wsd and constant, moving the end of the stable phase never changes an LR already used;
for cosine, re-planning re-stretches the remaining curve (small LR changes between log steps) and freezes once the
last ``decay_frac`` of the run begins.

Peak TFLOP/s (dense matmul, per device) for MFU, overridable with ``--peak-tflops``: ``peak_tflops``'s table holds
the vendors' dense bf16 figures for GPUs (fp32 counts as TF32 at half of that) and a 2-core CPU's measured matmul
peak; MFU on another CPU is only as right as that row.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "wsd", "constant")
SCHEDULE_CHOICES = ("auto", *SCHEDULES)

# device kind -> dtype -> peak TFLOP/s (dense). GPU names are matched as substrings of torch.cuda.get_device_name().
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "cpu": {"fp32": 0.44, "bf16": 3.5, "fp16": 0.44},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
}


def peak_tflops(device: str, dtype: str) -> float:
    """The table's peak for this device and dtype, or 0.0 when unknown (MFU is then not reported)."""
    if device == "cpu":
        return PEAK_TFLOPS["cpu"].get(dtype, 0.0)
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, table in PEAK_TFLOPS.items():
            if key != "cpu" and key in name:
                return table.get(dtype, 0.0)
    return 0.0


def lr_at(step: int, max_lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
          min_lr_ratio: float = 0.1, decay_frac: float = 0.2) -> float:
    """Learning rate for the update after ``step`` finished steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}' (choose {', '.join(SCHEDULES)})")
    warmup_steps = min(warmup_steps, total_steps // 2)  # a short run (e.g. a small time budget) still decays
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    min_lr = max_lr * min_lr_ratio
    if schedule == "constant":
        return max_lr
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_steps = max(1, round(decay_frac * total_steps))  # wsd
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return max_lr
    progress = min(1.0, (step - decay_start) / decay_steps)
    return max_lr + (min_lr - max_lr) * progress


def resolve_schedule(schedule: str, time_budget: float) -> str:
    """``auto`` -> ``wsd`` for a time-budgeted run (re-planning its length never changes LRs already used), else
    ``cosine``; any other name is returned as is."""
    if schedule == "auto":
        return "wsd" if time_budget > 0 else "cosine"
    return schedule


def decay_start(total_steps: int, schedule: str, decay_frac: float) -> int:
    """First step of the phase whose LRs depend on ``total_steps`` and after which the plan is frozen: wsd's linear
    decay and, for cosine, the last ``decay_frac`` of the run. ``constant`` never decays: the total stays open."""
    if schedule == "constant":
        return total_steps
    return total_steps - max(1, round(decay_frac * total_steps))


def replan_total(step: int, total_steps: int, remaining_s: float, step_s: float, max_steps: int, schedule: str,
                 decay_frac: float) -> int:
    """The new planned total for a time-budgeted run after ``step`` finished steps.

    ``remaining_s`` is the wall time left (the final evaluation/checkpoint already reserved), ``step_s`` the measured
    seconds per step (evaluation overhead amortised). Returns ``total_steps`` unchanged once the decay phase has
    X
    """
    if schedule != "constant" and step >= decay_start(total_steps, schedule, decay_frac):
        return total_steps
    fit = int(max(0.0, remaining_s) / max(step_s, 1e-9))
    new = min(max_steps, step + max(1, fit))
    while schedule != "constant" and decay_start(new, schedule, decay_frac) < step and new < max_steps:
        new += 1
    return max(new, step + 1)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    device: str) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (not on norms). Fused kernel on CUDA.

    Parameters are grouped in ``named_parameters`` order, so the optimizer state is keyed identically for one
    process, DDP and FSDP (checkpoints store it by parameter name; see checkpoint.optimizer_state).
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.startswith("cuda") else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, **extra)


def seconds_per_step(windows: list[float], pause_total: float, steps_done: int) -> float:
    """Training seconds per step for the plan: the median of the last 3 log windows (the faster of the first 2), so
    one busy window, or the first with its warm-up, does not move the plan and a lasting change does; plus the
    evaluation/checkpoint time so far spread over the steps done."""
    recent = sorted(windows[-3:])
    return (recent[1] if len(recent) == 3 else recent[0]) + pause_total / max(1, steps_done)
