"""Hugging Face export/import: logits and greedy text equal to transformers, round trip, clear errors.

    .venv/bin/pytest -q tests/test_export.py

A tiny model (2 layers, width 64) is trained for a couple of hundred steps on real text (tiny Shakespeare) so that
greedy text is not degenerate; everything runs offline (HF_HUB_OFFLINE=1) from local folders.
tests/test_gguf.py reuses ``tiny_run`` from here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from data_fixtures import shakespeare_bytes

from scalelab.__main__ import main
from scalelab.lm.checkpoint import load_model, load_state, resolve_checkpoint, save_checkpoint
from scalelab.lm.interop.hf import NAME_MAP, expected_names, export_hf, map_name
from scalelab.lm.model import GPT, ModelConfig
from scalelab.lm.special_tokens import BOS, END, PAD
from scalelab.runs import RunDir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_tiny_run(root: Path, tie: bool = False, steps: int = 200, seed: int = 0) -> RunDir:
    """A run folder with a trained byte-level BPE tokenizer and a briefly trained tiny GPT (stage "base")."""
    from scalelab.lm.data.tokenizer import save_tokenizer, tokenizer_sha256, train_tokenizer

    text = shakespeare_bytes().decode("utf-8")
    docs = [d for d in text.split("\n\n") if d.strip()]
    run = RunDir(root)
    tok = train_tokenizer(docs, vocab_size=512, show_progress=False)
    save_tokenizer(tok, run.tokenizer_dir)
    bos = tok.token_to_id(BOS)
    ids: list[int] = []
    for doc in docs:  # <|bos|> before every document, as the data pipeline does
        ids += [bos] + tok.encode(doc).ids
    data = torch.tensor(ids, dtype=torch.long)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=128,
                      tie_embeddings=tie)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    T, B, loss = 64, 16, None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread, and the machine is shared
    try:
        for _ in range(steps):
            starts = torch.randint(0, len(data) - T - 1, (B,))
            x = torch.stack([data[s:s + T] for s in starts])
            y = torch.stack([data[s + 1:s + T + 1] for s in starts])
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    meta = {"model_config": cfg.to_dict(), "tokenizer_sha256": tokenizer_sha256(run.tokenizer_json),
            "final_loss": None if loss is None else loss.item()}
    save_checkpoint(run, "base", steps, model.eval(), meta)
    return run


_RUNS: dict[bool, Path] = {}


def tiny_run(factory: pytest.TempPathFactory, tie: bool = False) -> Path:
    """One trained run per session (untied: trained; tied: untrained weights are enough for exact comparisons)."""
    if tie not in _RUNS:
        _RUNS[tie] = make_tiny_run(factory.mktemp(f"run_tie{int(tie)}"), tie=tie, steps=0 if tie else 200).root
    return _RUNS[tie]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    out = {}
    for tie in (False, True):
        out[tie] = export_hf(tiny_run(tmp_path_factory, tie), tmp_path_factory.mktemp("hf") / "model").out
    return out


def test_name_table_is_one_to_one_and_covers_every_weight() -> None:
    for tie in (False, True):
        cfg = ModelConfig(vocab_size=300, n_layer=3, n_embd=64, n_head=4, n_kv_head=2, tie_embeddings=tie)
        ours = set(GPT(cfg).state_dict()) - ({"lm_head.weight"} if tie else set())
        assert set(expected_names(cfg, "scalelab")) == ours
        for fmt in ("hf", "gguf"):
            mapped = [map_name(n, "scalelab", fmt) for n in ours]
            assert None not in mapped and len(set(mapped)) == len(ours)
            assert set(mapped) == set(expected_names(cfg, fmt))
            assert all(map_name(m, fmt, "scalelab") == n for n, m in zip(ours, mapped))
    assert len({row[1] for row in NAME_MAP}) == len(NAME_MAP)


@pytest.mark.parametrize("tie", [False, True])
def test_hf_export_loads_offline_and_logits_match(exported, tmp_path_factory, tie: bool) -> None:
    from transformers import AutoModelForCausalLM

    out = exported[tie]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not owner-only: a model server running as another user
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~mask for p in out.iterdir())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is tie
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (0, 5, 1)
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ours, _, _ = load_model(tiny_run(tmp_path_factory, tie))
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, ours.config.vocab_size, (4, 48), generator=g)
    with torch.no_grad():
        diff = (hf(idx).logits.float() - ours(idx)[0]).abs().max().item()
    print(f"max |logit difference| ours vs transformers (tie={tie}): {diff:.3g}")
    assert diff <= 1e-4


def test_hf_tokenizer_feeds_the_same_ids(exported, tmp_path_factory) -> None:
    from transformers import AutoTokenizer

    from scalelab.lm.chat import render_prompt
    from scalelab.lm.data.tokenizer import load_tokenizer

    hf_tok = AutoTokenizer.from_pretrained(exported[False], local_files_only=True)
    tok = load_tokenizer(tiny_run(tmp_path_factory))
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == (BOS, END, PAD)
    text = "ROMEO:\nWhat light through yonder window breaks? é ✓"
    assert hf_tok(text)["input_ids"] == [0] + tok.encode(text).ids  # plain text: <|bos|> prepended once
    assert hf_tok.decode(hf_tok(text)["input_ids"], skip_special_tokens=True) == text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(ids["input_ids"]) == render_prompt(tok, messages)  # chat: the template's own <|bos|>, no second one


def test_pipeline_greedy_text_equals_scalelab_sample(exported, tmp_path_factory, capsys) -> None:
    """transformers' pipeline (do_sample=False) == `scalelab sample --temperature 0`: same ids, same decoded text."""
    from transformers import pipeline

    from scalelab.lm.chat import render_prompt
    from scalelab.lm.data.tokenizer import load_tokenizer
    from scalelab.lm.inference.batching import generate

    run = tiny_run(tmp_path_factory)
    model, _, _ = load_model(run)
    tok = load_tokenizer(run)
    pipe = pipeline("text-generation", model=str(exported[False]), device="cpu")
    n = 40
    for prompt in ("ROMEO:\n", "The king"):
        ours_ids = list(generate(model, [0] + tok.encode(prompt).ids, n, temperature=0, stop_ids=[5]))
        assert len(set(ours_ids)) > 5, "greedy text is degenerate; the fixture model is undertrained"
        enc = pipe.tokenizer(prompt, return_tensors="pt")
        hf_ids = pipe.model.generate(**enc, max_new_tokens=n, do_sample=False)[0, enc["input_ids"].shape[1]:]
        assert hf_ids.tolist() == ours_ids
        text = pipe(prompt, max_new_tokens=n, do_sample=False, return_full_text=False)[0]["generated_text"]
        assert text == tok.decode(ours_ids)
        # the command itself (fp32: its "auto" dtype would be bf16 here); it also stops at <|bos|>, hence the cut
        capsys.readouterr()
        assert main(["sample", "--run", str(run), "--prompt", prompt, "--max-tokens", str(n), "--temperature", "0",
                     "--dtype", "fp32", "--device", "cpu"]) == 0
        cut = next((i for i, t in enumerate(ours_ids) if t < 6), len(ours_ids))
        assert capsys.readouterr().out == prompt + tok.decode(ours_ids[:cut]) + "\n"
        if cut == len(ours_ids):
            assert text == tok.decode(ours_ids[:cut])
    messages = [{"role": "user", "content": "Who art thou?"}]
    ours_ids = list(generate(model, render_prompt(tok, messages), n, temperature=0, stop_ids=[5]))
    chat = pipe(messages, max_new_tokens=n, do_sample=False)[0]["generated_text"]
    assert chat[-1]["role"] == "assistant" and chat[-1]["content"] == tok.decode(ours_ids)


