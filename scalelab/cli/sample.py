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

from scalelab.cli import GenerationConfig
from scalelab.common import UsageError
from scalelab.config import parse_config


@dataclass
class SampleConfig(GenerationConfig):
    """Generate text from a checkpoint."""

    prompt: str = field(default="", metadata={"help": "text to continue; empty = start from <|bos|> alone"})
    temperature: float = GenerationConfig.default("temperature", 0.8)
    max_tokens: int = GenerationConfig.default("max_tokens", 200)
    num_samples: int = field(default=1, metadata={"ge": 1, "help": "how many samples, one after another"})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SampleConfig, argv, prog="scalelab sample")
    cfg.check()
    from scalelab.lm.chat import stop_token_ids
    from scalelab.lm.inference.batching import generate
    from scalelab.lm.inference.loading import load_for_inference
    from scalelab.lm.inference.textstream import TextStream
    from scalelab.lm.special_tokens import BOS, encode_text

    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    model, tok, step_dir = load_for_inference(cfg.run, cfg.stage or None, cfg.device, cfg.dtype)
    stop_ids = stop_token_ids(tok)
    prompt = [tok.token_to_id(BOS)] + encode_text(tok, cfg.prompt)
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
