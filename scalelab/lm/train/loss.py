"""The output layer and the token cross-entropy in chunks of rows, never the fp32 logits of the whole batch at once.

    loss_sum = linear_cross_entropy(hidden, model.lm_head.weight, targets)   # hidden (N, C), targets (N,) -> sum

Why: a batch of 32 x 1024 tokens over a 32,768-token vocabulary has fp32 logits of 4 GiB, and the plain path keeps
them (and their softmax) alive for the backward pass; that memory traffic is time on a GPU. Here each chunk's
logits are made, turned into their loss and their gradient (softmax minus the one-hot target) at once, and
dropped; the gradients of the hidden states and of the weight are kept for the backward pass, which only scales
them. The matmuls are the ones autograd would run (one forward, two backward), so the FLOPs are unchanged.
Tested against ``F.cross_entropy`` on full logits (values and gradients) in tests/test_gpu_paths.py.
"""

from __future__ import annotations

import torch

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
