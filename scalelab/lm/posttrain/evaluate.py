"""Evaluation of a checkpoint on every task: generation + the task's own scorer, and multiple choice by likelihood.

The base model is prompted with the task's few-shot text (``task.few_shot_prompt``) and its continuation is cut where
the next question would start; the chat model is prompted through the chat template (``render_prompt``) and stops at
``<|end|>``. Prompts are generated in batches (``batching.generate_batch``), greedily by default, so a score is
reproducible. Multiple-choice sets (ARC, HellaSwag, PIQA, ...; scalelab/lm/posttrain/multiple_choice.py) are scored by
log-likelihood when the model is large enough for them to mean anything (``--mc auto``: ``--mc-min-params``), or
always with ``--mc on``. Tasks that run model-written code (mbpp) need the sandbox's jail (bubblewrap); without one
they are skipped with a one-line reason, unless ``--unsafe-exec``. Results go to ``<run>/eval/<stage>.json``
(RunDir.eval_json) and a table is printed.

    scalelab eval --run runs/demo --stage chat --limit 50
    scalelab eval --run runs/demo --stage base --tasks arithmetic email --mc on --mc-limit 100
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scalelab.common import UsageError, print0, progress, read_json, resolve_device, torch_dtype, write_json
from scalelab.config import save_config
from scalelab.lm.posttrain.multiple_choice import MC_SETS, evaluate_mc, load_mc_set
from scalelab.lm.special_tokens import BOS, END, backend, encode_text
from scalelab.runs import RunDir

DEFAULT_MC_SETS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "copa", "openbookqa", "boolq"]


@dataclass
class EvalConfig:
    """Score a checkpoint on every task (generation) and, for large enough models, on multiple-choice sets."""

    run: str = field(default="", metadata={"help": "run folder holding the checkpoint, e.g. runs/demo"})
    stage: str = field(default="", metadata={"help": "which checkpoint: base (few-shot prompts) or chat (template); "
                                                     "empty = chat if present, else base", "choices": ["base", "chat"]})
    tasks: list[str] = field(default_factory=list, metadata={
        "help": "tasks to score; empty = every task of the mixture (the one SFT used, else the default)"})
    mixture_config: str = field(default="", metadata={
        "help": "MixtureConfig YAML giving the tasks and their options; '' = the run's SFT mixture or the default"})
    limit: int = field(default=50, metadata={"ge": 0, "help": "examples per task; 0 = the task's default of 200"})
    seed: int = field(default=0, metadata={"ge": 0, "help": "seed of the example draw and of sampling"})
    max_tokens: int = field(default=64, metadata={"ge": 1, "help": "tokens generated per answer at most (as in "
                                                               "sample, chat and the API)"})
    batch_size: int = field(default=32, metadata={"ge": 1, "help": "prompts generated together (batched KV cache)"})
    temperature: float = field(default=0.0, metadata={"ge": 0, "le": 100,
        "help": "sampling temperature; 0 = greedy (reproducible)"})
    few_shot: int = field(default=-1, metadata={"ge": -1,
        "help": "solved examples in a base-model prompt; -1 = task default"})
    samples: int = field(default=3, metadata={"ge": 0,
        "help": "completions kept per task in the JSON (for the report)"})
    mc: str = field(default="auto", metadata={"help": "multiple choice by log-likelihood: auto (only when the model "
                                                      "has >= --mc-min-params), on, off",
                                              "choices": ["auto", "on", "off"]})
    mc_sets: list[str] = field(default_factory=lambda: list(DEFAULT_MC_SETS), metadata={
        "help": f"multiple-choice sets, found through scalelab/data_sources.py ({', '.join(MC_SETS)})"})
    mc_limit: int = field(default=200, metadata={"ge": 0, "help": "items per multiple-choice set; 0 = all"})
    mc_min_params: int = field(default=50_000_000, metadata={"ge": 0,
        "help": "with --mc auto, score multiple choice only for models with at least this many parameters"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    dtype: str = field(default="fp32", metadata={"help": "weights dtype for evaluation: fp32, bf16 or fp16"})
    unsafe_exec: bool = field(default=False, metadata={
        "help": "where no sandbox jail (bubblewrap) works, run model-written code (mbpp) anyway, as a plain process "
                "that can read and write your files and use the network; without it such tasks are skipped"})


# A completer turns prompts (token ids) into decoded completions; tests pass a stub.
Completer = Callable[[list[list[int]], list[int]], list[str]]


def decode(tok: Any, ids: Sequence[int]) -> str:
    """Token ids -> text with special tokens kept (scorers look for ``<|end|>``)."""
    return backend(tok).decode(list(ids), skip_special_tokens=False)


def engine_completer(model: torch.nn.Module, tok: Any, max_new_tokens: int, batch_size: int = 32,
                     temperature: float = 0.0, seed: int = 0) -> Completer:
    """A completer on top of ``batching.generate_batch`` (continuous batching of up to ``batch_size`` rows)."""
    from scalelab.lm.inference.batching import generate_batch

    def complete(prompts: list[list[int]], stop_ids: list[int]) -> list[str]:
        gens = generate_batch(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                              stop_ids=stop_ids, max_batch=batch_size)
        return [decode(tok, ids) for ids in gens]  # a stop id that ended a row is kept: scorers look for <|end|>

    return complete


def fit_prompt(ids: list[int], max_len: int, bos_id: int) -> tuple[list[int], bool]:
    """Keep the last ``max_len`` tokens (a long few-shot prompt loses its oldest shots), BOS kept first."""
    if len(ids) <= max_len:
        return ids, False
    return [bos_id] + ids[len(ids) - max_len + 1:], True


def evaluate_task(task: Any, stage: str, tok: Any, complete: Completer, limit: int, seed: int = 0,
                  few_shot: int = -1, max_prompt_len: int = 10**9, samples: int = 3) -> dict[str, Any]:
    """Score one task: its eval examples -> prompts for the stage -> completions -> ``task.score``, averaged."""
    bos_id, end_id = backend(tok).token_to_id(BOS), backend(tok).token_to_id(END)
    examples = task.eval_examples(limit if limit > 0 else 200, seed=seed)
    if not examples:
        return {"score": 0.0, "n": 0}
    prompts, truncated = [], 0
    for ex in examples:
        if stage == "base":
            text = task.few_shot_prompt(ex, k=None if few_shot < 0 else few_shot, seed=seed)
            ids = [bos_id] + encode_text(tok, text)
        else:
            from scalelab.lm.chat import render_prompt

            ids = render_prompt(tok, ex.messages, where=f"{task.name} example {ex.id}")
        ids, cut = fit_prompt(ids, max_prompt_len, bos_id)
        truncated += cut
        prompts.append(ids)
    # a base model ends a document with a new <|bos|>; the chat model ends its turn with <|end|>
    completions = complete(prompts, [end_id, bos_id])
    per_metric: dict[str, list[float]] = {}
    kept = []
    for ex, completion in zip(examples, completions):
        if stage == "base":
            completion = task.cut_few_shot(completion.split(BOS, 1)[0])
        result = task.score(ex, completion)
        for k, v in result.items():
            per_metric.setdefault(k, []).append(float(v))
        if len(kept) < samples:
            ref = ex.reference.get("answer", ex.reference) if isinstance(ex.reference, dict) else ex.reference
            kept.append({"prompt": ex.prompt_text(), "completion": completion, "score": float(result["score"]),
                         "reference": ref if isinstance(ref, str) else json.dumps(ref)[:500]})
    n = len(examples)
    out: dict[str, Any] = {"score": sum(per_metric["score"]) / n, "n": n}
    out["metrics"] = {k: sum(v) / n for k, v in per_metric.items() if k != "score"}
    out["truncated_prompts"] = truncated
    out["samples"] = kept
    return out


def mixture_for(cfg: EvalConfig, run: RunDir) -> Any:
    """The MixtureConfig for task options: --mixture-config, else the one SFT saved in the run, else the default."""
    from scalelab.config import config_from_dict, load_yaml
    from scalelab.lm.posttrain.tasks.mixture import MixtureConfig

    if cfg.mixture_config:
        data = load_yaml(cfg.mixture_config)
        data.pop("_target", None)
        return config_from_dict(MixtureConfig, data, where=cfg.mixture_config)
    saved = read_json(run.config_json).get("sft_mixture") if run.config_json.is_file() else None
    if isinstance(saved, dict):
        return config_from_dict(MixtureConfig, saved, where=f"{run.config_json} (sft_mixture)")
    return MixtureConfig()


def resolve_tasks(names: list[str], mixture: Any) -> dict[str, Any]:
    """Task instances by name (the mixture's tasks when ``names`` is empty), built with the mixture's options."""
    from scalelab.lm.posttrain.tasks.mixture import TASKS, make_task, parse_weighted

    names = list(names) or [parse_weighted(spec, "tasks")[0] for spec in mixture.tasks]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    return {n: make_task(n, mixture) for n in dict.fromkeys(names)}


def require_chat_template(run: RunDir) -> None:
    """A chat checkpoint needs its tokenizer's chat template (tokenizer_config.json or chat_template.jinja)."""
    from scalelab.lm.chat import has_chat_template

    if not has_chat_template(run.tokenizer_dir):
        raise UsageError(f"{run.tokenizer_dir}: the tokenizer has no chat template (no chat_template in "
                         "tokenizer_config.json nor chat_template.jinja); cannot prompt a chat model. Rebuild it "
                         "with `scalelab tokenizer` or evaluate with --stage base")


def gate_code_execution(tasks: dict[str, Any], unsafe_exec: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Tasks that run model-written code need the sandbox's jail: without one they are skipped, with a one-line
    reason, unless the user passed --unsafe-exec. Returns (tasks to run, {skipped task: why})."""
    from scalelab.lm.posttrain.tasks.sandbox import jail_status

    code_tasks = [name for name, task in tasks.items() if getattr(task, "executes_code", False)]
    status = jail_status() if code_tasks else None
    if status is None or status.available:
        return tasks, {}
    if unsafe_exec:
        print0(f"warning: --unsafe-exec: {', '.join(code_tasks)} will run model-written code outside any jail, with "
               f"your permissions ({status.reason})")
        for name in code_tasks:
            tasks[name].unsafe_exec = True
        return tasks, {}
    why = (f"not run: it executes model-written code and there is no sandbox ({status.reason}); install bubblewrap "
           "(scripts/setup_sandbox.sh) or pass --unsafe-exec")
    print0(f"{', '.join(code_tasks)} {why}")
    return {n: t for n, t in tasks.items() if n not in code_tasks}, {n: why for n in code_tasks}


def evaluate(cfg: EvalConfig, complete: Completer | None = None) -> dict[str, Any]:
    """Evaluate the run's ``cfg.stage`` checkpoint on every task; writes eval/<stage>.json and returns it."""
    from scalelab.lm.checkpoint import load_model
    from scalelab.lm.data.tokenizer import load_tokenizer

    if not cfg.run:
        raise UsageError("--run is required (the run folder, e.g. runs/demo)")
    run = RunDir(cfg.run)
    if not run.root.is_dir():
        raise UsageError(f"{run.root}: run folder not found")
    if not cfg.stage:
        from scalelab.lm.checkpoint import resolve_checkpoint

        cfg.stage = resolve_checkpoint(run.root).parent.name  # the one default rule: chat if present, else base
    step_dir = run.require_checkpoint(cfg.stage)
    if cfg.stage == "chat":
        require_chat_template(run)
    tok = load_tokenizer(run.root)
    device = resolve_device(cfg.device)
    model, meta, step_dir = load_model(step_dir, device=device, dtype=torch_dtype(cfg.dtype))
    model.eval()
    params = model.num_params()
    tasks, skipped = gate_code_execution(resolve_tasks(cfg.tasks, mixture_for(cfg, run)), cfg.unsafe_exec)
    max_prompt = model.config.max_seq_len - cfg.max_tokens
    if max_prompt < 16:
        raise UsageError(f"--max-tokens {cfg.max_tokens} leaves no room for a prompt in the model's "
                         f"context of {model.config.max_seq_len}")
    complete = complete or engine_completer(model, tok, cfg.max_tokens, cfg.batch_size, cfg.temperature, cfg.seed)
    print0(f"evaluating {step_dir} ({params:,} parameters) on {len(tasks)} task(s), {cfg.limit} examples each")
    t0 = time.time()
    results: dict[str, Any] = {}
    for name, task in progress(list(tasks.items()), desc=f"eval {cfg.stage}", unit="task"):
        t = time.time()
        with torch.no_grad():
            results[name] = evaluate_task(task, cfg.stage, tok, complete, cfg.limit, cfg.seed, cfg.few_shot,
                                          max_prompt, cfg.samples)
        results[name]["seconds"] = round(time.time() - t, 2)
    out: dict[str, Any] = {
        "stage": cfg.stage, "step": meta.get("step"), "checkpoint": str(step_dir), "params": params,
        "model_config": meta.get("model_config"), "limit": cfg.limit, "seed": cfg.seed,
        "temperature": cfg.temperature, "tasks": results,
        "mean_score": sum(r["score"] for r in results.values()) / max(1, len(results)),
    }
    if skipped:
        out["skipped_tasks"] = skipped
    run_mc = cfg.mc == "on" or (cfg.mc == "auto" and params >= cfg.mc_min_params)
    if run_mc:
        out["multiple_choice"] = {}
        for name in cfg.mc_sets:
            t = time.time()
            items = load_mc_set(name, limit=cfg.mc_limit, seed=cfg.seed)
            with torch.no_grad():
                res = evaluate_mc(model, tok, items, batch_size=max(1, cfg.batch_size // 2))
            out["multiple_choice"][name] = {**res, "seconds": round(time.time() - t, 2)}
    elif cfg.mc == "auto":
        out["multiple_choice_skipped"] = (f"{params:,} parameters < --mc-min-params {cfg.mc_min_params:,} "
                                          "(scores would be at chance; use --mc on to force)")
    out["seconds"] = round(time.time() - t0, 2)
    write_json(run.eval_json(cfg.stage), out)
    save_config(cfg, run.config_json, section=f"eval_{cfg.stage}")
    return out


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of one eval result (task, score, n, seconds), then multiple choice if present."""
    rows = [("task", "score", "n", "seconds")]
    for name, r in result.get("tasks", {}).items():
        rows.append((name, f"{r['score']:.3f}", str(r["n"]), f"{r.get('seconds', 0):.1f}"))
    for name in result.get("skipped_tasks") or {}:
        rows.append((name, "skipped", "0", "-"))   # not a zero score: the reason was printed and is in the JSON
    rows.append(("mean", f"{result.get('mean_score', 0):.3f}", "", f"{result.get('seconds', 0):.1f}"))
    for name, r in (result.get("multiple_choice") or {}).items():
        rows.append((f"mc:{name}", f"{r['accuracy_norm']:.3f}", str(r["n"]), f"{r.get('seconds', 0):.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - len(result.get("multiple_choice") or {}) - 1, "-" * len(lines[0]))
    if result.get("multiple_choice_skipped"):
        lines.append(f"multiple choice skipped: {result['multiple_choice_skipped']}")
    return f"eval of stage '{result.get('stage')}' (step {result.get('step')}):\n" + "\n".join(lines)


def compare_table(base: dict[str, Any] | None, chat: dict[str, Any] | None) -> str:
    """Per-task scores side by side: base (few-shot) vs chat (template)."""
    tasks = sorted(set((base or {}).get("tasks", {})) | set((chat or {}).get("tasks", {})))
    rows = [("task", "base", "chat")]
    for t in tasks:
        cells = [f"{r['tasks'][t]['score']:.3f}" if r and t in r.get("tasks", {}) else "-" for r in (base, chat)]
        rows.append((t, *cells))
    rows.append(("mean", *[f"{r['mean_score']:.3f}" if r else "-" for r in (base, chat)]))
    w = max(len(r[0]) for r in rows)
    lines = [f"{a:<{w}}  {b:>6}  {c:>6}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
