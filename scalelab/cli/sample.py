"""`scalelab sample`: generate text from a checkpoint, streamed to the terminal as it is generated.

    scalelab sample --run runs/demo --prompt "Once upon a time" --max-tokens 200 --temperature 0.8 --top-k 50
    scalelab sample --run runs/demo --stage chat --num-samples 3 --seed 1      # empty prompt: from <|bos|>

The prompt follows ``<|bos|>`` as every training document does; a sample ends at ``--max-tokens``, at the context
length, or when the model emits a special token (the end of a document or of a chat turn).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from scalelab.cli import check_generation_flags
from scalelab.common import UsageError
from scalelab.config import parse_config
from scalelab.lm.inference.loading import DTYPE_HELP


@dataclass
class SampleConfig:
    """Generate text from a checkpoint."""

    run: str = field(default="", metadata={"help": "run folder (or a stage or step folder inside one)"})
    stage: str = field(default="", metadata={"help": "checkpoint stage: base or chat; empty = chat if present, "
                                                     "else base"})
    prompt: str = field(default="", metadata={"help": "text to continue; empty = start from <|bos|> alone"})
    max_tokens: int = field(default=200, metadata={"ge": 1,
        "help": "new tokens per sample (also capped by the context)"})
    temperature: float = field(default=0.8, metadata={"ge": 0, "le": 100,
        "help": "softmax temperature; 0 = greedy (deterministic)"})
    top_k: int = field(default=50, metadata={"ge": 0, "help": "sample among the k likeliest tokens; 0 = off"})
    top_p: float = field(default=1.0, metadata={"gt": 0, "le": 1,
        "help": "nucleus: smallest set with this probability mass; 1 = off"})
    seed: int = field(default=-1, metadata={"ge": -1, "help": "random seed (sample i uses seed + i); -1 = random"})
    num_samples: int = field(default=1, metadata={"ge": 1, "help": "how many samples, one after another"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})

    def check(self) -> None:
        check_generation_flags(self, ("base", "chat"))
        if self.num_samples < 1:
            raise UsageError(f"--num-samples {self.num_samples}: must be at least 1")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SampleConfig, argv, prog="scalelab sample")
    cfg.check()
    from scalelab.lm.chat import stop_token_ids
    from scalelab.lm.inference.engine import TextStream, generate
    from scalelab.lm.inference.loading import load_for_inference
    from scalelab.lm.special_tokens import BOS

    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    model, tok, step_dir = load_for_inference(cfg.run, cfg.stage or None, cfg.device, cfg.dtype)
    stop_ids = stop_token_ids(tok)
    prompt = [tok.token_to_id(BOS)] + tok.encode(cfg.prompt, add_special_tokens=False).ids
    context = model.config.max_seq_len
    if len(prompt) >= context:
        raise UsageError(f"--prompt is {len(prompt)} tokens (with <|bos|>) but the context length of {step_dir} is "
                         f"{context} tokens: shorten it")
    print(f"[{step_dir}, {model.num_params() / 1e6:.1f}M parameters]", file=sys.stderr)
    for i in range(cfg.num_samples):
        if cfg.num_samples > 1:
            print(f"---------- sample {i + 1}/{cfg.num_samples} ----------", flush=True)
        seed = None if cfg.seed < 0 else cfg.seed + i
        text = TextStream(tok)
        sys.stdout.write(cfg.prompt)
        sys.stdout.flush()
        n, start, reason = 0, time.perf_counter(), "length"
        for token in generate(model, prompt, cfg.max_tokens, cfg.temperature, cfg.top_k, cfg.top_p, seed, stop_ids):
            n += 1
            if token in stop_ids:
                reason = f"stop: {tok.id_to_token(token)}"
                break
            sys.stdout.write(text.push(token))
            sys.stdout.flush()
        sys.stdout.write(text.flush() + "\n")
        sys.stdout.flush()
        elapsed = time.perf_counter() - start
        print(f"[{n} tokens, {n / max(elapsed, 1e-9):.0f} tokens/s, {reason}]", file=sys.stderr, flush=True)
    return 0
