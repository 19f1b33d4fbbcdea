"""The training loss and the evaluation sums. ``LossSum``: the summed token cross-entropy a step backpropagates;
``eval_sums`` / ``val_sums``: nats and bytes for validation loss and bits per byte.

The output layer and the token cross-entropy in chunks of rows, never the fp32 logits of the whole batch at once.

    loss_sum = linear_cross_entropy(hidden, model.lm_head.weight, targets)   # hidden (N, C), targets (N,) -> sum

Why: a batch of 32 x 1024 tokens over a 32,768-token vocabulary has fp32 logits of 4 GiB, and the plain path keeps
them (and their softmax) alive for the backward pass; that memory traffic is time on a GPU. Here each chunk's
logits are made, turned into their loss and their gradient (softmax minus the one-hot target) at once, and
dropped; the gradients of the hidden states and of the weight are kept for the backward pass, which only scales
them. The matmuls are the ones autograd would run (one forward, two backward), so the FLOPs are unchanged.
Tested against ``F.cross_entropy`` on full logits (values and gradients) in tests/test_gpu_paths.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 24  # logits per chunk (rows x vocabulary): 64 MiB in fp32


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, n, rows):
            h, y = hidden[i:i + rows], targets[i:i + rows]
            mm = h @ weight.t()  # (c, V); under autocast in the autocast dtype
            dt = mm.dtype
            logits = mm.float()
            del mm
            valid = y != -1
            safe = y.clamp(min=0)[:, None]
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, safe)[:, 0]) * valid).sum()
            g = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place of the logits
            g.scatter_add_(1, safe, torch.full_like(lse, -1.0)[:, None])
            g.mul_(valid[:, None])
            g = g.to(dt)  # the backward matmuls in the forward matmul's dtype, as autograd would run them
            grad_h[i:i + rows] = g @ weight.to(dt)
            grad_w += (g.t() @ h.to(dt)).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_elements: int | None = None) -> torch.Tensor:
    """Sum over rows of cross_entropy(hidden @ weight.T, targets) (targets == -1 ignored), in fp32.

    ``hidden`` (N, C), ``weight`` (V, C) (the output layer's), ``targets`` (N,). Rows go through in chunks of
    ``chunk_elements // V`` (None: ``CHUNK_ELEMENTS``); gradients flow to ``hidden`` and ``weight``.
    """
    rows = max(1, (chunk_elements or CHUNK_ELEMENTS) // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets.reshape(-1), rows)


class LossSum(nn.Module):
    """Sum of token cross-entropies (targets == -1 ignored), so the trainer can normalise over the global batch.

    ``chunked`` (None: on CUDA, except under FSDP, whose sharded output layer is only gathered inside the model's
    forward): the output layer and the loss in chunks of rows (lm/train/loss.py), never the whole batch's fp32
    logits at once."""

    def __init__(self, model: nn.Module, chunked: bool | None = None) -> None:
        super().__init__()
        self.model = model
        if chunked is None:
            chunked = next(model.parameters()).is_cuda and not hasattr(model, "reshard")  # FSDP2 modules reshard
        self.chunked = chunked

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.chunked:
            h, _ = self.model(x, hidden=True)  # (B, T, C)
            return linear_cross_entropy(h.reshape(-1, h.size(-1)), self.model.lm_head.weight, y)
        logits, _ = self.model(x)  # (B, T, V) fp32
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="sum")


def eval_sums(logits: torch.Tensor, y: torch.Tensor, token_bytes: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """(sum of nats, number of targets, sum of nats over byte-carrying targets, their bytes) for one batch.

    Targets == -1 are ignored; special tokens (0 bytes) are left out of both byte sums, so
    bits per byte = nats_b / ln 2 / bytes does not depend on the tokenizer.
    """
    y = y.reshape(-1)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y, ignore_index=-1, reduction="none").double()
    valid = y != -1
    zero = torch.zeros((), dtype=torch.float64, device=logits.device)
    if token_bytes is None:
        return loss[valid].sum(), valid.sum().double(), zero, zero
    b = token_bytes.to(y.device)[y.clamp(min=0)] * valid
    return loss[valid].sum(), valid.sum().double(), loss[b > 0].sum(), b.sum().double()


@torch.no_grad()
def val_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str,
             autocast: Callable, token_bytes: torch.Tensor | None) -> torch.Tensor:
    """(nats, targets, nats over byte-carrying targets, bytes) summed over this rank's validation batches."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits, _ = model(x)
        sums += torch.stack(eval_sums(logits, y, token_bytes))
    return sums
