"""Hugging Face export and import: a scalelab run <-> a ``LlamaForCausalLM`` folder, through ONE name table.

    scalelab export --run runs/demo --stage chat --format hf --out exports/demo-hf
    scalelab import --format hf exports/demo-hf --run runs/demo2 --stage base

    from transformers import pipeline
    pipe = pipeline("text-generation", model="exports/demo-hf")   # offline: it is a local folder

The exported folder holds ``config.json`` (LlamaForCausalLM), ``model.safetensors``, ``generation_config.json``
(``<|end|>`` is the EOS, ``<|bos|>`` the BOS, ``<|pad|>`` the pad), ``tokenizer.json``, ``tokenizer_config.json`` and
``chat_template.jinja`` (the chat template of scalelab/lm/chat.py), and a short README.md model card.

How prompts are fed (the one rule both sides follow): the base model saw ``<|bos|>`` before every document, so a
plain-text prompt is ``[<|bos|>] + encode(text)``; ``scalelab sample`` prepends it itself, and the exported
tokenizer.json carries a post-processor that prepends it whenever Hugging Face adds special tokens
(``tokenizer(text)``, ``pipeline("text-generation")`` on a string). Chat prompts go through the chat template, which
starts with ``<|bos|>`` itself; Hugging Face renders templates without adding special tokens, so there is exactly one.
The run's own tokenizer.json has no post-processor (``encode`` adds nothing); import removes the exported one again.

``NAME_MAP`` below is the only place that knows how our weight names map to Hugging Face's and to GGUF's.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scalelab.common import UsageError, atomic_write_text, print0, read_json, usual_mode, write_json
from scalelab.lm.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from scalelab.lm.model import GPT, ModelConfig
from scalelab.lm.special_tokens import BOS, END, PAD, SPECIAL_TOKENS
from scalelab.runs import RunDir

# --------------------------------------------------------------------------------------------- configs of the commands

@dataclass
class ExportConfig:
    """Export a run's latest checkpoint to a Hugging Face folder or a GGUF file."""

    run: str = field(default="", metadata={"help": "run folder, e.g. runs/demo (required)"})
    stage: str = field(default="", metadata={"help": "checkpoint stage: chat or base; empty = chat if any, else base"})
    format: str = field(default="hf", metadata={"help": "hf (LlamaForCausalLM folder) or gguf (llama.cpp / Ollama)",
                                                 "choices": ["hf", "gguf"]})
    out: str = field(default="", metadata={"help": "output folder (hf) or .gguf file; empty = <run>/export/hf or "
                                                   "<run>/export/model-<dtype>.gguf"})
    dtype: str = field(default="fp32", metadata={"help": "hf weight dtype: fp32, bf16 or fp16",
                                                 "choices": ["fp32", "bf16", "fp16"]})
    gguf_dtype: str = field(default="f16", metadata={"help": "gguf weight dtype: f32 or f16 (norms stay f32)",
                                                     "choices": ["f32", "f16"]})


@dataclass
class ImportConfig:
    """Import a local Hugging Face LlamaForCausalLM folder (config.json + safetensors + tokenizer.json) as a run."""

    run: str = field(default="", metadata={"help": "run folder to create or add to, e.g. runs/imported (required)"})
    stage: str = field(default="base", metadata={"help": "stage to write the checkpoint under (base or chat)"})
    format: str = field(default="hf", metadata={"help": "source format (only hf)", "choices": ["hf"]})
    force: bool = field(default=False, metadata={"help": "overwrite an existing checkpoint of this stage"})


# --------------------------------------------------------------------------------------------- the one name table

