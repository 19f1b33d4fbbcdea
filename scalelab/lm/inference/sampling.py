"""Sampling: per-request ``Sampler`` (temperature, top-k, top-p, seed) and ``sample_rows`` (one batched draw).

    from scalelab.lm.inference.sampling import Sampler, sample_rows
    tokens = sample_rows(logits, [Sampler(0.8, top_k=50, seed=1), Sampler(0.0)])   # logits (2, V) -> 2 ids
    ids = sample_tensor(logits, inv_temp, top_k, top_p, uniform)   # all on the logits' device, no host sync

On CPU the draw goes through NumPy and scalelab's C kernel; on a GPU ``sample_tensor`` draws every row (greedy and
sampled alike) in one pass of tensor ops on the device, so a decode step copies only the chosen ids to the host.

Used by batching.py (``generate``, the engine's batches). Tested in tests/test_engine.py.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from scalelab.lm.inference import cpu_kernels


class Sampler:
    """Temperature, top-k and top-p (nucleus) sampling with a private ``random.Random`` (seeded or random).

    ``temperature`` 0 is greedy (argmax); ``top_k`` 0 and ``top_p`` 1.0 disable those filters. Invalid values raise
    ValueError with the offending name, so a server can answer 400. A draw is one uniform number from the
    generator, inverted through the filtered distribution's CDF, so rows with different settings are sampled in one
    batched pass (``sample_rows``) and a seeded request gives the same tokens alone or batched. (Python's generator:
    a ``random()`` call costs far less than a ``torch.rand`` draw with a private torch generator.)
    """

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> None:
        if not (temperature >= 0.0) or temperature == float("inf"):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if int(top_k) != top_k or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k}")
        if not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.greedy = self.temperature == 0.0 or self.top_k == 1
        self.rng = random.Random(None if seed is None else int(seed))  # None: seeded from the OS

    def uniform(self) -> float:
        return self.rng.random()

    def __call__(self, logits: torch.Tensor) -> int:
        """One token id from logits of shape (V,) (or (1, V))."""
        logits = logits.reshape(1, -1)
        if self.greedy:
            return _argmax(logits)[0]
        return sample_rows(logits, [self])[0]


def _argmax(x: torch.Tensor) -> list[int]:
    """Each row's index of its largest value (the first one on ties, NaN counting as largest, as torch does). On CPU
    through NumPy's vectorised argmax, which has a smaller fixed cost than torch's."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return x.detach().numpy().argmax(-1).tolist()
    return x.argmax(-1).tolist()


def _kth_largest(x: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """(n, 1): row i's ``ks[i]``-th largest value, or -inf where ``ks[i]`` >= V (no top-k). On CPU one NumPy
    ``partition`` per row, cheaper than ``torch.topk`` at decoding sizes."""
    n, V = x.shape
    if x.device.type != "cpu" or x.dtype != torch.float32:
        kth = torch.topk(x, max(k for k in ks if k < V)).values
        kth = kth.gather(1, torch.tensor([min(k, kth.shape[1]) - 1 for k in ks], device=x.device)[:, None])
        return kth.masked_fill(torch.tensor([k >= V for k in ks], device=x.device)[:, None], float("-inf"))
    xs = x.detach().numpy()
    return torch.tensor([[float(np.partition(xs[i], V - k)[V - k]) if k < V else float("-inf")]
                         for i, k in enumerate(ks)])


def _sorted_desc(probs: torch.Tensor) -> torch.Tensor:
    """Each row's values, largest first. On CPU through NumPy, whose sort is much faster than torch's CPU sort."""
    if probs.device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(np.sort(probs.numpy(), axis=-1)[:, ::-1]))
    return torch.sort(probs, dim=-1, descending=True).values


