"""`scalelab export`: a run's checkpoint as a Hugging Face LlamaForCausalLM folder or a GGUF file (llama.cpp, Ollama).

    scalelab export --run runs/demo --stage chat --format hf --out exports/demo-hf
    scalelab export --run runs/demo --format gguf --gguf-dtype f16 --out exports/demo-f16.gguf
"""

from __future__ import annotations

from pathlib import Path

from scalelab.common import UsageError, print0
from scalelab.config import parse_config
from scalelab.lm.interop.hf import ExportConfig, export_hf


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExportConfig, argv, prog="scalelab export")
    if not cfg.run:
        raise UsageError("--run is required (the run folder to export, e.g. runs/demo)")
    run = Path(cfg.run)
    if not run.exists():
        raise UsageError(f"{run}: no such run folder")
    stage = cfg.stage or None
    if cfg.format == "hf":
        out = Path(cfg.out) if cfg.out else run / "export" / "hf"
        res = export_hf(run, out, stage=stage, dtype=cfg.dtype)
        print0(f"exported {res.step_dir} -> {res.out}/ ({', '.join(res.files)})")
        print0(f'load it with: transformers.pipeline("text-generation", model="{res.out}")')
    else:
        from scalelab.lm.interop.gguf import export_gguf

        out = Path(cfg.out) if cfg.out else run / "export" / f"model-{cfg.gguf_dtype}.gguf"
        res = export_gguf(run, out, stage=stage, dtype=cfg.gguf_dtype)
        print0(f"exported {res.step_dir} -> {res.out} ({res.out.stat().st_size / 2**20:.1f} MiB, {cfg.gguf_dtype})")
        print0(f"run it with: llama-cli -m {res.out} -p 'Once upon a time'   (or an Ollama Modelfile: FROM {res.out})")
    return 0
