"""IsoFLOP sweeps through the one training loop: shared data, one run folder per point, resumable, preflighted.

    <out>/
      tokenizer/, data/          one tokenizer and one set of token shards shared by every point
      synthetic.jsonl (+ .truth.json)   the synthetic source and its exact entropy (source: synthetic)
      points/<name>/             a run folder per point (data/ and tokenizer/ link to the shared ones): checkpoints,
                                 metrics.jsonl, and result.json once the point has finished its LR decay
      scaling.json, *.png, report.md     the fits and plots (scalelab/lm/scaling/analysis.py)

For each budget C and model size (``LxW``: layers x width), the point trains D = C / flops_per_token tokens, where
flops_per_token = 6 * (matmul parameters, the output layer included) + the attention term (model.flops_per_token),
i.e. C = 6ND with N the parameters that cost compute, for max_steps = D / tokens_per_step steps, one cosine schedule
to ``min_lr_ratio`` at its last step. A finished point (its result.json) is never re-run; a killed point resumes
from its last checkpoint through the loop's own resume; an unreadable result.json is named and its point re-run.
Points are scored on validation windows whose first ``eval_context`` targets are masked (each scored token sees at
least that much context), so a window boundary does not charge the model for text it could not see.

    from scalelab.lm.scaling.sweep import ScalingConfig, run_sweep
    points = run_sweep(ScalingConfig(out="runs/scaling", budgets=[1e12, 3e12, 1e13]))
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scalelab.common import UsageError, print0, progress, read_json, write_json
from scalelab.config import config_from_dict
from scalelab.lm.data.loader import TokenSource, load_meta, token_source
from scalelab.lm.data.tokenizer import MIN_VOCAB_SIZE
from scalelab.lm.model import ModelConfig
from scalelab.lm.scaling.synthetic import SyntheticSpec, truth_path, write_corpus
from scalelab.runs import RunDir

RESULT_FILE = "result.json"
RESULT_FIELDS = ("name", "budget", "n_layer", "n_embd", "params", "params_non_embedding", "flops_per_token",
                 "tokens", "steps", "val_loss", "val_bpb")


@dataclass
class ScalingConfig:
    """IsoFLOP sweep of a Llama-style Transformer, fits of L(N, D), and an n-gram baseline; rerun to resume."""

    out: str = field(default="", metadata={"help": "sweep folder (shared data, points/, scaling.json, plots)"})
    # ---- data
    source: str = field(default="corpus", metadata={
        "help": "corpus: the --corpus specs; synthetic: a Markov chain over made-up words with exact entropy",
        "choices": ["corpus", "synthetic"]})
    corpus: list[str] = field(default_factory=lambda: ["stdlib"], metadata={"help": "corpus specs (as tokenizer)"})
    vocab_size: int = field(default=2048, metadata={"ge": MIN_VOCAB_SIZE, "le": 2**32 - 1,
        "help": "BPE vocabulary of the shared tokenizer"})
    val_fraction: float = field(default=0.03, metadata={"gt": 0, "lt": 1,
        "help": "fraction of documents held out for validation"})
    synthetic: dict[str, Any] = field(default_factory=dict, metadata={
        "cli": False, "help": "SyntheticSpec fields for source: synthetic (words, successors, documents, ...)"})
    # ---- grid
    budgets: list[float] = field(default_factory=lambda: [1e12, 3e12, 1e13], metadata={"gt": 0,
        "help": "compute budgets C in training FLOPs (at least 3 for the IsoFLOP laws)"})
    sizes: list[str] = field(default_factory=lambda: ["1x32", "1x64", "2x64", "2x96", "3x128"], metadata={
        "help": "model sizes as LAYERSxWIDTH (head width 64, or the width when smaller)"})
    min_sizes: int = field(default=4, metadata={"ge": 1, "help": "refuse a budget left with fewer sizes than this"})
    min_steps: int = field(default=40, metadata={"ge": 1,
        "help": "a point with fewer optimizer steps is left out (noted)"})
    max_tokens_per_param: float = field(default=0.0, metadata={"ge": 0,
        "help": "leave out points with more tokens per parameter than this (0 = no limit)"})
    curve_size: str = field(default="", metadata={
        "help": "size for the n-gram vs Transformer learning curve ('' = the first size every budget ran)"})
    curve_tokens: list[int] = field(default_factory=list, metadata={"ge": 1,
        "help": "extra training-token counts at curve-size for that curve (small D: where n-grams do well)"})
    # ---- training (one schedule family for every point)
    seq_len: int = field(default=128, metadata={"ge": 1, "le": 1048576, "help": "context length in tokens"})
    batch_size: int = field(default=16, metadata={"ge": 1, "help": "sequences per optimizer step"})
    lr: float = field(default=3e-3, metadata={"gt": 0, "le": 10, "help": "peak learning rate (every point)"})
    warmup_frac: float = field(default=0.05, metadata={"ge": 0, "le": 1,
        "help": "warmup steps as a fraction of each point's steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"ge": 0, "le": 1,
        "help": "cosine decays to this fraction of the peak"})
    eval_tokens: int = field(default=65536, metadata={"ge": 1, "help": "validation tokens scored per point"})
    eval_context: int = field(default=32, metadata={"ge": 0,
        "help": "tokens of context before the first scored target"})
    dtype: str = field(default="auto", metadata={"help": "autocast dtype: auto, bf16, fp16, fp32"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    compile: bool = field(default=False, metadata={"help": "torch.compile each point's model"})
    save_every: int = field(default=200, metadata={"ge": 0,
        "help": "checkpoint every N steps (a killed point resumes; 0 = only at the end)"})
    seed: int = field(default=1337, metadata={"ge": 0, "help": "seed of weights and data order (every point)"})
    time_budget: float = field(default=0.0, metadata={"ge": 0,
        "help": "minutes the unfinished points may take, estimated by preflight from measured speed; refused if "
                "over (0 = no limit)"})
    # ---- analysis
    fit_params: str = field(default="non_embedding", metadata={
        "help": "N in the fits: non_embedding (the parameters that cost FLOPs) or total", "choices":
        ["non_embedding", "total"]})
    fit_min_steps: int = field(default=0, metadata={"ge": 0,
        "help": "leave points trained for fewer optimizer steps out of the L(N, D) fit (at a fixed batch a small "
                "budget gives few steps, and a run that short is still learning the basics, off the power law); "
                "0 = fit every point"})
    n_boot: int = field(default=200, metadata={"ge": 0, "help": "bootstrap resamples for the intervals (0 = none)"})
    e_max_rel_width: float = field(default=0.1, metadata={"gt": 0,
        "help": "E counts as pinned down when its interval is at most this fraction of E wide"})
    ngram_orders: list[int] = field(default_factory=lambda: [2, 3, 4], metadata={"ge": 1, "help": "Kneser-Ney orders"})
    fit_only: bool = field(default=False, metadata={"help": "train nothing: refit and replot the finished points"})


# ----------------------------------------------------------------------------------------------- sizes

def parse_size(spec: str) -> tuple[int, int]:
    try:
        layers, width = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise UsageError(f"size '{spec}': expected LAYERSxWIDTH, e.g. 2x64") from None
    if layers < 1 or width < 8 or width % 8:
        raise UsageError(f"size '{spec}': need at least 1 layer and a width that is a multiple of 8")
    return layers, width


def size_config(spec: str, vocab_size: int, seq_len: int) -> ModelConfig:
    layers, width = parse_size(spec)
    heads = max(1, width // 64)
    return ModelConfig(vocab_size=vocab_size, n_layer=layers, n_embd=width, n_head=heads, n_kv_head=heads,
                       max_seq_len=seq_len)


def size_stats(mcfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Parameter counts and training FLOPs per token from the shapes (equal to GPT.num_params/flops_per_token,
    without building the model)."""
    C, V, L, hidden = mcfg.n_embd, mcfg.vocab_size, mcfg.n_layer, mcfg.intermediate_size
    kv = mcfg.n_kv_head * mcfg.head_dim
    per_layer_mat = 2 * C * C + 2 * C * kv + 3 * C * hidden
    matmul = L * per_layer_mat + V * C  # the output layer is a matmul, tied or not
    total = V * C + L * (per_layer_mat + 2 * C) + C + (0 if mcfg.tie_embeddings else V * C)
    return {"params": total, "params_non_embedding": total - V * C,
            "flops_per_token": 6 * matmul + 12 * L * C * seq_len}


