"""The run directory: the one place that owns every path inside ``runs/<name>/``.

    runs/<name>/
      config.json            resolved config of every stage that ran (one key per stage)
      tokenizer/             tokenizer.json (+ chat template in tokenizer_config.json)
      data/                  train.bin, val.bin, meta.json
      base/, chat/           step_<n>/model.safetensors + meta.json + optimizer.pt; `latest` names the newest step
      eval/<stage>.json      per-task scores
      metrics.jsonl          one line per logged step (stage, step, loss, lr, tokens/s, MFU)
      report.md, *.png       rendered from the JSON above
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scalelab.common import UsageError, atomic_write_text


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # stages share these files, never memory
    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_json(self) -> Path:
        return self.tokenizer_dir / "tokenizer.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def data_file(self, split: str) -> Path:
        return self.data_dir / f"{split}.bin"

    @property
    def data_meta(self) -> Path:
        return self.data_dir / "meta.json"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def step_dir(self, stage: str, step: int) -> Path:
        return self.stage_dir(stage) / f"step_{step:07d}"

    def latest_step_dir(self, stage: str) -> Path | None:
        """The newest complete checkpoint of a stage, or None when the stage has none."""
        pointer = self.stage_dir(stage) / "latest"
        if pointer.is_file():
            cand = self.stage_dir(stage) / pointer.read_text().strip()
            if (cand / "meta.json").is_file():
                return cand
        steps = sorted(p for p in self.stage_dir(stage).glob("step_*") if (p / "meta.json").is_file())
        return steps[-1] if steps else None

    def require_checkpoint(self, stage: str) -> Path:
        found = self.latest_step_dir(stage)
        if found is None:
            command = {"base": "pretrain", "chat": "sft"}.get(stage)
            hint = f"run `scalelab {command} --run {self.root}` first" if command else f"run the '{stage}' stage first"
            raise UsageError(f"{self.stage_dir(stage)}: no checkpoint to start from ({hint})")
        return found

    def mark_latest(self, stage: str, step_dir: Path) -> None:
        atomic_write_text(self.stage_dir(stage) / "latest", step_dir.name + "\n")

    def eval_json(self, stage: str) -> Path:
        return self.root / "eval" / f"{stage}.json"

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"