@pytest.mark.parametrize("tie", [False, True])
def test_export_then_import_gives_identical_weights(exported, tmp_path, tmp_path_factory, tie: bool) -> None:
    from scalelab.lm.data.tokenizer import tokenizer_sha256

    src_run = tiny_run(tmp_path_factory, tie)
    assert main(["import", "--format", "hf", str(exported[tie]), "--run", str(tmp_path / "imp")]) == 0
    a, b = load_state(resolve_checkpoint(src_run, "base")), load_state(resolve_checkpoint(tmp_path / "imp", "base"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tokenizer_sha256(src_run) == tokenizer_sha256(tmp_path / "imp")  # the BOS post-processor is removed again
    model, meta, _ = load_model(tmp_path / "imp", "base")  # ready to continue training
    assert meta["model_config"]["tie_embeddings"] is tie
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    # importing over an existing checkpoint needs --force
    assert main(["import", "--format", "hf", str(exported[tie]), "--run", str(tmp_path / "imp")]) == 2


def test_import_sharded_bf16_checkpoint(exported, tmp_path, tmp_path_factory) -> None:
    from safetensors.torch import load_file, save_file

    src = tmp_path / "sharded"
    shutil.copytree(exported[False], src)
    state = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: state[k].to(torch.bfloat16) for k in keys}, str(src / fname), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["import", str(src), "--run", str(tmp_path / "imp")]) == 0
    a = load_state(resolve_checkpoint(tiny_run(tmp_path_factory), "base"))
    b = load_state(resolve_checkpoint(tmp_path / "imp", "base"))
    assert all(b[k].dtype == torch.float32 and torch.equal(a[k].to(torch.bfloat16).float(), b[k]) for k in a)


