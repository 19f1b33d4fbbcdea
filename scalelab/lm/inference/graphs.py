"""The decode step on static buffers, replayed as CUDA graphs: one graph per (batch bucket, attention-length bucket).

    runner = GraphRunner(step, max_batch=64, max_len=1024, device=torch.device("cuda"))
    logits = runner.run(tokens, positions)   # n token ids and their cache positions -> logits (n, V)

``step(tokens, positions, length)`` is the decoder's fixed-shape forward: ``tokens`` and ``positions`` are (B,)
views of the runner's static input buffer, ``length`` the number of cache positions attention reads (a bucket),
and it returns logits (B, V) without synchronising with the host. A call with n rows pads them to the smallest
batch bucket B >= n (1, 2, 4, ..., max_batch) with token 0 at position 0 of the free rows beyond n (rows the
caller does not use: their cache holds nothing yet), writes the inputs into the static buffer with one
non-blocking copy, and replays the graph captured for (B, length), capturing it on first use. Chunked prefill
stays outside the graphs (its shapes vary), as in vLLM and SGLang.

Why: a decode step of a small model is a few hundred short kernels, and launching them one by one
from Python costs more than running them; a graph launches them all in one call. Where CUDA is absent (or
``graphs=False``) the same static-buffer code runs eagerly ("replay" is a plain call), so tests on a CPU exercise
the bucketing, the padding and the buffers that the graphs replay. A graph that cannot be captured (out of memory,
an operation that capture refuses) is skipped with a warning and that bucket runs eagerly.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Callable, Sequence

import torch

Step = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
SMALLEST_LENGTH = 256  # the shortest attention-length bucket (tests lower it to reach several buckets)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


def length_buckets(max_len: int, smallest: int = 256) -> list[int]:
    """Attention lengths: ``smallest``, twice that, ... below ``max_len``, then ``max_len``: a short row reads a short
    prefix of the cache while the graphs stay few (a graph's shapes are fixed)."""
    out, n = [], max(1, smallest)
    while n < max_len:
        out.append(n)
        n *= 2
    return out + [max_len]


def pick(buckets: Sequence[int], n: int) -> int:
    """The smallest bucket >= n (``buckets`` ascending)."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


class GraphRunner:
    """Runs a decode ``step`` on static buffers, as CUDA graphs on a GPU and eagerly elsewhere (module docstring)."""

    def __init__(self, step: Step, max_batch: int, max_len: int, device: torch.device, graphs: bool = True,
                 smallest_length: int | None = None) -> None:
        self.step, self.device = step, torch.device(device)
        self.graphs = bool(graphs) and self.device.type == "cuda" and torch.cuda.is_available()
        self.batch_sizes = batch_buckets(max_batch)
        self.lengths = length_buckets(max_len, smallest_length or SMALLEST_LENGTH)
        self.inputs = torch.zeros(2, max_batch, dtype=torch.long, device=self.device)  # tokens, positions
        self.captured: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.failed: dict[tuple[int, int], str] = {}
        self.replays = 0
        self._pool = None

    def buckets(self, n: int, positions: Sequence[int]) -> tuple[int, int]:
        """(batch bucket, length bucket) for n rows at ``positions``."""
        return pick(self.batch_sizes, n), pick(self.lengths, max(positions) + 1)

    def load(self, tokens: Sequence[int], positions: Sequence[int]) -> tuple[int, int]:
        """Write the padded inputs into the static buffer; returns the buckets (B, L)."""
        n = len(tokens)
        if n == 0 or n != len(positions):
            raise ValueError(f"{n} tokens and {len(positions)} positions: give one position per token, at least one")
        B, L = self.buckets(n, positions)
        host = torch.zeros(2, B, dtype=torch.long)  # padding rows: token 0 at position 0 of a free row
        host[0, :n] = torch.tensor(tokens, dtype=torch.long)
        host[1, :n] = torch.tensor(positions, dtype=torch.long)
        if self.device.type == "cuda":
            host = host.pin_memory()  # torch's caching host allocator: the copy below does not block the host
        self.inputs[:, :B].copy_(host, non_blocking=True)
        return B, L

    def run(self, tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """Logits (n, V) after feeding ``tokens[i]`` to cache row i at ``positions[i]``."""
        n = len(tokens)
        B, L = self.load(tokens, positions)
        graph = self._graph(B, L) if self.graphs else None
        if graph is None:
            return self.step(self.inputs[0, :B], self.inputs[1, :B], L)[:n]
        graph[0].replay()
        self.replays += 1
        return graph[1][:n].clone()  # the graph's output buffer is overwritten by the next replay

    def capture_all(self) -> int:
        """Capture every bucket now (as a server does before taking requests); returns how many graphs exist.

        The warm-up and capture runs write keys/values of token 0 at position 0 of every row: call it before the
        cache holds anything."""
        if self.graphs:
            self.inputs.zero_()
            for B in self.batch_sizes:
                for L in self.lengths:
                    self._graph(B, L)
        return len(self.captured)

    def _graph(self, B: int, L: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        key = (B, L)
        if key in self.captured or key in self.failed:
            return self.captured.get(key)
        tokens, positions = self.inputs[0, :B], self.inputs[1, :B]
        try:
            # warm up on a side stream (lazy initialisation, kernel choice), as torch.cuda.graphs documents; the
            # warm-up writes the same keys/values the replay will write, so it changes nothing
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.step(tokens, positions, L)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()  # one memory pool shared by every bucket's graph
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.step(tokens, positions, L)
        except Exception as e:  # out of memory, or an operation capture refuses: this bucket runs eagerly
            first = (str(e).splitlines() or [""])[0][:200]
            self.failed[key] = f"{type(e).__name__}: {first}"
            warnings.warn(f"CUDA graph for batch {B}, length {L} not captured ({self.failed[key]}); "
                          "that bucket decodes eagerly", RuntimeWarning, stacklevel=3)
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            return None
        self.captured[key] = (graph, out)
        return self.captured[key]
