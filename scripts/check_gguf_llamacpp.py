"""Check a GGUF export against llama.cpp itself (through llama-cpp-python): tokens, logits and greedy text.

    .venv/bin/pip install llama-cpp-python          # compiles llama.cpp (10+ minutes on 2 cores); optional
    .venv/bin/python scripts/check_gguf_llamacpp.py --run runs/demo [--stage base] [--max-tokens 48]

For each prompt it feeds llama.cpp and our model the same ids (``<|bos|>`` + the text's tokens, after checking that
llama.cpp's own tokenizer gives exactly those ids), then compares the logits of every position (max abs difference)
and the greedy continuations (argmax at every step, both sides). f32 must match token for token; f16 is reported
(rounding the weights to f16 may flip a near-tie). Writes benchmarks/results/gguf_llamacpp.json; exit 1 on mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["ROMEO:\n", "The king", "Once upon a time", "What light through yonder window breaks?"]


def llama_cpp_greedy(llm, ids: list[int], n: int, eos: int) -> tuple[list[int], np.ndarray]:
    """Greedy ids from llama.cpp after ``ids`` (argmax each step), and the prompt's logits (T, V)."""
    llm.reset()
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    out: list[int] = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        if nxt == eos or llm.n_tokens >= llm.n_ctx():
            break
        llm.eval([nxt])
    return out, prompt_logits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder with a checkpoint and a tokenizer")
    parser.add_argument("--stage", default=None, help="chat or base (default: chat if present, else base)")
    parser.add_argument("--max-tokens", type=int, default=48, help="greedy tokens per prompt")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "gguf_llamacpp.json"),
                        help="where to write the results")
    args = parser.parse_args(argv)
    try:
        from llama_cpp import Llama
        from llama_cpp import __version__ as llama_cpp_version
    except ImportError:
        print("llama-cpp-python is not installed (pip install llama-cpp-python); nothing to check", file=sys.stderr)
        return 2

    from scalelab.lm.checkpoint import load_model
    from scalelab.lm.data.tokenizer import load_tokenizer
    from scalelab.lm.inference.batching import generate
    from scalelab.lm.interop.gguf import export_gguf

    model, meta, step_dir = load_model(args.run, args.stage)
    tok = load_tokenizer(args.run)
    n_ctx = model.config.max_seq_len
    results: dict = {"run": str(args.run), "checkpoint": str(step_dir), "llama_cpp_python": llama_cpp_version,
                     "formats": {}}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("f32", "f16"):
            path = export_gguf(args.run, Path(tmp) / f"model-{dtype}.gguf", stage=args.stage, dtype=dtype).out
            llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=2, seed=0,
                        verbose=False)
            rows = []
            for prompt in PROMPTS:
                ids = [0] + tok.encode(prompt).ids
                theirs_tok = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
                budget = min(args.max_tokens, n_ctx - len(ids))
                t = time.perf_counter()
                theirs, their_logits = llama_cpp_greedy(llm, ids, budget, eos=5)
                t_cpp = time.perf_counter() - t
                ours = list(generate(model, ids, budget, temperature=0, stop_ids=[5]))
                with torch.no_grad():
                    our_logits = model(torch.tensor([ids]))[0][0].numpy()
                same = ours == theirs
                first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
                rows.append({"prompt": prompt, "tokenizer_equal": list(theirs_tok) == ids,
                             "max_abs_logit_diff": float(np.abs(our_logits - their_logits).max()),
                             "greedy_equal": same, "first_difference_at": first_diff,
                             "ours": tok.decode(ours), "llama_cpp": tok.decode(theirs),
                             "llama_cpp_tokens_per_s": len(theirs) / t_cpp if t_cpp else None})
                if dtype == "f32" and not (same and rows[-1]["tokenizer_equal"]):
                    ok = False
            del llm
            results["formats"][dtype] = rows
            for r in rows:
                print(f"[{dtype}] {r['prompt']!r}: tokenizer {'==' if r['tokenizer_equal'] else '!='}, "
                      f"max |logit diff| {r['max_abs_logit_diff']:.2e}, greedy {'==' if r['greedy_equal'] else '!='}"
                      + ("" if r["greedy_equal"] else f" (first difference at token {r['first_difference_at']})"))
                print(f"    ours:      {r['ours']!r}\n    llama.cpp: {r['llama_cpp']!r}")
    results["ok"] = ok
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'OK' if ok else 'MISMATCH'}: f32 GGUF greedy output {'equals' if ok else 'differs from'} ours; "
          f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
