"""The language model, top to bottom: a Llama-style decoder-only Transformer.

RMSNorm -> grouped-query attention with rotary embeddings (through ``scaled_dot_product_attention``) -> RMSNorm ->
SwiGLU MLP, repeated ``n_layer`` times, then a final RMSNorm and the output layer (optionally tied to the embedding).
Every weight maps one-to-one onto Hugging Face's ``LlamaForCausalLM`` (the name table: lm/interop/hf.py),
including the rotate-half rotary convention, so an exported model gives the same logits.

    cfg = ModelConfig.preset("micro", vocab_size=4096)
    model = GPT(cfg)
    logits, loss = model(idx, targets)            # training: idx, targets (B, T); targets == -1 are ignored
    cache = model.new_cache(batch_size=1, max_len=512)
    logits, _ = model(prompt_ids, cache=cache)    # generation: appends to the KV cache, returns last-token logits
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------------------ config

# One depth dial: width = 64 * depth, one head per 64 channels. Named sizes are depths.
PRESETS: dict[str, int] = {"nano": 2, "micro": 4, "tiny": 6, "small": 8, "gpt2-small": 12}


@dataclass
class ModelConfig:
    vocab_size: int = field(default=4096, metadata={"ge": 1, "help": "tokenizer vocabulary size (set from the "
                                                                     "tokenizer)"})
    n_layer: int = field(default=4, metadata={"ge": 1, "help": "number of Transformer blocks"})
    n_embd: int = field(default=256, metadata={"ge": 1, "help": "model width (channels)"})
    n_head: int = field(default=4, metadata={"ge": 1, "help": "query heads; n_embd must divide by it"})
    n_kv_head: int = field(default=4, metadata={"ge": 1, "help": "key/value heads (grouped-query attention); "
                                                                "divides n_head"})
    intermediate_size: int = field(default=0, metadata={"ge": 0, "help": "SwiGLU hidden size; 0 = about 8/3 * n_embd"})
    max_seq_len: int = field(default=256, metadata={"ge": 1, "help": "context length in tokens"})
    rope_theta: float = field(default=10000.0, metadata={"gt": 0, "help": "rotary embedding base"})
    norm_eps: float = field(default=1e-5, metadata={"gt": 0, "help": "RMSNorm epsilon"})
    tie_embeddings: bool = field(default=False, metadata={"help": "share the input embedding and output layer"})

    def __post_init__(self) -> None:
        if self.intermediate_size <= 0:  # 8/3 * d rounded up to a multiple of 64, as in Llama
            self.intermediate_size = 64 * math.ceil(8 * self.n_embd / 3 / 64)
        if self.n_embd % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"n_embd={self.n_embd}, n_head={self.n_head}, n_kv_head={self.n_kv_head}: "
                             "n_embd must divide by n_head and n_head by n_kv_head")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_depth(cls, depth: int, **overrides) -> ModelConfig:
        n_embd = 64 * depth
        n_head = max(1, n_embd // 64)
        base = dict(n_layer=depth, n_embd=n_embd, n_head=n_head, n_kv_head=n_head)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model size '{name}' (choose {', '.join(PRESETS)})")
        return cls.from_depth(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------ pieces

class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, as Llama does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (max_len, head_dim), frequencies repeated for the two halves (rotate-half convention)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd); cos/sin broadcastable to it. Rotates pairs (i, i + hd/2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of every layer for a batch of sequences, each row with its own length.

    Rows can be at different positions (dynamic batching): ``lengths[b]`` is how many tokens row b holds.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype) -> None:
        shape = (batch_size, max_len, cfg.n_kv_head, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_len = max_len

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def reset(self, rows: torch.Tensor | list[int] | None = None) -> None:
        if rows is None:
            self.lengths.zero_()
        else:
            self.lengths[torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)] = 0


# ------------------------------------------------------------------------------------------------------------ blocks

class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.n_kv_head != self.n_head
        if cache is None:  # training / full-sequence scoring: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True, enable_gqa=gqa)
        else:
            # write the new keys/values at each row's positions, then attend over the filled prefix
            rows = torch.arange(B, device=x.device)[:, None].expand(B, T)
            cache.k[layer].index_put_((rows, positions), k.transpose(1, 2).to(cache.k[layer].dtype))
            cache.v[layer].index_put_((rows, positions), v.to(cache.v[layer].dtype))
            end = int(positions.max()) + 1
            keys = cache.k[layer][:, :end].transpose(1, 2).to(q.dtype)  # (B, Hkv, end, hd)
            values = cache.v[layer][:, :end].transpose(1, 2).to(q.dtype)
            mask = torch.arange(end, device=x.device)[None, None, :] <= positions[:, :, None]  # (B, T, end)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0, positions=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, positions)
        return x + self.mlp(self.post_attention_layernorm(x))


# ------------------------------------------------------------------------------------------------------------ model

class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layer)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids. Without a cache: logits (B, T, V) and the mean loss over targets != -1.
        ``hidden=True``: the final normed hidden states (B, T, C) instead of logits (the trainer's chunked loss
        applies the output layer itself, lm/train/loss.py).

        With a cache: the tokens are appended after each row's cached ones; returns the logits of the last new
        token (B, V) and advances ``cache.lengths`` by T.
        """
        B, T = idx.shape
        if cache is None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={self.config.max_seq_len}")
            cos, sin, positions = self.rope_cos[:T], self.rope_sin[:T], None
        else:
            positions = cache.lengths[:, None] + torch.arange(T, device=idx.device)[None, :]  # (B, T)
            if int(positions.max()) >= min(cache.max_len, self.config.max_seq_len):
                raise ValueError("the KV cache is full: the sequence exceeds the context length")
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, T, hd)
        x = self.embed_tokens(idx)  # (B, T, C)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, cache, i, positions)
        x = self.norm(x)
        if hidden:
            return x, None
        if cache is not None:
            cache.lengths += T
            return self.lm_head(x[:, -1]).float(), None  # (B, V)
        logits = self.lm_head(x).float()  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, p.device, dtype or p.dtype)

    # ---------------------------------------------------------------------------------------------------- accounting

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6 per matmul weight, plus attention scores and values.

        Counted from the layer shapes: every Linear (including the output layer, tied or not) costs 6 * in * out,
        and attention 12 * n_layer * n_embd * T (QK^T and AV, forward and backward, full causal square as PaLM does).
        """
        cfg = self.config
        t = seq_len or cfg.max_seq_len
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul + 12 * cfg.n_layer * cfg.n_embd * t
