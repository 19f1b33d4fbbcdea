"""GGUF export for llama.cpp and Ollama: architecture "llama", standard tensor names, gpt2-style BPE tokenizer metadata.

    scalelab export --run runs/demo --format gguf --gguf-dtype f16 --out exports/demo-f16.gguf
    llama-cli -m exports/demo-f16.gguf -p "Once upon a time" -n 64 --temp 0     # llama.cpp
    printf 'FROM ./demo-f16.gguf\\n' > Modelfile && ollama create demo -f Modelfile   # Ollama

Tensor names come from the one table in hf.py (``NAME_MAP``, third column). llama.cpp applies RoPE to
interleaved pairs (x0, x1), (x2, x3), ... while our model (like Hugging Face) rotates halves (x_i, x_{i+hd/2}); so, as
llama.cpp's ``convert_hf_to_gguf.py`` does, the rows of q_proj and k_proj are permuted per head (``permute_qk``):
row j of a head's first half goes to row 2j, row j of its second half to row 2j+1. ``unpermute_qk`` undoes it.

Tokenizer metadata: ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE), ``pre = "gpt-2"`` (llama.cpp's name for
the GPT-2 split regex, which our ByteLevel pre-tokenizer uses too), every token with its type (the special tokens are
CONTROL), the merges, bos ``<|bos|>``, eos and eot ``<|end|>``, pad ``<|pad|>``, ``add_bos_token = true`` (plain-text
prompts start with ``<|bos|>``, as in ``scalelab sample`` and the HF export) and the chat template.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from scalelab.common import UsageError, usual_mode
from scalelab.lm.interop.hf import ExportResult, export_state, load_for_export
from scalelab.lm.special_tokens import BOS, END, PAD, SPECIAL_TOKENS

DTYPES = ("f32", "f16")


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection (n_head * hd, in) from rotate-half to llama.cpp's interleaved RoPE."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of ``permute_qk``."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: torch.nn.Module, dtype: str = "f16") -> dict[str, np.ndarray]:
    """Our weights as GGUF-named numpy arrays: q/k permuted, 2-D weights in ``dtype``, norms in f32."""
    cfg = model.config
    out = {}
    for name, w in export_state(model, "gguf").items():
        w = w.float()
        if name.endswith("attn_q.weight"):
            w = permute_qk(w, cfg.n_head)
        elif name.endswith("attn_k.weight"):
            w = permute_qk(w, cfg.n_kv_head)
        arr = w.numpy()
        out[name] = arr.astype(np.float16) if dtype == "f16" and arr.ndim == 2 else arr.astype(np.float32)
    return out


def tokenizer_metadata(tokenizer_json: Path, vocab_size: int) -> dict:
    """tokens, token types and merges (gpt2-style BPE) read from a tokenizer.json, padded to the model's vocab."""
    import gguf

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise UsageError(f"{tokenizer_json}: GGUF export supports byte-level BPE tokenizers only "
                         f"(model type {model.get('type')!r})")
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    specials = set(SPECIAL_TOKENS)
    for added in data.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        if added.get("special"):
            specials.add(added["content"])
    if max(by_id) >= vocab_size:
        raise UsageError(f"{tokenizer_json}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:  # the model's vocabulary may be larger than the tokenizer's (padding rows)
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        else:
            tokens.append(tok)
            types.append(int(gguf.TokenType.CONTROL if tok in specials else gguf.TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def export_gguf(run: str | Path, out: str | Path, stage: str | None = None, dtype: str = "f16") -> ExportResult:
    """Write a run's latest checkpoint of ``stage`` (chat, else base) as one GGUF file, atomically."""
    import gguf

    from scalelab.lm.chat import CHAT_TEMPLATE

    if dtype not in DTYPES:
        raise UsageError(f"--gguf-dtype {dtype!r}: choose f32 or f16")
    run, out = Path(run), Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; --out must name a .gguf file")
    if out.is_file() and out.read_bytes()[:4] != b"GGUF":
        raise UsageError(f"{out}: exists and is not a GGUF file; nothing was overwritten (choose another --out)")
    model, meta, step_dir, tokenizer_json = load_for_export(run, stage)
    cfg = model.config
    vocab = tokenizer_metadata(tokenizer_json, cfg.vocab_size)
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(run.resolve().name)
        w.add_description(f"scalelab {meta.get('stage', step_dir.parent.name)} checkpoint, step {meta.get('step')}")
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_kv_head)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")  # llama.cpp spells it with a dash
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        w.add_bos_token_id(ids[BOS])
        w.add_eos_token_id(ids[END])
        w.add_eot_token_id(ids[END])
        w.add_pad_token_id(ids[PAD])
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)
        for name, arr in gguf_tensors(model, dtype).items():
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        usual_mode(Path(tmp))  # mkstemp makes it owner-only: llama.cpp or an Ollama service must read it
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportResult(out=out, step_dir=step_dir, files=[out.name])
