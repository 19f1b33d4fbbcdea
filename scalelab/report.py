"""The run report: ``report.md`` and PNG plots rendered from a run's JSON files, never scraped back from text.

Inputs (all optional; a missing one leaves its section out):
  metrics.jsonl     one record per logged step: {"stage", "step", "loss", "val_loss"?, "val_bpb"?, "lr", ...}
  eval/<stage>.json per-task scores written by ``scalelab eval``
  config.json       the resolved config of every stage
Outputs: ``report.md``, ``loss.png`` (training/validation loss of every stage), ``eval.png`` (per-task score, one bar
per stage), ``multiple_choice.png`` when log-likelihood sets were scored.

    scalelab report --run runs/demo
    python -c "from scalelab.report import render_report; render_report('runs/demo')"
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scalelab.common import atomic_write_text, read_json, read_jsonl
from scalelab.runs import RunDir

STAGE_ORDER = ("base", "chat")
TRAIN_KEYS = ("loss", "train_loss")
VAL_KEYS = ("val_loss", "val_bpb")


def _stages(names: list[str]) -> list[str]:
    """Known stages first, in pipeline order, then any others alphabetically."""
    known = [s for s in STAGE_ORDER if s in names]
    return known + sorted(set(names) - set(known))


def load_metrics(run: RunDir) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """stage -> series name -> sorted (step, value); a step logged twice (after a resume) keeps its last value."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for rec in read_jsonl(run.metrics_jsonl) if run.metrics_jsonl.is_file() else []:
        if not isinstance(rec, dict) or "step" not in rec:
            continue
        stage = str(rec.get("stage", "base"))
        for key, value in rec.items():
            if key in ("step", "stage") or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                out.setdefault(stage, {}).setdefault(key, {})[int(rec["step"])] = float(value)
    return {s: {k: sorted(v.items()) for k, v in series.items()} for s, series in out.items()}


def load_evals(run: RunDir) -> dict[str, dict[str, Any]]:
    """stage -> the eval JSON of that stage."""
    folder = run.eval_json("x").parent
    if not folder.is_dir():
        return {}
    found = {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))}
    return {s: found[s] for s in _stages(list(found))}


# ----------------------------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(metrics: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path | None:
    """One panel per stage: training loss (line) and validation loss (markers) against the step."""
    stages = [s for s in _stages(list(metrics)) if any(k in metrics[s] for k in TRAIN_KEYS + VAL_KEYS)]
    if not stages:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        series = metrics[stage]
        for key in TRAIN_KEYS:
            if key in series:
                steps, values = zip(*series[key])
                ax.plot(steps, values, lw=1, alpha=0.8, label=f"train {key}")
                break
        if "val_loss" in series:
            steps, values = zip(*series["val_loss"])
            ax.plot(steps, values, "o-", ms=4, label="val loss")
        ax.set_title(f"{stage} stage")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scores(evals: dict[str, dict[str, Any]], path: Path, section: str = "tasks", key: str = "score",
                title: str = "score per task") -> Path | None:
    """Grouped bars: one group per task, one bar per evaluated stage (chance as a dashed tick where known)."""
    tasks = sorted({t for e in evals.values() for t in (e.get(section) or {})})
    if not tasks:
        return None
    plt = _pyplot()
    stages = list(evals)
    width = 0.8 / max(1, len(stages))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(tasks) + 2), 4))
    for j, stage in enumerate(stages):
        res = evals[stage].get(section) or {}
        xs = [i + (j - (len(stages) - 1) / 2) * width for i in range(len(tasks))]
        values = [float(res.get(t, {}).get(key, 0.0)) for t in tasks]
        bars = ax.bar(xs, values, width, label=stage)
        for bar, v in zip(bars, values):  # a score of 0 draws no bar: its value says it was measured
            ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    for i, t in enumerate(tasks):
        found = [e[section][t]["chance"] for e in evals.values() if "chance" in (e.get(section) or {}).get(t, {})]
        chance = found[0] if found else None
        if chance is not None:
            ax.hlines(chance, i - 0.45, i + 0.45, colors="k", linestyles="dashed", lw=1)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- markdown

def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return "-" if x is None else str(x)


