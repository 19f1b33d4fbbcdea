"""Training logs: metrics.jsonl upkeep on resume, the loss-curve PNG, and sampled completions at evaluation.

Helpers of scalelab/lm/train/loop.py (rank 0 calls the writers):

    truncate_metrics(run, "base", step)   # drop this stage's lines after the resumed step (no duplicates)
    plot_loss(run, "base")                 # <run>/loss_base.png from metrics.jsonl
    sample_completions(model, prompts, tokenizer_path, max_new_tokens, seed)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scalelab.common import atomic_write_text, read_jsonl
from scalelab.runs import RunDir


def truncate_metrics(run: RunDir, stage: str, step: int) -> int:
    """Keep other stages' lines and this stage's lines up to ``step``; returns how many lines were dropped."""
    path = run.metrics_jsonl
    if not path.is_file():
        return 0
    rows = read_jsonl(path)
    keep = [r for r in rows if r.get("stage") != stage or int(r.get("step", 0)) <= step]
    if len(keep) != len(rows):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(rows) - len(keep)


def plot_loss(run: RunDir, stage: str) -> Path | None:
    """Training loss (and validation loss / bits per byte) against step, as ``<run>/loss_<stage>.png``."""
    rows = [r for r in read_jsonl(run.metrics_jsonl) if r.get("stage") == stage]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    bpb = [(r["step"], r["val_bpb"]) for r in rows if r.get("val_bpb") is not None]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=1, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", ms=3, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{run.root.name}: {stage}")
    ax.grid(alpha=0.3)
    if bpb:
        ax2 = ax.twinx()
        ax2.plot(*zip(*bpb), "s--", ms=3, color="tab:red", label="val bits/byte")
        ax2.set_ylabel("bits per byte")
        ax2.legend(loc="upper center")
    ax.legend(loc="upper right")
    fig.tight_layout()
    out = run.root / f"loss_{stage}.png"
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def _fallback_generate(model, prompt_ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
                       seed: int | None):
    """Plain sampling without a KV cache (used only when scalelab.lm.inference.engine is not available)."""
    gen = torch.Generator().manual_seed(seed or 0)
    device = next(model.parameters()).device
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        ctx = torch.tensor([ids[-model.config.max_seq_len:]], device=device)
        logits = model(ctx)[0][0, -1].float().cpu() / max(temperature, 1e-5)
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits[logits < kth] = -float("inf")
        nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        ids.append(nxt)
        yield nxt


@torch.no_grad()
def sample_completions(model, prompts: list[str], tokenizer_path: Path | None, max_new_tokens: int,
                       seed: int, temperature: float = 0.8, top_k: int = 50, stop_ids: tuple[int, ...] = (5,),
                       ) -> list[dict[str, str]]:
    """A completion per prompt (<|bos|> + prompt), decoded with the run's tokenizer when it exists."""
    tok = None
    if tokenizer_path is not None and tokenizer_path.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_path))
    try:
        from scalelab.lm.inference.batching import generate
    except ImportError:
        generate = None
    out = []
    for i, prompt in enumerate(prompts):
        ids = [0] + (tok.encode(prompt).ids if tok is not None and prompt else [])
        kwargs = dict(temperature=temperature, top_k=top_k, seed=seed + i)
        if generate is not None:
            new = list(generate(model, ids, max_new_tokens, stop_ids=stop_ids, **kwargs))
        else:
            new = list(_fallback_generate(model, ids, max_new_tokens, **kwargs))
        text = tok.decode(new, skip_special_tokens=False) if tok is not None else " ".join(map(str, new))
        out.append({"prompt": prompt, "completion": text})
    if generate is not None:
        from scalelab.lm.inference.decoding import release_fused_weights

        release_fused_weights(model)  # training changes the weights before the next sample: free the copy now
    return out


def sampling_model(model: torch.nn.Module, is_main: bool, fsdp: bool, device: str) -> torch.nn.Module | None:
    """The model rank 0 samples from at an evaluation, None on other ranks. FSDP weights are DTensor shards the
    decoder cannot index, so every rank gathers the full weights (a collective) and rank 0 samples from a copy."""
    if not fsdp:
        return model if is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from scalelab.lm.model import GPT

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    copy = GPT(model.config)
    copy.load_state_dict(state, strict=False)  # a tied output layer comes with the embedding
    return copy.to(device).eval()


def log_eval(run: RunDir, stage: str, res: dict) -> None:
    """An evaluation's record: a metrics line, the printed validation loss and samples, the loss plot redrawn."""
    from scalelab.common import append_jsonl, print0

    append_jsonl(run.metrics_jsonl, res)
    bpb = f", val bpb {res['val_bpb']:.4f}" if res["val_bpb"] is not None else ""
    if res["val_loss"] is not None:
        print0(f"\nstep {res['step']}: val loss {res['val_loss']:.4f}{bpb}")
    for s in res.get("samples", []):
        print0(f"  sample {s.get('prompt', '')!r} -> {s.get('completion', s.get('error'))!r}")
    plot_loss(run, stage)
