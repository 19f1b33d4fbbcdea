"""Decoding: a lean KV-cached forward of a ``GPT`` (``Decoder``), with its weights laid out for the device.

    dec = Decoder(model, max_batch=8)
    logits = dec.prefill(row, prompt_ids)           # (1, V) after the prompt
    logits = dec.decode([tok_0, tok_1, ...])        # one token for each of rows 0..n-1, rows at their own lengths
    logits = dec.forward_tokens(tokens, rows, positions, last)   # CPU kernels: decode tokens and prompts, one pass

On CUDA a decode step runs on static buffers and is replayed as a CUDA graph per batch bucket (graphs.py);
``cuda_graphs=True`` runs that same static path on a CPU too (eagerly), which is how the tests check it.

The pieces under ``scalelab.lm.inference.engine`` (which re-exports ``generate``, ``generate_batch``, ``Sampler`` and
``TextStream``; import them from there): rows, batches and ``generate`` are batching.py, streamed text
textstream.py, sampling sampling.py, the CPU kernels cpu_kernels.py.
Tested against ``GPT.forward`` in tests/test_engine.py (``.venv/bin/pytest tests/test_engine.py -q``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from scalelab.lm.inference import cpu_kernels
from scalelab.lm.inference.graphs import GraphRunner
from scalelab.lm.model import GPT

# what ``Decoder(cuda_graphs=None)`` does: None = the static path under CUDA graphs on CUDA only; True = the static path
# everywhere (tests set it to run the engine's static path on a CPU); False = never
DEFAULT_CUDA_GRAPHS: bool | None = None
_HAS_DNNL = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")

# ------------------------------------------------------------------------------------------------------ the decoder

def _to_device(data: list, device: torch.device) -> torch.Tensor:
    """A long tensor of ``data`` on ``device``; to CUDA through pinned memory, so the host does not wait."""
    t = torch.tensor(data, dtype=torch.long)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def unwrap(model: torch.nn.Module) -> GPT:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    if not isinstance(model, GPT):
        raise TypeError(f"expected a scalelab GPT, got {type(model).__name__}")
    return model


class _Proj:
    """One projection ``x @ w`` (+ a residual) on 2-D activations, with weights laid out for the device.

    fp32 on CPU: scalelab's few-row kernel on the weight packed into column panels (see cpu_kernels.py). Without
    the kernels (no C compiler, bf16 weights): the weight packed by oneDNN
    (``torch.ops.mkldnn._reorder_linear_weight``; MKL's sgemm is slow for few rows), and for fp32 one row also a
    split by output columns into one slice per thread, (threads, in, out / threads), through ``bmm`` so that every
    core reads its slice (MKL runs a matrix-vector product on one core). Without oneDNN (CUDA): plain
    ``mm``/``addmm``.
    """

    __slots__ = ("w", "packed", "split", "panels", "n")

    def __init__(self, w: torch.Tensor, rows_hint: int) -> None:
        """``w`` is (in, out)."""
        self.w, self.packed, self.split, self.panels, self.n = w, None, None, None, w.shape[1]
        if w.device.type != "cpu":
            return
        if w.dtype == torch.float32 and cpu_kernels.available():
            self.panels, self.w = cpu_kernels.pack(w), None
            return
        if not _HAS_DNNL or w.dtype not in (torch.float32, torch.bfloat16):
            return
        try:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), max(1, rows_hint))
        except (RuntimeError, AttributeError):  # a build or CPU without oneDNN's packed linear
            return
        parts = torch.get_num_threads()
        k, n = w.shape
        if w.dtype == torch.float32 and parts > 1 and n % parts == 0:
            self.split = w.reshape(k, parts, n // parts).permute(1, 0, 2).contiguous()
            self.w = None  # one row: the split slices; more rows: the packed copy
        elif w.dtype != torch.float32:
            self.w = None  # bf16: oneDNN for every row count

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.panels is not None:
            return cpu_kernels.linear(x.contiguous(), self.panels, self.n,
                                      None if residual is None else residual.contiguous())
        one_row = x.shape[0] == 1
        if one_row and self.split is not None:
            xs = x.expand(self.split.shape[0], 1, x.shape[1])
            if residual is None:
                return torch.bmm(xs, self.split).view(1, -1)
            return torch.baddbmm(residual.view(self.split.shape[0], 1, -1), xs, self.split).view(1, -1)
        if self.packed is None or (one_row and self.w is not None):
            return torch.mm(x, self.w) if residual is None else torch.addmm(residual, x, self.w)
        if residual is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, None, "add")


_PACK_ROWS = 8  # the row count oneDNN lays packed weights out for (measured: 1, 8 and 64 within 5% at 1..32 rows)
_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # GPT -> (weights' identity, fused weights)


def release_fused_weights(model: torch.nn.Module) -> None:
    """Drop the cached decoding copy of ``model``'s weights (a trainer that samples now and then calls this: the
    weights change before the next sample anyway, and the copy is about twice the model's size on CPU)."""
    _FUSED.pop(unwrap(model), None)
    _IDLE.pop(unwrap(model), None)


def _fused_weights(m: GPT) -> tuple[list[tuple[_Proj, _Proj, _Proj, _Proj]], _Proj]:
    """Per layer (qkv, o, gate_up, down) projections and the output layer, laid out for ``Decoder``.

    Each projection works on 2-D activations (B*T, C) with the residual add fused in; how its weight is laid out
    (plain (in, out), oneDNN-packed, per-thread slices) is ``_Proj``'s business. Each RMSNorm weight is folded into
    the rows of the projection that follows it, so a norm is 4 kernels.

    Cached per model while its parameters keep their storage and version counters (an optimizer step, a
    ``load_state_dict`` or ``.to()`` changes them), so repeated ``generate`` calls do not repack the weights.
    """
    cpu = m.embed_tokens.weight.device.type == "cpu"
    kernels = cpu and cpu_kernels.available()  # (never builds the CPU kernels for a GPU model)
    key = (kernels, *((p.data_ptr(), p._version, p.dtype, p.device) for p in m.parameters()))
    hit = _FUSED.get(m)
    if hit is not None and hit[0] == key:
        return hit[1]

    def proj(w: torch.Tensor, norm: torch.Tensor | None = None) -> _Proj:
        w = w.detach().t()  # (in, out)
        if norm is not None:
            w = w * norm.detach()[:, None]
        return _Proj(w.contiguous() if cpu or norm is not None else w, _PACK_ROWS)

    def pairs_adjacent(w: torch.Tensor) -> torch.Tensor:
        """Rows of a q or k projection reordered within each head to (0, h, 1, h + 1, ...), h = head_dim / 2."""
        hd = m.config.head_dim
        order = torch.arange(hd, device=w.device).view(2, hd // 2).t().reshape(-1)
        return w.view(-1, hd, w.shape[1])[:, order].reshape(w.shape)

    with torch.no_grad():
        layers = []
        for blk in m.layers:
            a, mlp = blk.self_attn, blk.mlp
            q, k = pairs_adjacent(a.q_proj.weight), pairs_adjacent(a.k_proj.weight)
            layers.append((
                proj(torch.cat([q, k, a.v_proj.weight]), blk.input_layernorm.weight),
                proj(a.o_proj.weight),
                proj(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), blk.post_attention_layernorm.weight),
                proj(mlp.down_proj.weight),
            ))
        fused = (layers, proj(m.lm_head.weight, m.norm.weight))
    _FUSED[m] = (key, fused)
    return fused


_IDLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # GPT -> idle decoders whose CUDA graphs are kept


def lease_decoder(model: torch.nn.Module, max_batch: int) -> Decoder:
    """A decoder of ``max_batch`` rows for ``model``: an idle one given back earlier (CUDA graphs already captured,
    cache allocated) while the model's weights are unchanged, else a new one. Give it back with ``give_back``."""
    m = unwrap(model)
    idle = _IDLE.get(m, [])
    while idle:
        dec = idle.pop()
        if dec.max_batch == max_batch and dec.weights_current():
            dec.lengths = [0] * max_batch
            return dec
    return Decoder(m, max_batch)


def give_back(dec: Decoder) -> None:
    """Keep ``dec`` for the next ``lease_decoder`` when it replays CUDA graphs (worth keeping: capture costs time);
    other decoders are cheap to build and are dropped."""
    m = dec.model()
    if m is not None and dec.runner is not None and dec.runner.graphs:
        idle = _IDLE.setdefault(m, [])
        if len(idle) < 2:
            idle.append(dec)


class _Packed(NamedTuple):
    """Where a packed forward's tokens go: cache positions (N,), cache rows (N,) or None for rows 0..N-1, and the
    indices of the tokens whose logits are wanted (None: all)."""

    positions: torch.Tensor
    rows: torch.Tensor | None
    last: torch.Tensor | None


class Decoder:
    """Inference-only forward of a ``GPT`` with fused weights and its own KV cache of ``max_batch`` rows.

    Same math as ``GPT.forward`` (tests check the logits), fewer kernel launches: q/k/v and gate/up are one matmul
    each, the residual adds ride on the projection, RMSNorm weights are folded into the next projection, RoPE is one
    complex product for q and k together (their weight rows reordered so rotated pairs sit side by side). The cache
    is laid out (layer, row, kv_head, position, head_dim) so attention reads each row's prefix without copies.
    ``lengths[r]`` is how many tokens row r holds. The weights are copied at fusion (on CPU about two models' worth:
    the packed copy for several rows and the per-thread slices for one, see ``_Proj``) and cached per model until
    its weights change (``_fused_weights``), so building a decoder per request is cheap.
    """

    def __init__(self, model: torch.nn.Module, max_batch: int = 1, max_len: int | None = None,
                 cuda_graphs: bool | None = None) -> None:
        """``cuda_graphs``: None (default) decodes through the static path under CUDA graphs on CUDA and through the
        CPU paths elsewhere; True takes the static path on any device (replayed as graphs on CUDA, called eagerly
        elsewhere); False never takes it."""
        m = unwrap(model)
        cfg = self.config = m.config
        emb = m.embed_tokens.weight
        self.device, self.dtype = emb.device, emb.dtype
        self.max_batch = max_batch
        self.max_len = min(max_len or cfg.max_seq_len, cfg.max_seq_len)
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.n_qk = (cfg.n_head + cfg.n_kv_head) * cfg.head_dim
        self.eps, self.n_embd, self.ffn = cfg.norm_eps, cfg.n_embd, cfg.intermediate_size
        self.model = weakref.ref(m)
        with torch.no_grad():
            self.embed = emb.detach()
            self._fused = _fused_weights(m)
            self.layers, self.lm_head = self._fused
            half = self.head_dim // 2
            # RoPE as one complex product: the fused q/k weights put each rotated pair (i, i + half) side by side
            # (``_fused_weights``), queries and keys alike, so their dot products are unchanged.
            self.rot = torch.complex(m.rope_cos[: self.max_len, :half].float(),
                                     m.rope_sin[: self.max_len, :half].float())  # (T, half): e^{i pos theta_j}
            self._eps = torch.tensor(self.eps, dtype=torch.float32, device=self.device)
        # Attention reads and the KV cache: the weights' dtype, but fp32 for bf16/fp16 weights on CPU, where torch's
        # attention kernels for one query row are several times slower in bf16. The projections keep their dtype.
        self.kv_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        with torch.inference_mode():
            shape = (cfg.n_layer, max_batch, cfg.n_kv_head, self.max_len, cfg.head_dim)
            self.k = torch.zeros(shape, device=self.device, dtype=self.kv_dtype)
            self.v = torch.zeros(shape, device=self.device, dtype=self.kv_dtype)
            self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)  # per-layer views: no indexing per step
        self.lengths = [0] * max_batch
        self.gqa = cfg.n_kv_head != cfg.n_head
        self._cast = self.dtype != torch.float32  # norms and RoPE compute in fp32; cast back only when needed
        self._cast_kv = self.kv_dtype != self.dtype
        # on CPU, scalelab's attention kernel writes the new keys/values and attends each token to its own row's
        # prefix in one call, so decode tokens of rows at different lengths need no mask (cheaper than a mask +
        # SDPA) and prompts can share the pass (``forward_tokens``)
        if cuda_graphs is None:
            cuda_graphs = DEFAULT_CUDA_GRAPHS
        static = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.packed = (not static and self.device.type == "cpu" and self.kv_dtype == torch.float32
                       and cpu_kernels.attention_supported(self.head_dim))
        self._scale = 1.0 / self.head_dim ** 0.5
        # the static decode step: fixed shapes per (batch, attention length) bucket, so CUDA can replay it as a graph
        self.runner = GraphRunner(self._static_step, max_batch, self.max_len, self.device) if static else None
        if static:
            self._rows = torch.arange(max_batch, device=self.device)
            self._cache_positions = torch.arange(self.max_len, device=self.device)
        kernels = self.packed or self.lm_head.panels is not None
        # what decodes (shown by `scalelab serve`)
        self.backend = "scalelab CPU kernels" if kernels else "torch"
        if self.runner is not None:
            self.backend = "torch + CUDA graphs" if self.runner.graphs else "static decode step (eager)"

    def weights_current(self) -> bool:
        """Whether the model still has the weights this decoder was built from (no optimizer step since)."""
        m = self.model()
        return m is not None and _fused_weights(m) is self._fused

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x * rsqrt(mean(x^2) + eps) in fp32 (the weight is folded into the next projection)."""
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        scale = torch.addcmul(self._eps, n, n, value=1.0 / self.n_embd).rsqrt_()
        return (x * scale).to(self.dtype) if self._cast else x * scale

    def _rope(self, qk: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """qk (B, T, heads, hd), rotated pairs adjacent, times e^{i pos theta}; rot broadcasts to (B, T, 1, hd/2).
        The result is in the attention dtype (``kv_dtype``)."""
        B, T, n, hd = qk.shape
        z = torch.view_as_complex(qk.float().reshape(B, T, n, hd // 2, 2)) * rot
        out = torch.view_as_real(z).view(B, T, n, hd)
        return out if out.dtype == self.kv_dtype else out.to(self.kv_dtype)

    def _forward(self, idx: torch.Tensor, rows: slice, rot: torch.Tensor, write, attn_end: int,
                 mask: torch.Tensor | None, causal: bool, packed: _Packed | None = None) -> torch.Tensor:
        """idx (B, T) -> last-token logits (B, V); ``write(layer, k, v)`` stores the new keys/values.

        Runs in the weights' own dtype: an enclosing autocast (a trainer sampling mid-run) is switched off, since the
        packed oneDNN projections take no part in autocast.
        """
        if torch.is_autocast_enabled(self.device.type):  # entering autocast is not free: only when needed
            with torch.autocast(self.device.type, enabled=False):
                return self._layers_forward(idx, rows, rot, write, attn_end, mask, causal, packed)
        return self._layers_forward(idx, rows, rot, write, attn_end, mask, causal, packed)

    def _layers_forward(self, idx: torch.Tensor, rows: slice, rot: torch.Tensor, write, attn_end: int,
                        mask: torch.Tensor | None, causal: bool, packed: _Packed | None) -> torch.Tensor:
        """``packed`` (the CPU attention kernel; idx (N, 1), one token per entry): where each token goes (cache row
        and position) and which tokens' logits to return; ``rows``, ``write``, ``attn_end``, ``mask`` and
        ``causal`` are then unused."""
        B, T = idx.shape
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        x = F.embedding(idx.reshape(-1), self.embed)  # (B*T, C)
        r0, n_v = rows.start, Hkv * hd
        # (plain narrow/split/view calls: a decode step is ~200 small ops, so Python-side indexing shows)
        for i, (w_qkv, w_o, w_gu, w_down) in enumerate(self.layers):
            qk, v = w_qkv(self._norm(x)).view(B, T, -1).split((self.n_qk, n_v), -1)  # (B, T, (H + Hkv) hd), ...
            qk = self._rope(qk.view(B, T, H + Hkv, hd), rot)  # (B, T, H + Hkv, hd)
            v = v.view(B, T, Hkv, hd)
            if self._cast_kv:
                v = v.to(self.kv_dtype)
            if packed is not None:  # (N, H * hd)
                y = cpu_kernels.attention(qk[:, 0, :H], qk[:, 0, H:], v[:, 0], self.k_layers[i], self.v_layers[i],
                                          packed.positions, self._scale, packed.rows)
            else:
                write(i, qk.narrow(2, H, Hkv), v)
                keys = self.k_layers[i].narrow(0, r0, B).narrow(2, 0, attn_end)  # (B, Hkv, L, hd)
                values = self.v_layers[i].narrow(0, r0, B).narrow(2, 0, attn_end)
                y = F.scaled_dot_product_attention(qk.narrow(2, 0, H).transpose(1, 2), keys, values, attn_mask=mask,
                                                   is_causal=causal, enable_gqa=self.gqa)  # (B, H, T, hd)
                y = y.transpose(1, 2).reshape(B * T, H * hd)
            x = w_o(y.to(self.dtype) if self._cast_kv else y, x)
            gate, up = w_gu(self._norm(x)).split(self.ffn, dim=-1)
            x = w_down(F.silu(gate) * up, x)
        if packed is not None:
            last = x if packed.last is None else x.index_select(0, packed.last)  # (n, C)
        else:
            last = x.view(B, T, -1)[:, -1]  # (B, C)
        return self.lm_head(self._norm(last)).float()  # (B, V)

    @torch.inference_mode()
    def forward_tokens(self, tokens: Sequence[int], rows: Sequence[int] | None, positions: Sequence[int],
                       last: Sequence[int] | None = None) -> torch.Tensor:
        """Feed ``tokens[i]`` to cache row ``rows[i]`` (None: row i) at ``positions[i]``, all in one forward, and
        return the logits after the tokens at indices ``last`` (None: all), shape (len(last), V).

        Only with the CPU attention kernel (``self.packed``): decode tokens of several rows and whole prompts (or
        chunks of them, consecutive positions) share one pass, so a prompt costs its matmuls and no forward of its
        own. The caller keeps ``lengths`` (``Batch`` does).
        """
        if not self.packed:
            raise RuntimeError("forward_tokens needs scalelab's CPU attention kernel (fp32 on CPU)")
        lo, hi = (min(positions), max(positions)) if positions else (-1, -1)
        if lo < 0 or hi >= self.max_len:
            raise ValueError(f"positions must lie within the context length of {self.max_len}")
        dev = self.device
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        packed = _Packed(pos, None if rows is None else torch.tensor(rows, dtype=torch.long, device=dev),
                         None if last is None else torch.tensor(last, dtype=torch.long, device=dev))
        idx = torch.tensor(tokens, dtype=torch.long, device=dev)[:, None]  # (N, 1)
        if lo == hi:  # one position for all tokens: a slice
            rot = self.rot[lo:lo + 1][:, None, None]  # (1, 1, 1, hd/2)
        else:
            rot = self.rot[pos][:, None, None]  # (N, 1, 1, hd/2)
        return self._forward(idx, slice(0, 0), rot, None, 0, None, False, packed)

    @torch.inference_mode()
    def prefill(self, row: int, ids: Sequence[int]) -> torch.Tensor:
        """Append ``ids`` to row ``row`` (usually empty) and return the logits after the last one, shape (1, V)."""
        start, T = self.lengths[row], len(ids)
        if T == 0:
            raise ValueError("nothing to prefill: the prompt is empty")
        if start + T > self.max_len:
            raise ValueError(f"{start + T} tokens exceed the context length of {self.max_len}")
        if self.packed:
            logits = self.forward_tokens(ids, [row] * T, range(start, start + T), [T - 1])
            self.lengths[row] = start + T
            return logits
        idx = _to_device([list(ids)], self.device)
        rot = self.rot[start:start + T][None, :, None]  # (1, T, 1, hd/2)

        def write(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            self.k[i, row, :, start:start + T] = k[0].transpose(0, 1)
            self.v[i, row, :, start:start + T] = v[0].transpose(0, 1)

        mask = None
        if start > 0:  # attend to the cached prefix and causally within the new tokens
            mask = torch.arange(start + T, device=self.device)[None] <= torch.arange(start, start + T,
                                                                                  device=self.device)[:, None]
        logits = self._forward(idx, slice(row, row + 1), rot, write, start + T, mask, causal=start == 0)
        self.lengths[row] = start + T
        return logits

    @torch.inference_mode()
    def decode(self, tokens: Sequence[int | None]) -> torch.Tensor:
        """Feed ``tokens[r]`` to row r for r < len(tokens), all in one forward; returns logits (len(tokens), V).

        On the static path (``self.runner``) a token may be None: row r is then left as it is (a row still being
        prefilled) and its logits are meaningless."""
        if self.runner is not None:
            return self._decode_static(tokens)
        n = len(tokens)
        lengths = self.lengths[:n]
        if max(lengths) >= self.max_len:
            raise ValueError(f"the KV cache is full (context length {self.max_len})")
        if self.packed:  # the kernel writes each row's keys/values at its position and needs no mask
            logits = self.forward_tokens(tokens, None, lengths)
        else:
            logits = self._decode_torch(tokens, lengths)
        for r in range(n):
            self.lengths[r] += 1
        return logits

    def _decode_static(self, tokens: Sequence[int | None]) -> torch.Tensor:
        """``decode`` through the ``GraphRunner``: a row left out (None) gets token 0 at its next free position,
        which its next prefill chunk or decode token overwrites."""
        fed = [t is not None for t in tokens]
        if any(self.lengths[r] >= self.max_len for r, f in enumerate(fed) if f):
            raise ValueError(f"the KV cache is full (context length {self.max_len})")
        positions = [min(self.lengths[r], self.max_len - 1) for r in range(len(tokens))]
        logits = self.runner.run([0 if t is None else t for t in tokens], positions)
        for r, f in enumerate(fed):
            if f:
                self.lengths[r] += 1
        return logits

    def _static_step(self, idx: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
        """The fixed-shape decode step the runner replays: idx and pos (B,) for rows 0..B-1, attention over the
        first ``length`` cache positions with a mask; logits (B, V). No host synchronisation."""
        B = idx.shape[0]
        rows = self._rows[:B]
        rot = self.rot[pos][:, None, None]  # (B, 1, 1, hd/2)

        def write(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            self.k_layers[i][rows, :, pos] = k[:, 0]
            self.v_layers[i][rows, :, pos] = v[:, 0]

        mask = (self._cache_positions[:length][None] <= pos[:, None])[:, None, None]  # (B, 1, 1, L)
        return self._forward(idx[:, None], slice(0, B), rot, write, length, mask, causal=False)

    def _decode_torch(self, tokens: Sequence[int], lengths: list[int]) -> torch.Tensor:
        """``decode`` on torch's attention: slices when all rows sit at one position, else a mask."""
        n = len(tokens)
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # (n, 1)
        lo, hi = min(lengths), max(lengths)
        mask = None
        if lo == hi:  # all rows at one position (always so for one row): slices, no mask
            rot = self.rot[lo:lo + 1][None, :, None]  # (1, 1, 1, hd/2)

            def write(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
                self.k_layers[i][:n, :, lo] = k[:, 0]
                self.v_layers[i][:n, :, lo] = v[:, 0]

        else:
            pos = torch.tensor(lengths, dtype=torch.long, device=self.device)
            rot = self.rot[pos][:, None, None]  # (n, 1, 1, hd/2)
            rows = torch.arange(n, device=self.device)

            def write(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
                self.k_layers[i][rows, :, pos] = k[:, 0]
                self.v_layers[i][rows, :, pos] = v[:, 0]

            mask = (torch.arange(hi + 1, device=self.device)[None] <= pos[:, None])[:, None, None]  # (n, 1, 1, L)
        return self._forward(idx, slice(0, n), rot, write, hi + 1, mask, causal=False)

    @torch.inference_mode()
    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src``'s cache into row ``dst`` (compaction after a row finishes); ``src`` becomes empty."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst], self.lengths[src] = n, 0