def score_table(evals: dict[str, dict[str, Any]], section: str = "tasks", key: str = "score") -> list[str]:
    """A markdown table: one row per task, one column per stage (and chance for multiple choice)."""
    tasks = sorted({t for e in evals.values() for t in (e.get(section) or {})})
    if not tasks:
        return []
    stages = [s for s in evals if evals[s].get(section)]
    has_chance = any("chance" in (e.get(section) or {}).get(t, {}) for e in evals.values() for t in tasks)
    head = ["task", *stages] + (["chance"] if has_chance else []) + ["n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in tasks:
        cells = [t]
        for s in stages:
            cells.append(_fmt((evals[s].get(section) or {}).get(t, {}).get(key)))
        if has_chance:
            cells.append(_fmt(next((e[section][t].get("chance") for e in evals.values()
                                    if t in (e.get(section) or {})), None)))
        cells.append(_fmt(max(int((e.get(section) or {}).get(t, {}).get("n", 0)) for e in evals.values())))
        lines.append("| " + " | ".join(cells) + " |")
    if section == "tasks":
        means = [_fmt(evals[s].get("mean_score")) for s in stages]
        lines.append("| **mean** | " + " | ".join(means) + (" | " if has_chance else "") + " | |")
    return lines


def _training_lines(metrics: dict[str, dict[str, list[tuple[int, float]]]]) -> list[str]:
    lines = ["| stage | steps | first loss | last loss | last val loss | last val bpb | tokens/s (median) |",
             "|---|---|---|---|---|---|---|"]
    for stage in _stages(list(metrics)):
        s = metrics[stage]
        train = next((s[k] for k in TRAIN_KEYS if k in s), [])
        tps_key = next((k for k in ("tokens_per_s", "tok_per_s", "tokens_per_sec", "tok/s") if k in s), None)
        tps = sorted(v for _, v in s[tps_key]) if tps_key else []
        last_step = max((steps[-1][0] for steps in s.values() if steps), default=0)
        val_loss = s["val_loss"][-1][1] if "val_loss" in s else None
        val_bpb = s["val_bpb"][-1][1] if "val_bpb" in s else None
        cells = [stage, last_step, train[0][1] if train else None, train[-1][1] if train else None, val_loss, val_bpb,
                 round(tps[len(tps) // 2]) if tps else None]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return lines


def _samples_lines(evals: dict[str, dict[str, Any]], per_task: int = 1) -> list[str]:
    lines: list[str] = []
    for stage, ev in evals.items():
        for task, res in sorted((ev.get("tasks") or {}).items()):
            for sample in (res.get("samples") or [])[:per_task]:
                lines += [f"- **{stage} / {task}** (score {_fmt(sample.get('score'))})",
                          f"  - prompt: `{_short(sample.get('prompt', ''))}`",
                          f"  - model: `{_short(sample.get('completion', ''))}`",
                          f"  - reference: `{_short(sample.get('reference', ''))}`"]
    return lines


def _short(text: Any, n: int = 160) -> str:
    text = " ".join(str(text).split()).replace("`", "'")
    return text if len(text) <= n else text[:n - 3] + "..."


def render_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and the plots into the run folder; returns the report path."""
    run = RunDir(run_dir)
    metrics = load_metrics(run)
    evals = load_evals(run)
    config = read_json(run.config_json) if run.config_json.is_file() else {}
    loss_png = plot_losses(metrics, run.root / "loss.png")
    how = {"base": "base (few-shot)", "chat": "chat (template)"}
    eval_png = plot_scores(evals, run.root / "eval.png",
                           title="task score: " + " vs ".join(how.get(s, s) for s in evals))
    mc_png = plot_scores(evals, run.root / "multiple_choice.png", section="multiple_choice", key="accuracy_norm",
                         title="multiple choice by log-likelihood (dashed: chance)")
    lines = [f"# scalelab run report: `{run.root.name}`", "",
             f"Rendered by `scalelab report --run {run.root}` from metrics.jsonl, eval/*.json and config.json.", ""]
    model_cfg = next((e["model_config"] for e in evals.values() if e.get("model_config")), None)
    params = next((e["params"] for e in evals.values() if e.get("params")), None)
    if model_cfg or params:
        lines += ["## Model", ""]
        if params:
            lines.append(f"- parameters: {params:,}")
        if model_cfg:
            lines.append("- " + ", ".join(f"{k}={model_cfg[k]}" for k in
                                          ("n_layer", "n_embd", "n_head", "n_kv_head", "vocab_size", "max_seq_len")
                                          if k in model_cfg))
        lines.append("")
    if metrics:
        lines += ["## Training", "", *_training_lines(metrics), ""]
        sft_data = (config.get("sft_data") or {}).get("train") if isinstance(config, dict) else None
        if isinstance(sft_data, dict) and "rows" in sft_data:
            lines += [f"SFT data: {sft_data.get('conversations', 0):,} conversations packed into "
                      f"{sft_data['rows']:,} rows ({100 * float(sft_data.get('fill', 0)):.0f}% filled, "
                      f"{sft_data.get('target_tokens', 0):,} target tokens); {sft_data.get('truncated', 0)} truncated "
                      f"and {sft_data.get('dropped', 0)} dropped as longer than a row.", ""]
        if loss_png:
            lines += [f"![loss curves]({loss_png.name})", ""]
    if evals:
        lines += ["## Tasks (generation, scored by each task's own metric)", "",
                  "The base model is prompted with few-shot examples, the chat model through its chat template.", ""]
        lines += score_table(evals) or ["(no task scores)"]
        lines.append("")
        if eval_png:
            lines += [f"![task scores]({eval_png.name})", ""]
        mc = score_table(evals, "multiple_choice", "accuracy_norm")
        if mc:
            lines += ["## Multiple choice (log-likelihood, length-normalised accuracy)", "", *mc, ""]
            if mc_png:
                lines += [f"![multiple choice]({mc_png.name})", ""]
        samples = _samples_lines(evals)
        if samples:
            lines += ["## Sample completions", "", *samples, ""]
    scaling = run.root / "scaling.json"
    if scaling.is_file():  # a scaling sweep folder (scalelab scaling): its section comes from the sweep's JSON
        from scalelab.lm.scaling.plots import report_lines

        lines += report_lines(read_json(scaling))
    if config:
        lines += ["## Configs recorded in config.json", "", ", ".join(f"`{k}`" for k in config), ""]
    if not metrics and not evals and not scaling.is_file():
        lines += ["Nothing to report yet: no metrics.jsonl and no eval/*.json in this run.", ""]
    atomic_write_text(run.report_md, "\n".join(lines))
    return run.report_md