@pytest.mark.parametrize("change, named", [
    ({"architectures": ["MistralForCausalLM"]}, "architectures"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}}, "rope_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"head_dim": 32}, "head_dim"),
])
def test_import_unsupported_architecture_is_named(exported, tmp_path, capsys, change, named) -> None:
    src = tmp_path / "src"
    shutil.copytree(exported[False], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(change)
    (src / "config.json").write_text(json.dumps(cfg))
    assert main(["import", "--format", "hf", str(src), "--run", str(tmp_path / "imp")]) == 2
    err = capsys.readouterr().err
    assert named in err and "unsupported" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "imp" / "base").exists()


def test_import_extra_weights_and_missing_files_are_named(exported, tmp_path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(exported[False], src)
    state = load_file(str(src / "model.safetensors"))
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(state, str(src / "model.safetensors"))
    assert main(["import", str(src), "--run", str(tmp_path / "a")]) == 2
    assert "q_proj.bias" in capsys.readouterr().err
    (src / "model.safetensors").unlink()
    assert main(["import", str(src), "--run", str(tmp_path / "b")]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_export_without_checkpoint_is_a_usage_error(tmp_path, capsys) -> None:
    run = RunDir(tmp_path / "empty")
    run.tokenizer_dir.mkdir(parents=True)
    for fmt in ("hf", "gguf"):
        assert main(["export", "--run", str(run.root), "--format", fmt, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "no checkpoint" in err and "Traceback" not in err
    assert main(["export", "--run", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "o").exists()


def test_import_then_continue_pretraining_is_one_obvious_path(exported, tmp_path, capsys) -> None:
    """A Llama folder with a padded vocabulary, imported, then the hinted commands as printed: the model's shape
    comes from the import (no preset applied), the weights-only checkpoint starts the run, nothing else is asked."""
    import shlex

    from safetensors.torch import load_file, save_file

    src = tmp_path / "llama"
    shutil.copytree(exported[False], src)
    state = load_file(str(src / "model.safetensors"))
    pad = 64  # vocabularies are often padded to a multiple of 64 for speed
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        state[name] = torch.cat([state[name], torch.zeros(pad, state[name].shape[1])])
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] += pad
    (src / "config.json").write_text(json.dumps(cfg))
    run = tmp_path / "imp"
    assert main(["import", "--format", "hf", str(src), "--run", str(run)]) == 0
    capsys.readouterr()
    flags = ["--max-steps", "2", "--batch-size", "2", "--seq-len", "32", "--device", "cpu", "--dtype", "fp32",
             "--preflight-steps", "0", "--sample-max-tokens", "0", "--eval-tokens", "256"]
    # no token data yet: the hint names a command that runs as printed
    assert main(["pretrain", "--run", str(run), *flags]) == 2
    err = capsys.readouterr().err
    hint = err.split("(run `")[1].split("` first)")[0]
    assert hint == f"scalelab tokenizer --run {run} --tokenizer {run} --corpus stdlib"
    corpus = str(Path(__file__).resolve().parents[1] / "scalelab" / "lm")  # a small corpus instead of the stdlib
    argv = shlex.split(hint)[1:]
    assert main([*argv[:-1], corpus]) == 0
    assert main(["pretrain", "--run", str(run), *flags]) == 0
    out = capsys.readouterr().out
    assert f"starting from the weights of {run / 'base' / 'step_0000000'}" in out
    meta = json.loads((run / "base" / "step_0000002" / "meta.json").read_text())
    imported = json.loads((run / "base" / "step_0000000" / "meta.json").read_text())["model_config"]
    assert meta["model_config"] == {**imported, "max_seq_len": imported["max_seq_len"]}
    assert meta["model_config"]["vocab_size"] == cfg["vocab_size"]
    # and the next run resumes it like any other
    assert main(["pretrain", "--run", str(run), *flags[:1], "4", *flags[2:]]) == 0
    assert "resuming" in capsys.readouterr().out


def test_import_refuses_a_tokenizer_without_scalelab_special_tokens(exported, tmp_path, capsys) -> None:
    """What the README says an importable tokenizer needs: scalelab's special tokens at ids 0-5; another model's
    tokenizer is refused in one line naming what it found, and no run is written."""
    src = tmp_path / "llama"
    shutil.copytree(exported[False], src)
    text = (src / "tokenizer.json").read_text(encoding="utf-8").replace("<|bos|>", "<s>")
    (src / "tokenizer.json").write_text(text, encoding="utf-8")
    assert main(["import", "--format", "hf", str(src), "--run", str(tmp_path / "imp")]) == 2
    err = capsys.readouterr().err
    assert "special tokens must have ids" in err and "not a scalelab tokenizer" in err and "Traceback" not in err
    assert not (tmp_path / "imp" / "base").exists()
