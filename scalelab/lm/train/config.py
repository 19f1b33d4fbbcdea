"""The training configuration (a dataclass: flags and YAML derive from it) and its helpers.

    from scalelab.lm.train.config import TrainConfig
    cfg = TrainConfig(run="runs/demo", model="micro", max_steps=500)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scalelab.common import UsageError
from scalelab.config import check_ranges
from scalelab.lm.model import PRESETS, ModelConfig
from scalelab.lm.train.optim import SCHEDULE_CHOICES


@dataclass
class TrainConfig:
    """Pretrain (or fine-tune) a Llama-style Transformer; rerun the same command to resume."""

    # ---- run
    run: str = field(default="", metadata={"help": "run directory (data/, tokenizer/, checkpoints, metrics)"})
    stage: str = field(default="base", metadata={"help": "checkpoint stage name: base (pretrain) or chat (SFT)"})
    init_from: str = field(default="", metadata={
        "help": "start from the weights of this stage of the run (or a checkpoint path), fresh optimizer; '' = none"})
    resume_on_new_data: bool = field(default=False, metadata={
        "help": "resume even when the training data differ from the checkpoint's (else refused, naming the change)"})
    resume: bool = field(default=False, metadata={
        "help": "require an existing checkpoint to resume (a run with one resumes anyway)"})
    # ---- model
    model: str = field(default="micro", metadata={"help": "model size preset", "choices": list(PRESETS)})
    depth: int = field(default=0, metadata={"ge": 0, "le": 256, "help": "layers, width 64*depth (0 = from --model)"})
    n_layer: int = field(default=0, metadata={"ge": 0, "le": 1024,
        "help": "override the number of layers (0 = preset)"})
    n_embd: int = field(default=0, metadata={"ge": 0, "le": 65536, "help": "override the width (0 = preset)"})
    n_head: int = field(default=0, metadata={"ge": 0, "le": 1024,
        "help": "override the query heads (0 = preset: width/64)"})
    n_kv_head: int = field(default=0, metadata={"ge": 0, "le": 1024, "help": "key/value heads (0 = n_head)"})
    tie_embeddings: bool = field(default=False, metadata={"help": "share input embedding and output layer"})
    seq_len: int = field(default=256, metadata={"ge": 1, "le": 1048576, "help": "training context length in tokens"})
    # ---- batch
    batch_size: int = field(default=16, metadata={"ge": 1, "help": "micro-batch per process, in sequences"})
    total_batch_tokens: int = field(default=0, metadata={"ge": 0,
        "help": "tokens per optimizer step over all processes; gradient accumulation fills it "
                "(0 = batch-size * seq-len * processes, no accumulation)"})
    # ---- optimization
    lr: float = field(default=3e-3, metadata={"gt": 0, "le": 10, "help": "peak learning rate"})
    schedule: str = field(default="auto", metadata={
        "help": "LR schedule after warmup (auto = wsd under --time-budget, else cosine)",
        "choices": list(SCHEDULE_CHOICES)})
    warmup_steps: int = field(default=50, metadata={"ge": 0, "help": "linear warmup steps (0 = none)"})
    min_lr_ratio: float = field(default=0.1, metadata={"ge": 0, "le": 1, "help": "final LR as a fraction of the peak"})
    decay_frac: float = field(default=0.2, metadata={"gt": 0, "le": 1,
        "help": "wsd: fraction of steps in the final linear decay"})
    weight_decay: float = field(default=0.1, metadata={"ge": 0, "help": "AdamW weight decay on matrices"})
    beta1: float = field(default=0.9, metadata={"ge": 0, "lt": 1, "help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"ge": 0, "lt": 1, "help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"ge": 0, "help": "clip the gradient norm to this (0 = off)"})
    max_steps: int = field(default=1000, metadata={"ge": 1, "help": "optimizer steps (the schedule's length)"})
    time_budget: float = field(default=0.0, metadata={"ge": 0,
        "help": "minutes of wall time; the planned steps are re-fitted to the measured speed at each log step until "
                "the LR decay starts, then frozen so the decay completes (0 = no limit; max-steps stays a cap)"})
    # ---- evaluation and logging
    eval_every: int = field(default=100, metadata={"ge": 0,
        "help": "evaluate every N steps and at the end (0 = end only)"})
    eval_tokens: int = field(default=131072, metadata={"ge": 0, "help": "validation tokens per evaluation (0 = all)"})
    log_every: int = field(default=10, metadata={"ge": 1, "help": "write a metrics line every N steps"})
    sample_prompts: list[str] = field(default_factory=lambda: ["", "def "], metadata={
        "help": "prompts sampled at each evaluation (after <|bos|>)"})
    sample_max_tokens: int = field(default=48, metadata={"ge": 0,
        "help": "most new tokens per sampled completion, as --max-tokens elsewhere (0 = no samples)"})
    save_every: int = field(default=0, metadata={"ge": 0,
        "help": "checkpoint every N steps (0 = only at the end/on stop)"})
    keep_last: int = field(default=2, metadata={"ge": 0, "help": "keep this many newest checkpoints (0 = all)"})
    # ---- system
    device: str = field(default="auto", metadata={"help": "auto (CUDA, then MPS, then CPU), cpu, cuda, mps"})
    dtype: str = field(default="auto", metadata={"help": "autocast dtype: auto, bf16, fp16 or fp32 (no autocast)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model (a one-time warm-up on the first step)"})
    parallel: str = field(default="ddp", metadata={"help": "multi-process mode under torchrun",
                                                   "choices": ["ddp", "fsdp"]})
    seed: int = field(default=1337, metadata={"ge": 0, "help": "seed of the initial weights and the data order"})
    num_threads: int = field(default=0, metadata={"ge": 0,
        "help": "CPU threads per process (0 = $OMP_NUM_THREADS, else cores / local processes)"})
    peak_tflops: float = field(default=0.0, metadata={"ge": 0,
        "help": "device peak TFLOP/s for MFU (0 = table: cpu fp32 0.44, cpu bf16 3.5, H100 989, A100 312)"})
    preflight_steps: int = field(default=3, metadata={"ge": 0,
        "help": "dry steps timed by preflight (0 = skip timing)"})
    preflight_only: bool = field(default=False, metadata={"help": "stop after the preflight report"})




def batch_geometry(batch_size: int, seq_len: int, world: int, total_batch_tokens: int = 0) -> tuple[int, int]:
    """(gradient-accumulation steps, tokens per optimizer step): the one rule for pretraining and SFT alike."""
    per_step = batch_size * seq_len * world
    total = total_batch_tokens or per_step
    if total % per_step:
        raise UsageError(f"--total-batch-tokens {total} must be a multiple of batch-size * seq-len * processes "
                         f"= {batch_size} * {seq_len} * {world} = {per_step}")
    return total // per_step, total


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    depth = cfg.depth or PRESETS[cfg.model]
    over: dict[str, Any] = {"vocab_size": vocab_size, "max_seq_len": cfg.seq_len, "tie_embeddings": cfg.tie_embeddings}
    for name in ("n_layer", "n_embd", "n_head", "n_kv_head"):
        if getattr(cfg, name):
            over[name] = getattr(cfg, name)
    if cfg.n_embd and not cfg.n_head:
        over["n_head"] = max(1, cfg.n_embd // 64)
    over.setdefault("n_kv_head", over.get("n_head", max(1, 64 * depth // 64)))
    try:
        return ModelConfig.from_depth(depth, **over)
    except ValueError as e:
        raise UsageError(f"model flags: {e}") from None


def validate(cfg: TrainConfig) -> None:
    """What the fields' ranges cannot say alone (a library call skips the command line's checks, so repeat them)."""
    if not cfg.run:
        raise UsageError("--run is required (the run directory holding data/ and tokenizer/)")
    check_ranges(cfg)
