"""Checkpoints: ``model.safetensors`` + readable ``meta.json`` (+ ``optimizer.pt``, ``trainer_state.json``) per step.

    runs/<name>/<stage>/step_0000100/
      model.safetensors     weights (no pickle)
      meta.json             {"model_config": {...}, "step": 100, "stage": "base", "tokenizer_sha256": ..., ...}
      optimizer.pt          optimizer + RNG state, loaded with torch.load(weights_only=True) (never arbitrary pickle)
      trainer_state.json    schedule / data position / anything else the trainer needs for an exact resume

A step folder is written under a temporary name and renamed when complete, so a kill never leaves a half checkpoint
that looks whole; ``latest`` is updated last. Loading verifies every file and names the broken one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scalelab.common import UsageError, write_json
from scalelab.lm.model import GPT, ModelConfig
from scalelab.runs import RunDir

MODEL_FILE, META_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "meta.json", "optimizer.pt", "trainer_state.json"


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors; a tied output layer is stored once (under the embedding's name)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model = getattr(model, "module", model)  # DDP wrapper
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if getattr(model, "config", None) is not None and model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_checkpoint(run: RunDir, stage: str, step: int, model: torch.nn.Module, meta: dict[str, Any],
                    optimizer_state: dict[str, Any] | None = None, trainer_state: dict[str, Any] | None = None,
                    model_state: dict[str, torch.Tensor] | None = None, keep_last: int = 0) -> Path:
    """Atomically write step ``step`` of ``stage`` and point ``latest`` at it. Returns the step folder.

    ``model_state`` overrides the weights taken from ``model`` (e.g. a full state gathered from FSDP shards).
    ``keep_last`` > 0 removes older step folders beyond the newest ``keep_last``.
    """
    final = run.step_dir(stage, step)
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = model_state if model_state is not None else _model_state(model)
    save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    full_meta = {"step": step, "stage": stage, **meta}
    write_json(tmp / META_FILE, full_meta)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / OPTIM_FILE)
    if trainer_state is not None:
        write_json(tmp / STATE_FILE, trainer_state)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    run.mark_latest(stage, final)
    if keep_last > 0:
        steps = sorted(p for p in run.stage_dir(stage).glob("step_*") if p.is_dir() and not p.name.endswith(".partial"))
        for old in steps[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path, stage: str | None = None) -> Path:
    """Accept a step folder, a stage folder, or a run folder (+ stage; default: chat if present, else base)."""
    path = Path(path)
    if (path / META_FILE).is_file() and (path / MODEL_FILE).exists():
        return path
    if not path.exists():
        raise UsageError(f"{path}: no such run or checkpoint folder")
    if (path / "latest").is_file() or any(path.glob("step_*")):
        found = RunDir(path.parent).latest_step_dir(path.name)
        if found is not None:
            return found
    run = RunDir(path)
    stages = [stage] if stage else ["chat", "base"]
    for s in stages:
        found = run.latest_step_dir(s)
        if found is not None:
            return found
    raise UsageError(f"{path}: no checkpoint found (looked for stage {' or '.join(stages)}); train it first")


def read_meta(step_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((step_dir / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{step_dir / META_FILE}: unreadable checkpoint metadata ({e})") from None


def load_state(step_dir: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(step_dir / MODEL_FILE))
    except (OSError, SafetensorError, ValueError) as e:
        raise UsageError(f"{step_dir / MODEL_FILE}: corrupt or truncated checkpoint ({e})") from None


def load_model(path: str | Path, stage: str | None = None, device: str = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[GPT, dict[str, Any], Path]:
    """Load a checkpoint's model for inference or further training: (model, meta, step_dir)."""
    step_dir = resolve_checkpoint(path, stage)
    meta = read_meta(step_dir)
    if "model_config" not in meta:
        raise UsageError(f"{step_dir / META_FILE}: missing field 'model_config'")
    try:
        cfg = ModelConfig(**meta["model_config"])
    except (TypeError, ValueError) as e:
        raise UsageError(f"{step_dir / META_FILE}: bad 'model_config' ({e})") from None
    model = GPT(cfg)
    state = load_state(step_dir)
    if cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{step_dir / MODEL_FILE}: weights do not match the model config ({str(e)[:200]})") from None
    return model.to(device=device, dtype=dtype), meta, step_dir


def load_optimizer_state(step_dir: Path) -> dict[str, Any] | None:
    path = step_dir / OPTIM_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or corrupt file
        raise UsageError(f"{path}: corrupt or truncated optimizer state ({type(e).__name__})") from None


def load_trainer_state(step_dir: Path) -> dict[str, Any] | None:
    path = step_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: corrupt trainer state ({e.msg})") from None


# ----------------------------------------------------------------------------------------------- resume helpers

def capture_rng() -> dict[str, Any]:
    """Every RNG the trainer touches, as tensors and plain values (loadable with ``weights_only=True``)."""
    import random

    import numpy as np

    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype("int64")), "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss),
        "python_version": int(version), "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype("uint32"), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_model_config(step_dir: Path, saved: dict[str, Any], requested: dict[str, Any]) -> None:
    """UsageError naming the first field where the checkpoint's model config differs from the requested one."""
    first = ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "max_seq_len", "tie_embeddings")
    keys = sorted(set(saved) | set(requested), key=lambda k: (first.index(k) if k in first else len(first), k))
    diff = [k for k in keys if saved.get(k) != requested.get(k)]
    if diff:
        key = diff[0]
        more = f" (also differs: {', '.join(diff[1:])})" if diff[1:] else ""
        raise UsageError(f"{step_dir / META_FILE}: the existing checkpoint has model_config.{key}="
                         f"{saved.get(key)!r} but this run asks for {requested.get(key)!r}{more}; use another --run "
                         "directory or the same model flags (nothing was overwritten)")