def sample_rows(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[int]:
    """One token per row of ``logits`` (n, V), row i drawn by ``samplers[i]`` (greedy rows take the argmax).

    Each sampled row inverts its filtered CDF (temperature, then top-k: a threshold at the k-th largest, ties with
    it stay; then top-p: a probability cut-off) at one uniform number from its own generator, in vocabulary order.
    Rows are computed independently, each always by the same path, so a seeded row draws the same token alone or
    in any batch. On CPU scalelab's sampling kernel draws them (in place of torch's softmax + cumsum +
    searchsorted), else one batched torch pass; on a GPU ``sample_tensor`` (one pass, one copy of the ids).
    """
    if logits.device.type != "cpu":  # greedy and sampled rows in one pass on the device, then one copy of the ids
        return sample_on_device(logits, samplers).tolist()
    n, V = logits.shape
    greedy = [s.greedy for s in samplers]
    out = _argmax(logits) if any(greedy) else [0] * n
    todo = [i for i in range(n) if not greedy[i]]
    if not todo:
        return out
    x = logits.float()
    if x.device.type == "cpu" and cpu_kernels.available():
        sub = x if len(todo) == n else x[todo]
        ks = [samplers[i].top_k if 0 < samplers[i].top_k < V else V for i in todo]
        thresholds = _kth_largest(sub, ks).view(-1).tolist() if min(ks) < V else [float("-inf")] * len(todo)
        drawn = cpu_kernels.sample(sub, [1.0 / samplers[i].temperature for i in todo], thresholds,
                                   [samplers[i].top_p for i in todo], [samplers[i].uniform() for i in todo])
        for i, token in zip(todo, drawn):
            out[i] = token
        return out
    drawn = _sample_torch(x if len(todo) == n else x[todo], [samplers[i] for i in todo])
    for i, token in zip(todo, drawn):
        out[i] = token
    return out


def sampling_params(samplers: Sequence[Sampler], vocab_size: int, device: torch.device | str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inv_temp, top_k, top_p, uniform) tensors of shape (n,) on ``device`` for ``sample_tensor``, one uniform
    drawn from each sampler's own generator (greedy rows: inverse temperature 0, no draw).

    Why one uniform from the host generator: a request's seed then gives the same tokens on every device and in
    any batch, and the parameters reach the device in one non-blocking copy from pinned memory.
    """
    rows = [(0.0 if s.greedy else 1.0 / s.temperature, float(s.top_k if 0 < s.top_k < vocab_size else vocab_size),
             s.top_p, 0.0 if s.greedy else s.uniform()) for s in samplers]
    host = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
    dev = torch.device(device)
    if dev.type == "cuda":
        host = host.pin_memory()  # torch's caching host allocator: reused blocks, safe across streams
    params = host.to(dev, non_blocking=True)
    return params[:, 0].float(), params[:, 1].long(), params[:, 2].float(), params[:, 3].float()


def sample_on_device(logits: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    """``sample_rows`` as a tensor of ids on the logits' device (no host synchronisation)."""
    if all(s.greedy for s in samplers):
        return logits.argmax(-1)
    return sample_tensor(logits, *sampling_params(samplers, logits.shape[-1], logits.device))


def sample_tensor(logits: torch.Tensor, inv_temp: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  uniform: torch.Tensor) -> torch.Tensor:
    """One id per row of ``logits`` (n, V), every parameter a tensor of shape (n,) on the same device.

    ``inv_temp`` 0 is greedy (the first maximum); ``top_k`` >= V and ``top_p`` >= 1 turn those filters off. The
    same distribution as the CPU paths: a top-k threshold at the k-th largest logit (ties stay), softmax at the
    temperature, a nucleus cut (the smallest set of the largest tokens whose mass reaches top_p), then the CDF in
    vocabulary order inverted at ``uniform``. Everything is computed on the sorted row once and scattered back, so
    the probabilities compared with the cut are the very values the cut came from. No host synchronisation.
    """
    x = logits.float()
    n, V = x.shape
    greedy = inv_temp <= 0
    srt, order = torch.sort(x, dim=-1, descending=True)  # (n, V)
    kth = srt.gather(1, (top_k.clamp(1, V) - 1)[:, None])  # (n, 1) the k-th largest logit
    scaled = (srt - srt[:, :1]) * torch.where(greedy, 1.0, inv_temp)[:, None]
    probs = torch.softmax(scaled.masked_fill(srt < kth, float("-inf")), dim=-1)  # sorted, largest first
    kept = ((torch.cumsum(probs, dim=-1) - probs) < top_p[:, None]).sum(-1, keepdim=True).clamp_(min=1)
    cut = torch.where(top_p[:, None] >= 1.0, 0.0, probs.gather(1, kept - 1))
    probs = probs.masked_fill(probs < cut, 0.0)
    probs = torch.zeros_like(probs).scatter_(1, order, probs)  # back to vocabulary order
    cdf = torch.cumsum(probs, dim=-1)
    choice = torch.searchsorted(cdf, (uniform[:, None] * cdf[:, -1:]).contiguous(), right=True).clamp_(max=V - 1)
    # rounding can land on or past a dropped entry (u * total == total): the row's most likely kept token then
    choice = torch.where(probs.gather(1, choice) > 0, choice, probs.argmax(-1, keepdim=True))[:, 0]
    return torch.where(greedy, x.argmax(-1), choice)


def _sample_torch(x: torch.Tensor, samplers: Sequence[Sampler]) -> list[int]:
    """``sample_rows`` for sampled (not greedy) rows in torch ops, batched: per-row settings as tensors."""
    n, V = x.shape
    dev = x.device
    temps = [s.temperature for s in samplers]
    ks = [s.top_k if 0 < s.top_k < V else V for s in samplers]
    ps = [s.top_p for s in samplers]
    u = torch.tensor([s.uniform() for s in samplers], device=dev)[:, None]
    if any(t != 1.0 for t in temps):
        x = x / torch.tensor(temps, device=dev)[:, None]
    if min(ks) < V:  # top-k: a threshold at each row's k-th largest (ties with it stay)
        x = x.masked_fill(x < _kth_largest(x, ks).to(dev), float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if min(ps) < 1.0:  # top-p: a probability cut-off, the smallest of the largest tokens whose mass reaches top_p
        top = _sorted_desc(probs)
        kept = ((torch.cumsum(top, dim=-1) - top) < torch.tensor(ps, device=dev)[:, None]).sum(-1, keepdim=True)
        probs = probs.masked_fill(probs < top.gather(1, kept.clamp_(min=1) - 1), 0.0)
    cdf = torch.cumsum(probs, dim=-1)
    choice = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # the first entry whose CDF exceeds u
    # rounding can land on or past a dropped entry (u * total == total): take the row's most likely kept one then
    ok = probs.gather(1, choice.clamp_(max=V - 1)) > 0
    if not bool(ok.all()):
        choice = torch.where(ok, choice, probs.argmax(-1, keepdim=True))
    return choice[:, 0].tolist()