# (scalelab name, Hugging Face LlamaForCausalLM name, GGUF name); "{i}" is the layer index.
NAME_MAP: list[tuple[str, str, str]] = [
    ("embed_tokens.weight", "model.embed_tokens.weight", "token_embd.weight"),
    ("layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    ("layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    ("layers.{i}.self_attn.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    ("layers.{i}.self_attn.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    ("layers.{i}.self_attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    ("layers.{i}.post_attention_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight",
     "blk.{i}.ffn_norm.weight"),
    ("layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    ("layers.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    ("layers.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
    ("norm.weight", "model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "lm_head.weight", "output.weight"),
]
FORMATS = {"scalelab": 0, "hf": 1, "gguf": 2}


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


def map_name(name: str, src: str, dst: str) -> str | None:
    """Translate one weight name between "scalelab", "hf" and "gguf" naming; None when the table has no entry."""
    a, b = FORMATS[src], FORMATS[dst]
    for row in NAME_MAP:
        m = _pattern(row[a]).match(name)
        if m:
            return row[b].replace("{i}", m.group(1)) if m.groups() else row[b]
    return None


def expected_names(cfg: ModelConfig, fmt: str) -> list[str]:
    """Every weight name a model of ``cfg`` has in format ``fmt`` (the output layer left out when tied)."""
    col = FORMATS[fmt]
    out = []
    for row in NAME_MAP:
        if "{i}" in row[col]:
            out += [row[col].replace("{i}", str(i)) for i in range(cfg.n_layer)]
        elif not (row[0] == "lm_head.weight" and cfg.tie_embeddings):
            out.append(row[col])
    return out


def rename_state(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """Rename every tensor of ``state`` from ``src`` to ``dst`` naming; a name missing from the table is an error."""
    out = {}
    for name, tensor in state.items():
        new = map_name(name, src, dst)
        if new is None:
            raise UsageError(f"weight '{name}' has no entry in the {src} -> {dst} name table (unsupported weight)")
        out[new] = tensor
    return out


# --------------------------------------------------------------------------------------------- configs

def hf_config(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """config.json for ``LlamaForCausalLM``; rope both ways (transformers 4: rope_theta, 5: rope_parameters)."""
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[END],
        "pad_token_id": ids[PAD],
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def generation_config() -> dict[str, Any]:
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    return {"bos_token_id": ids[BOS], "eos_token_id": ids[END], "pad_token_id": ids[PAD], "do_sample": False}


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """A ModelConfig from a Hugging Face config.json; anything our model cannot represent is a UsageError naming it."""
    archs = hf.get("architectures") or ["LlamaForCausalLM"]
    if list(archs) != ["LlamaForCausalLM"]:
        raise UsageError(f"{where}: architectures={archs}: unsupported (only LlamaForCausalLM can be imported)")
    if hf.get("model_type", "llama") != "llama":
        raise UsageError(f"{where}: model_type={hf['model_type']!r}: unsupported (only 'llama')")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(hf.get(key), int) or hf[key] <= 0:
            raise UsageError(f"{where}: {key}: missing or not a positive integer (got {hf.get(key)!r})")
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
    if hf.get("attention_bias"):
        problems.append("attention_bias=true (our attention has no biases)")
    if hf.get("mlp_bias"):
        problems.append("mlp_bias=true (our MLP has no biases)")
    if hf.get("rope_scaling"):
        problems.append(f"rope_scaling={hf['rope_scaling']} (only plain RoPE)")
    rope_params = hf.get("rope_parameters") or {}
    if rope_params.get("rope_type", "default") != "default":
        problems.append(f"rope_parameters.rope_type={rope_params['rope_type']!r} (only 'default')")
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    if hf.get("head_dim") not in (None, hidden // heads) or hidden % heads:
        problems.append(f"head_dim={hf.get('head_dim')} != hidden_size/num_attention_heads={hidden}/{heads}")
    if hf.get("quantization_config"):
        problems.append("quantization_config (quantized weights)")
    if hf.get("pretraining_tp", 1) != 1:
        problems.append(f"pretraining_tp={hf['pretraining_tp']} (only 1)")
    if problems:
        raise UsageError(f"{where}: unsupported: {'; '.join(problems)}")
    theta = rope_params.get("rope_theta", hf.get("rope_theta", 10000.0))
    try:
        return ModelConfig(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=hidden, n_head=heads,
                           n_kv_head=hf.get("num_key_value_heads") or heads,
                           intermediate_size=hf["intermediate_size"],
                           max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=float(theta),
                           norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    except ValueError as e:
        raise UsageError(f"{where}: unsupported shape ({e})") from None


# --------------------------------------------------------------------------------------------- tokenizer

def hf_tokenizer_json(run_tokenizer_json: Path) -> str:
    """The run's tokenizer.json with a post-processor that prepends <|bos|> (see "How prompts are fed" above)."""
    from tokenizers import processors

    from scalelab.lm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(run_tokenizer_json)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1",
                                                       special_tokens=[(BOS, bos)])
    return tok.to_str(pretty=True)


def write_hf_tokenizer(run_tokenizer_json: Path, out: Path, max_len: int) -> None:
    """tokenizer.json (+ BOS post-processor), tokenizer_config.json, special_tokens_map.json, chat_template.jinja."""
    from scalelab.lm.chat import CHAT_TEMPLATE

    (out / "tokenizer.json").write_text(hf_tokenizer_json(run_tokenizer_json), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": END, "pad_token": PAD,
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False}
                                 for i, t in enumerate(SPECIAL_TOKENS)},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": END, "pad_token": PAD}, indent=2) + "\n", encoding="utf-8")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


# --------------------------------------------------------------------------------------------- export

@dataclass
class ExportResult:
    out: Path
    step_dir: Path
    files: list[str] = field(default_factory=list)


def export_state(model: GPT, fmt: str = "hf") -> dict[str, torch.Tensor]:
    """Our weights under ``fmt`` names, contiguous, on CPU; a tied output layer is stored once (as the embedding)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return rename_state(state, "scalelab", fmt)


def _model_card(run: Path, step_dir: Path, meta: dict[str, Any], cfg: ModelConfig, n_params: int) -> str:
    return (
        f"# scalelab export of `{run.name}`\n\n"
        f"A Llama-style model trained with scalelab (stage `{meta.get('stage', step_dir.parent.name)}`, "
        f"step {meta.get('step', '?')}), {n_params:,} parameters: {cfg.n_layer} layers, width {cfg.n_embd}, "
        f"{cfg.n_head} heads ({cfg.n_kv_head} key/value), context {cfg.max_seq_len}, vocabulary {cfg.vocab_size}.\n\n"
        "```python\nfrom transformers import pipeline\n"
        "pipe = pipeline(\"text-generation\", model=\"PATH/TO/THIS/FOLDER\")\n"
        "print(pipe(\"Once upon a time\", max_new_tokens=40, do_sample=False)[0][\"generated_text\"])\n"
        "print(pipe([{\"role\": \"user\", \"content\": \"Hello!\"}], max_new_tokens=40)[0][\"generated_text\"])\n"
        "```\n\n"
        f"Plain-text prompts get `{BOS}` prepended by the tokenizer (the model saw it before every document); chat "
        f"prompts use the chat template, which starts with `{BOS}`. Turns end with `{END}`, the EOS token.\n"
    )


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished temp folder into place, replacing an older export only after the new one is complete."""
    old = None
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file()
                                and not (out / "model.safetensors").is_file()):
            raise UsageError(f"{out}: exists and is not an earlier export; choose another --out")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_hf(run: str | Path, out: str | Path, stage: str | None = None, dtype: str = "fp32") -> ExportResult:
    """Write a Hugging Face ``LlamaForCausalLM`` folder for a run's latest checkpoint of ``stage`` (chat, else base)."""
    from safetensors.torch import save_file

    from scalelab.common import torch_dtype

    if dtype not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"--dtype {dtype!r}: choose fp32, bf16 or fp16")
    run, out = Path(run), Path(out)
    model, meta, step_dir, tokenizer_json = load_for_export(run, stage)
    cfg = model.config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    usual_mode(tmp)  # mkdtemp makes it owner-only: other users (a model server) must read the export
    try:
        hf_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
        state = {k: v.to(torch_dtype(dtype)) for k, v in export_state(model, "hf").items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        usual_mode(tmp / "model.safetensors")
        write_json(tmp / "config.json", hf_config(cfg, hf_dtype))
        write_json(tmp / "generation_config.json", generation_config())
        write_hf_tokenizer(tokenizer_json, tmp, cfg.max_seq_len)
        atomic_write_text(tmp / "README.md", _model_card(run, step_dir, meta, cfg, model.num_params()))
        write_json(tmp / "scalelab.json", {"source_step_dir": str(step_dir), "step": meta.get("step"),
                                           "stage": meta.get("stage"), "model_config": cfg.to_dict()})
        files = sorted(p.name for p in tmp.iterdir())
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out=out, step_dir=step_dir, files=files)


def load_for_export(run: Path, stage: str | None) -> tuple[Any, dict[str, Any], Path, Path]:
    """The checkpoint to export and its run's tokenizer.json, checked to belong together (HF and GGUF)."""
    from scalelab.lm.data.tokenizer import find_tokenizer

    step_dir = resolve_checkpoint(run, stage)
    model, meta, _ = load_model(step_dir)
    tokenizer_json = find_tokenizer(run, step_dir)
    if tokenizer_json is None:
        raise UsageError(f"{RunDir(run).tokenizer_json}: not found (the export needs the run's tokenizer)")
    _check_tokenizer(tokenizer_json, meta, step_dir)
    return model, meta, step_dir, tokenizer_json


def _check_tokenizer(tokenizer_json: Path, meta: dict[str, Any], step_dir: Path) -> None:
    from scalelab.lm.data.tokenizer import tokenizer_sha256

    want = meta.get("tokenizer_sha256")
    if want and tokenizer_sha256(tokenizer_json) != want:
        raise UsageError(f"{tokenizer_json}: does not match the tokenizer the checkpoint {step_dir} was trained with "
                         "(tokenizer_sha256 differs)")


# --------------------------------------------------------------------------------------------- import

def load_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face folder: model.safetensors, or the shards listed in model.safetensors.index.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UsageError(f"{index}: missing or empty 'weight_map'")
        files = sorted(set(weight_map.values()))
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        bins = [p.name for p in src.glob("*.bin")]
        hint = " (pytorch_model.bin is pickle: convert it to safetensors first)" if bins else ""
        raise UsageError(f"{src}: no model.safetensors or model.safetensors.index.json{hint}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = src / name
        if not path.is_file():
            raise UsageError(f"{path}: shard listed in model.safetensors.index.json is missing")
        try:
            state.update(load_file(str(path)))
        except (OSError, SafetensorError, ValueError) as e:
            raise UsageError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    return state


def import_hf(src: str | Path, run: str | Path, stage: str = "base", force: bool = False) -> Path:
    """Turn a local ``LlamaForCausalLM`` folder into a scalelab run (checkpoint + tokenizer); returns the step dir."""
    from scalelab.lm.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_sha256

    src, run_dir = Path(src), RunDir(run)
    if not src.is_dir():
        raise UsageError(f"{src}: not a folder (expected a Hugging Face model folder with config.json)")
    cfg = config_from_hf(read_json(src / "config.json"), str(src / "config.json"))
    if run_dir.latest_step_dir(stage) is not None and not force:
        raise UsageError(f"{run_dir.stage_dir(stage)}: already has a checkpoint (use another --run or --force)")
    if not (src / "tokenizer.json").is_file():
        raise UsageError(f"{src / 'tokenizer.json'}: not found (a fast tokenizer with scalelab's special tokens "
                         "is required)")
    tok = load_tokenizer(src / "tokenizer.json")
    if tok.get_vocab_size() > cfg.vocab_size:
        raise UsageError(f"{src / 'tokenizer.json'}: {tok.get_vocab_size()} tokens but the model's vocab_size is "
                         f"{cfg.vocab_size}")
    hf_state = load_hf_weights(src)
    if cfg.tie_embeddings:
        hf_state.pop("lm_head.weight", None)  # some writers store the tied copy too
    want, have = set(expected_names(cfg, "hf")), set(hf_state)
    if want - have:
        raise UsageError(f"{src}: missing weights: {', '.join(sorted(want - have)[:5])}")
    if have - want:
        raise UsageError(f"{src}: unsupported weights (not in a plain Llama): {', '.join(sorted(have - want)[:5])}")
    state = {k: v.to(torch.float32) for k, v in rename_state(hf_state, "hf", "scalelab").items()}
    model = GPT(cfg)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{src}: weights do not match config.json ({str(e).splitlines()[-1][:200]})") from None
    tok.post_processor = None  # the run's tokenizer adds nothing; see "How prompts are fed"
    save_tokenizer(tok, run_dir.tokenizer_dir)
    extra = read_json(src / "scalelab.json") if (src / "scalelab.json").is_file() else {}
    meta = {"model_config": cfg.to_dict(), "tokenizer_sha256": tokenizer_sha256(run_dir.tokenizer_json),
            "imported_from": str(src.resolve()), "source_step": extra.get("step")}
    step_dir = save_checkpoint(run_dir, stage, 0, model, meta)
    print0(f"imported {src} -> {step_dir} ({model.num_params():,} parameters)")
    return step_dir

