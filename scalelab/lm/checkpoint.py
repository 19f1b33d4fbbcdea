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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scalelab.common import UsageError, fsync_dir, fsync_tree, print0, space_for, usual_mode, write_json
from scalelab.config import config_from_dict, to_dict
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
    state = model_state if model_state is not None else _model_state(model)
    needed = sum(v.numel() * v.element_size() for v in state.values()) + _tensor_bytes(optimizer_state)
    try:
        with space_for(run.stage_dir(stage), f"checkpoint {final.name}", needed):
            tmp.mkdir(parents=True)
            save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt"})
            usual_mode(tmp / MODEL_FILE)  # safetensors writes owner-only
            write_json(tmp / META_FILE, {"step": step, "stage": stage, **meta})
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / OPTIM_FILE)
            if trainer_state is not None:
                write_json(tmp / STATE_FILE, trainer_state)
            fsync_tree(tmp)  # every file on disk before the rename publishes the folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the resume point
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(final.parent)
    run.mark_latest(stage, final)
    if keep_last > 0:
        steps = sorted(p for p in run.stage_dir(stage).glob("step_*") if p.is_dir() and not p.name.endswith(".partial"))
        for old in steps[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list (an optimizer state), for the free-space check."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


DEFAULT_STAGES = ("chat", "base")  # what sample, chat, eval, export and serve pick when --stage is not given


def stages_present(run: RunDir) -> list[str]:
    """Stage folders of a run that hold at least one complete checkpoint."""
    if not run.root.is_dir():
        return []
    return sorted(p.name for p in run.root.iterdir() if p.is_dir() and run.latest_step_dir(p.name) is not None)


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
    stages = [stage] if stage else list(DEFAULT_STAGES)
    for s in stages:
        found = run.latest_step_dir(s)
        if found is not None:
            return found
    present = stages_present(run)
    have = f"stages with a checkpoint: {', '.join(present)}" if present else "no stage has a checkpoint yet"
    raise UsageError(f"{path}: no checkpoint for stage {' or '.join(stages)} ({have})")


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


def model_from_checkpoint(step_dir: Path, meta: dict[str, Any], max_seq_len: int = 0) -> GPT:
    """The one way weights become a model (training and inference alike): build ``meta``'s model config, load the
    weights strictly. ``max_seq_len`` > the saved context widens it (RoPE needs no new weights)."""
    cfg = saved_model_config(step_dir, meta, max_seq_len)
    check_shapes(step_dir, cfg)  # before allocating: a wrong config must not ask for hundreds of GB
    model = GPT(cfg)
    state = load_state(step_dir)
    if cfg.tie_embeddings and "embed_tokens.weight" in state:
        state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{step_dir / MODEL_FILE}: weights do not match the model config ({str(e)[:200]})") from None
    return model


def saved_model_config(step_dir: Path, meta: dict[str, Any], max_seq_len: int = 0) -> ModelConfig:
    """``meta``'s model config with its types checked field by field (a hand-edited meta.json names the field)."""
    saved = meta.get("model_config")
    if not isinstance(saved, dict):
        raise UsageError(f"{step_dir / META_FILE}: missing field 'model_config'")
    cfg = config_from_dict(ModelConfig, saved, where=f"{step_dir / META_FILE} (model_config)")
    cfg.max_seq_len = max(cfg.max_seq_len, max_seq_len)
    return cfg


def weight_shapes(step_dir: Path) -> dict[str, list[int]]:
    """Every tensor's shape, read from the safetensors header alone (which safetensors checks against the file's
    size, so a truncated file fails here); UsageError naming the file when it does not read back."""
    from safetensors import safe_open

    try:
        with safe_open(str(step_dir / MODEL_FILE), framework="pt") as fh:
            return {name: list(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except (OSError, SafetensorError, ValueError) as e:
        raise UsageError(f"{step_dir / MODEL_FILE}: corrupt or truncated checkpoint ({e})") from None


def check_shapes(step_dir: Path, cfg: ModelConfig) -> None:
    """The embedding's shape in the weights file must be the config's (checked before anything is allocated)."""
    shape = weight_shapes(step_dir).get("embed_tokens.weight")
    if shape is not None and shape != [cfg.vocab_size, cfg.n_embd]:
        raise UsageError(f"{step_dir / META_FILE}: model_config says vocab_size {cfg.vocab_size}, n_embd {cfg.n_embd} "
                         f"but {MODEL_FILE} holds an embedding of shape {shape}")


def load_model(path: str | Path, stage: str | None = None, device: str = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[GPT, dict[str, Any], Path]:
    """Load a checkpoint's model for inference or further training: (model, meta, step_dir)."""
    step_dir = resolve_checkpoint(path, stage)
    meta = read_meta(step_dir)
    model = model_from_checkpoint(step_dir, meta)
    return model.to(device=device, dtype=dtype), meta, step_dir


def resumable(step_dir: Path) -> bool:
    """A checkpoint written by the trainer (optimizer and trainer state beside the weights), not a weights-only
    import; one of the two missing is a broken checkpoint, which resuming reports."""
    return (step_dir / OPTIM_FILE).is_file() or (step_dir / STATE_FILE).is_file()


C = TypeVar("C")


@dataclass
class Start:
    """Where a training stage starts, decided once for pretraining and SFT alike.

    kind: ``fresh`` (new weights), ``resume`` (this stage's newest checkpoint: weights, optimizer, data position) or
    ``init`` (another checkpoint's weights, a fresh optimizer: ``--init-from``, or a weights-only checkpoint such as
    an import found in the stage itself). ``config`` is the stage's config, with the values saved in a resumed
    checkpoint filled in under the fields the user gave.
    """

    kind: str
    step_dir: Path | None
    meta: dict[str, Any]
    config: Any

    @property
    def saved_model_config(self) -> dict[str, Any] | None:
        return self.meta.get("model_config")


def resolve_start(cfg: C, given: set[str] | frozenset[str] = frozenset()) -> Start:
    """Resolve once where stage ``cfg.stage`` of run ``cfg.run`` starts; ``cfg`` is a TrainConfig (or subclass)."""
    run = RunDir(cfg.run)
    found, meta = newest_complete(run, cfg.stage)
    if found is not None:
        if resumable(found):
            return Start("resume", found, meta, merge_saved_config(cfg, meta, given, found / META_FILE))
        return Start("init", found, meta, cfg)
    if cfg.resume:
        raise UsageError(f"{run.stage_dir(cfg.stage)}: --resume given but there is no checkpoint to resume")
    if cfg.init_from:
        if "/" not in cfg.init_from and not os.path.isdir(cfg.init_from):
            step_dir = run.require_checkpoint(cfg.init_from)  # a stage of this run
        else:
            step_dir = resolve_checkpoint(cfg.init_from)
        return Start("init", step_dir, read_meta(step_dir), cfg)
    return Start("fresh", None, {}, cfg)


def check_complete(step_dir: Path) -> dict[str, Any]:
    """The meta of a checkpoint whose files all read back (safetensors checks its header against the file size);
    UsageError naming the broken file otherwise."""
    meta = read_meta(step_dir)
    weight_shapes(step_dir)
    load_trainer_state(step_dir)
    return meta


def newest_complete(run: RunDir, stage: str) -> tuple[Path | None, dict[str, Any]]:
    """The newest checkpoint of a stage whose files read back, and its meta; a broken newer one (a disk that lied,
    a copy cut short) is passed over with a warning instead of stopping the run."""
    latest = run.latest_step_dir(stage)
    if latest is None:
        return None, {}
    steps = sorted((p for p in run.stage_dir(stage).glob("step_*") if p.is_dir() and not p.name.endswith(".partial")
                    and p.name <= latest.name), reverse=True)
    for i, step_dir in enumerate(steps):
        try:
            meta = check_complete(step_dir)
        except UsageError as e:
            if i + 1 == len(steps):
                raise
            print0(f"warning: {e}; falling back to {steps[i + 1].name}")
            continue
        return step_dir, meta
    return None, {}


# a renamed TrainConfig field: its old name in a checkpoint saved before the rename -> its name now
RENAMED_FIELDS = {"sample_tokens": "sample_max_tokens"}


def merge_saved_config(cfg: C, meta: dict[str, Any], given: set[str] | frozenset[str], where: Path) -> C:
    """Every field the user did not give comes from the checkpoint's saved config, so rerunning the same command
    resumes the same run; what to do now (preflight only, resume required) always comes from the command."""
    saved = {RENAMED_FIELDS.get(k, k): v for k, v in (meta.get("train_config") or {}).items()}
    fields = type(cfg).__dataclass_fields__
    known = {k: v for k, v in saved.items() if k in fields}
    merged = {**known, **{k: v for k, v in to_dict(cfg).items() if k in given or k not in known}}
    merged["preflight_only"], merged["resume"] = cfg.preflight_only, cfg.resume
    return config_from_dict(type(cfg), merged, where=str(where))


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