def budget_name(C: float) -> str:
    mant, exp = f"{C:.2g}".split("e") if "e" in f"{C:.2g}" else (f"{C:.2g}", "0")
    return f"{mant}e{int(exp)}"


def plan_points(cfg: ScalingConfig, vocab_size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Every point of the sweep (IsoFLOP points, then the extra learning-curve points) and notes on those left out."""
    if len(cfg.budgets) < 1 or not cfg.sizes:
        raise UsageError("--budgets and --sizes must each name at least one value")
    tokens_per_step = cfg.batch_size * cfg.seq_len
    points, notes = [], []
    key = "params_non_embedding" if cfg.fit_params == "non_embedding" else "params"
    for C in sorted(cfg.budgets):
        kept = 0
        for spec in cfg.sizes:
            st = size_stats(size_config(spec, vocab_size, cfg.seq_len), cfg.seq_len)
            steps = round(C / st["flops_per_token"] / tokens_per_step)
            name = f"C{budget_name(C)}_{spec}"
            if steps < cfg.min_steps:
                notes.append(f"{name}: {steps} steps < min_steps {cfg.min_steps}, left out")
                continue
            tokens = steps * tokens_per_step
            if cfg.max_tokens_per_param and tokens / st[key] > cfg.max_tokens_per_param:
                notes.append(f"{name}: {tokens / st[key]:.0f} tokens per parameter > {cfg.max_tokens_per_param:g}, "
                             "left out")
                continue
            kept += 1
            points.append({"name": name, "kind": "isoflop", "budget": float(C), "size": spec,
                           **dict(zip(("n_layer", "n_embd"), parse_size(spec))), **st, "tokens": tokens,
                           "steps": steps})
        if kept < cfg.min_sizes:
            raise UsageError(f"budget {C:g}: only {kept} model size(s) left (at least {cfg.min_sizes} needed; "
                             f"{'; '.join(notes) or 'see --sizes'}): raise the budget or add smaller sizes")
    curve = cfg.curve_size or _default_curve_size(points, cfg)
    if cfg.curve_tokens:
        if curve not in cfg.sizes:
            raise UsageError(f"--curve-size {curve} is not one of --sizes ({', '.join(cfg.sizes)})")
        st = size_stats(size_config(curve, vocab_size, cfg.seq_len), cfg.seq_len)
        for D in sorted(set(cfg.curve_tokens)):
            steps = max(1, round(D / tokens_per_step))
            points.append({"name": f"curve_D{steps * tokens_per_step}_{curve}", "kind": "curve",
                           "budget": float(steps * tokens_per_step * st["flops_per_token"]), "size": curve,
                           **dict(zip(("n_layer", "n_embd"), parse_size(curve))), **st,
                           "tokens": steps * tokens_per_step, "steps": steps})
    return points, notes


def _default_curve_size(points: list[dict[str, Any]], cfg: ScalingConfig) -> str:
    budgets = {p["budget"] for p in points}
    for spec in cfg.sizes:
        if {p["budget"] for p in points if p["size"] == spec} == budgets:
            return spec
    return cfg.sizes[0]


# ----------------------------------------------------------------------------------------------- data

def prepare_data(cfg: ScalingConfig) -> dict[str, Any]:
    """The shared tokenizer + shards (built once; a changed data setting in the same folder is refused)."""
    from scalelab.lm.data.shards import TokenizerConfig, prepare

    out = Path(cfg.out)
    spec = {"source": cfg.source, "corpus": cfg.corpus, "vocab_size": cfg.vocab_size,
            "val_fraction": cfg.val_fraction, "synthetic": cfg.synthetic if cfg.source == "synthetic" else None}
    spec_file = out / "data_spec.json"
    run = RunDir(out)
    if spec_file.is_file() and run.data_meta.is_file():
        saved = read_json(spec_file)
        if saved != spec:
            diff = ", ".join(k for k in spec if saved.get(k) != spec[k])
            raise UsageError(f"{spec_file}: {out} was prepared with other data settings ({diff}); use another --out")
        return spec
    corpus = list(cfg.corpus)
    if cfg.source == "synthetic":
        syn = config_from_dict(SyntheticSpec, cfg.synthetic, where="synthetic")
        path = out / "synthetic.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        truth = write_corpus(syn, path)
        print0(f"synthetic source: {syn.documents} documents x {syn.doc_words} words; exact entropy "
               f"{truth['bits_per_byte']:.5f} bits per byte")
        corpus = [f"{path}#text"]
    prepare(TokenizerConfig(run=str(out), corpus=corpus, vocab_size=cfg.vocab_size, val_fraction=cfg.val_fraction,
                            overwrite=True))
    write_json(spec_file, spec)
    return spec


def truth(cfg: ScalingConfig) -> dict[str, Any] | None:
    path = truth_path(Path(cfg.out) / "synthetic.jsonl")
    return read_json(path) if cfg.source == "synthetic" and path.is_file() else None


# ----------------------------------------------------------------------------------------------- evaluation source

class ContextSource:
    """The run's token source, with validation windows that overlap by ``context`` tokens whose targets are masked,
    so every scored target sees at least ``context`` tokens before it."""

    def __init__(self, base: TokenSource, context: int) -> None:
        if not 0 <= context < base.T:
            raise UsageError(f"--eval-context {context} must be in [0, seq_len {base.T})")
        self.base, self.context = base, context

    def next_batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.next_batch(step, micro_step)

    def state_dict(self) -> dict[str, Any]:
        return {**self.base.state_dict(), "eval_context": self.context}

    def val_span(self) -> int:
        """How many val tokens the windows cover (the n-gram baseline scores the same stretch)."""
        val, T, stride = self.base.val, self.base.T, self.base.T - self.context
        if val is None or len(val) < T + 1:
            return 0
        count = (len(val) - 1 - T) // stride + 1
        if self.base.eval_tokens > 0:
            count = min(count, max(1, -(-self.base.eval_tokens // stride)))
        return (count - 1) * stride + T + 1

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        val, T, B = self.base.val, self.base.T, self.base.eval_B
        stride = T - self.context
        span = self.val_span()
        if span == 0:
            return
        starts = list(range(0, span - T, stride))
        for i in range(0, len(starts), B):
            rows = torch.stack([torch.from_numpy(val[s:s + T + 1].astype("int64")) for s in starts[i:i + B]])
            x, y = rows[:, :-1], rows[:, 1:].clone()
            if self.context:
                y[:, :self.context] = -1
            yield x, y


# ----------------------------------------------------------------------------------------------- points

def point_dir(cfg: ScalingConfig, name: str) -> Path:
    return Path(cfg.out) / "points" / name


def train_config(cfg: ScalingConfig, p: dict[str, Any], **over: Any):
    from scalelab.lm.train.config import TrainConfig

    heads = max(1, p["n_embd"] // 64)
    base = dict(run=str(point_dir(cfg, p["name"])), n_layer=p["n_layer"], n_embd=p["n_embd"], n_head=heads,
                n_kv_head=heads, depth=p["n_layer"], seq_len=cfg.seq_len, batch_size=cfg.batch_size, lr=cfg.lr,
                schedule="cosine", warmup_steps=max(1, round(cfg.warmup_frac * p["steps"])),
                min_lr_ratio=cfg.min_lr_ratio, max_steps=p["steps"], eval_every=0, eval_tokens=cfg.eval_tokens,
                log_every=max(1, min(50, p["steps"] // 20)), sample_max_tokens=0, save_every=cfg.save_every,
                keep_last=1, device=cfg.device, dtype=cfg.dtype, compile=cfg.compile, seed=cfg.seed,
                preflight_steps=0)
    base.update(over)
    return TrainConfig(**base)


def _link_shared(cfg: ScalingConfig, folder: Path) -> None:
    """A point's data/ and tokenizer/ are links to the sweep's, so every point reads the same shards."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("data", "tokenizer"):
        link = folder / name
        if not link.exists():
            link.unlink(missing_ok=True)  # a dangling link
            os.symlink(os.path.relpath(Path(cfg.out) / name, folder), link)


def context_source(cfg: ScalingConfig, p: dict[str, Any]) -> ContextSource:
    run = RunDir(point_dir(cfg, p["name"]))
    base = token_source(run, cfg.seq_len, cfg.batch_size, 1, 0, 1, cfg.seed, cfg.eval_tokens, load_meta(run))
    return ContextSource(base, cfg.eval_context)


def read_result(cfg: ScalingConfig, p: dict[str, Any]) -> dict[str, Any] | None:
    """The point's result, or None when it has not finished; a result that is unreadable or belongs to another
    point is named, moved aside and None returned (the point is re-run)."""
    path = point_dir(cfg, p["name"]) / RESULT_FILE
    if not path.is_file():
        return None
    why = None
    try:
        res = read_json(path)
        missing = [k for k in RESULT_FIELDS if not isinstance(res, dict) or k not in res]
        if missing:
            why = f"missing field(s) {', '.join(missing)}"
        elif any(res[k] != p[k] for k in ("budget", "n_layer", "n_embd", "tokens", "steps")):
            why = "it describes another point (budget, size or steps differ)"
        elif not all(isinstance(res[k], int | float) and math.isfinite(res[k]) for k in ("val_loss", "val_bpb")):
            why = "its losses are not finite numbers"
    except UsageError as e:
        why = str(e).split(": ", 1)[-1]
    if why is None:
        return res
    print0(f"{path}: corrupt ({why}); re-running point {p['name']}")
    os.replace(path, path.with_name(RESULT_FILE + ".corrupt"))
    return None


def run_point(cfg: ScalingConfig, p: dict[str, Any]) -> dict[str, Any]:
    """Train one point to the end of its schedule (resuming a checkpoint if there is one) and write result.json."""
    from scalelab.lm.train.loop import train

    folder = point_dir(cfg, p["name"])
    _link_shared(cfg, folder)
    summary = train(train_config(cfg, p), source=context_source(cfg, p))
    if summary.get("stopped"):
        raise KeyboardInterrupt
    if summary.get("val_bpb") is None or summary["step"] < p["steps"]:
        raise UsageError(f"{folder}: point ended at step {summary['step']} of {p['steps']} without a validation score")
    res = {**p, "val_loss": summary["val_loss"], "val_bpb": summary["val_bpb"], "elapsed_s": summary["elapsed_s"],
           "tokens_per_s": summary.get("tokens_per_s"), "final_train_loss": summary.get("loss")}
    write_json(folder / RESULT_FILE, res)
    return res


def preflight_points(cfg: ScalingConfig, todo: list[dict[str, Any]]) -> dict[str, float]:
    """Memory check and measured tokens/s of every size still to run (the loop's own preflight, nothing trained
    or written); refuses the sweep when the estimated time exceeds ``time_budget``."""
    from scalelab.common import resolve_device, resolve_dtype
    from scalelab.lm.train import preflight
    from scalelab.lm.train.loop import train

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    for spec in dict.fromkeys(p["size"] for p in todo):  # from the shapes first: a model too big is never built
        p = next(q for q in todo if q["size"] == spec)
        mcfg = size_config(spec, int(load_meta(RunDir(cfg.out))["vocab_size"]), cfg.seq_len)
        est = preflight.estimate_memory(mcfg, p["params"], cfg.batch_size, cfg.seq_len, dtype)
        try:
            preflight.check_fits(preflight.Plan(mcfg, p["params"], 0, est, device, dtype, 1, cfg.batch_size,
                                                cfg.seq_len, 1))
        except UsageError as e:
            raise UsageError(f"size {spec} (point {p['name']}): {e}") from None
    speed: dict[str, float] = {}
    for p in todo:
        if p["size"] in speed:
            continue
        _link_shared(cfg, point_dir(cfg, p["name"]))
        steps = 5 if cfg.time_budget > 0 else 0
        s = train(train_config(cfg, p, preflight_only=True, preflight_steps=steps, stage="preflight"),
                  source=context_source(cfg, p))["preflight"]
        speed[p["size"]] = float(s["tokens_per_s"] or 0.0)
    if cfg.time_budget > 0:
        eval_tokens = cfg.eval_tokens * cfg.seq_len / max(1, cfg.seq_len - cfg.eval_context)
        est = sum((p["tokens"] + eval_tokens / 3) / max(speed[p["size"]], 1e-9) for p in todo) / 60
        if est > cfg.time_budget:
            worst = max(cfg.budgets)
            raise UsageError(f"the {len(todo)} points left need about {est:.1f} min at the measured speed "
                             f"({', '.join(f'{k}: {v:,.0f} tokens/s' for k, v in speed.items())}), over "
                             f"--time-budget {cfg.time_budget:g} min: drop budget {worst:g}, smaller --sizes, or "
                             "a larger --time-budget")
        print0(f"preflight: {len(todo)} points, about {est:.1f} min at the measured speed (budget "
               f"{cfg.time_budget:g} min)")
    return speed


def run_sweep(cfg: ScalingConfig) -> dict[str, Any]:
    """Prepare data, preflight, run every unfinished point; returns the points, the finished results and notes."""
    if not cfg.out:
        raise UsageError("--out is required (the sweep folder)")
    prepare_data(cfg)
    vocab = int(load_meta(RunDir(cfg.out))["vocab_size"])
    points, notes = plan_points(cfg, vocab)
    for n in notes:
        print0(f"note: {n}")
    results = {p["name"]: r for p in points if (r := read_result(cfg, p)) is not None}
    todo = [p for p in points if p["name"] not in results]
    if todo and not cfg.fit_only:
        preflight_points(cfg, todo)
        total = sum(p["budget"] for p in todo)
        bar = progress(total=total, desc="sweep", unit="FLOP", unit_scale=True, position=1, leave=True)
        try:
            for p in todo:
                print0(f"\n[{len(results) + 1}/{len(points)}] {p['name']}: {p['params']:,} parameters "
                       f"({p['params_non_embedding']:,} without the embedding), {p['tokens']:,} tokens, "
                       f"{p['steps']} steps")
                results[p["name"]] = run_point(cfg, p)
                bar.update(p["budget"])
                bar.set_postfix(points=f"{len(results)}/{len(points)}", bpb=f"{results[p['name']]['val_bpb']:.4f}")
        finally:
            bar.close()
    elif todo:
        print0(f"note: --fit-only: {len(todo)} unfinished point(s) left out of the fits")
    return {"config": asdict(cfg), "points": [results[p["name"]] for p in points if p["name"] in results],
            "planned": len(points), "notes": notes, "vocab_size": vocab}
