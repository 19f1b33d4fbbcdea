"""SFT: loss masks on assistant tokens only, packing, overlong conversations, all-masked batches, resume via train."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalelab.lm.posttrain.sft import SFTSource, fit_conversation, pack_rows, rows_to_xy

PAD = 1


@pytest.fixture(scope="module")
def tok():
    from scalelab.lm.data.tokenizer import train_tokenizer

    text = ["What is 12 plus 30? The answer is 42. Hello there, how are you today? I am fine, thank you."] * 50
    return train_tokenizer(text, vocab_size=300)


def test_targets_are_exactly_the_assistant_tokens(tok) -> None:
    from scalelab.lm.chat import render

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 plus 30?"},
            {"role": "assistant", "content": "42"}, {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "I am fine, thank you."}]
    ids, mask = render(tok, msgs)
    rows, masks, stats = pack_rows([(ids, mask)], seq_len=64, pad_id=PAD)
    x, y = rows_to_xy(rows, masks)
    assert x.shape == y.shape == (1, 64) and stats.rows == 1 and stats.kept == 1
    targets = [int(t) for t in y[0] if t != -1]
    # the learned tokens decode to the two assistant replies, each with its closing <|end|>, and nothing else
    assert tok.decode(targets, skip_special_tokens=False) == "42<|end|>I am fine, thank you.<|end|>"
    end_id = tok.token_to_id("<|end|>")
    n_user_ends = 3  # system, user, user turns end with <|end|> too but are not targets
    assert sum(int(t) == end_id for t in x[0]) == n_user_ends + 2 and targets.count(end_id) == 2
    # x is the row shifted: y[t] is x[t + 1] wherever it is a target
    for t in range(63):
        if y[0, t] != -1:
            assert y[0, t] == x[0, t + 1]
    assert (x[0, len(ids):] == PAD).all() and (y[0, len(ids) - 1:] == -1).all()


def test_packing_keeps_conversations_whole_and_counts_overlong() -> None:
    convs = [([0] + [7] * n, [0] + [0] * (n // 2) + [1] * (n - n // 2)) for n in (5, 9, 3, 12, 20)]
    rows, masks, stats = pack_rows(convs, seq_len=15, pad_id=PAD, seed=1)
    # the 21-token conversation is longer than a row of 16: truncated (its first 16 tokens still hold targets)
    assert stats.truncated == 1 and stats.dropped == 0 and stats.kept == 5
    assert rows.shape[1] == 16 and masks.shape == rows.shape
    assert stats.tokens == 6 + 10 + 4 + 13 + 16 and int(rows[rows != PAD].size) == stats.tokens
    assert 0 < stats.fill <= 1 and stats.rows < 5  # some conversations share a row
    # drop policy, and a conversation whose first row has no assistant tokens is dropped either way
    long_prompt = ([0] + [7] * 40, [0] * 35 + [1] * 6)
    _, _, s2 = pack_rows([long_prompt, convs[0]], seq_len=15, pad_id=PAD)
    assert s2.dropped == 1 and s2.kept == 1
    _, _, s3 = pack_rows(convs, seq_len=15, pad_id=PAD, overlong="drop")
    assert s3.dropped == 1 and s3.truncated == 0
    # no packing: one conversation per row
    rows, _, s4 = pack_rows(convs[:4], seq_len=15, pad_id=PAD, pack=False)
    assert s4.rows == 4
    assert fit_conversation([0, 5, 6], [0, 0, 0], 10)[1] == "no_target"


def test_source_is_deterministic_and_epochs_cover_every_row() -> None:
    convs = [([0] + [i + 6] * 6, [0] * 4 + [1] * 3) for i in range(40)]
    rows, masks, _ = pack_rows(convs, seq_len=7, pad_id=PAD, pack=False)
    src = SFTSource(rows, masks, None, None, batch_size=4, grad_accum=2, seed=3)
    again = SFTSource(rows, masks, None, None, batch_size=4, grad_accum=2, seed=3)
    assert torch.equal(src.next_batch(3, 1)[0], again.next_batch(3, 1)[0])
    seen = torch.cat([src.next_batch(s, m)[0][:, 1] for s in range(5) for m in range(2)])  # 40 rows = one epoch
    assert sorted(seen.tolist()) == list(range(6, 46))
    # two ranks x accumulation 1 read the rows of one rank x accumulation 2
    r0 = SFTSource(rows, masks, None, None, batch_size=4, grad_accum=1, rank=0, world_size=2, seed=3)
    r1 = SFTSource(rows, masks, None, None, batch_size=4, grad_accum=1, rank=1, world_size=2, seed=3)
    assert torch.equal(torch.cat([r0.next_batch(2, 0)[0], r1.next_batch(2, 0)[0]]),
                       torch.cat([src.next_batch(2, 0)[0], src.next_batch(2, 1)[0]]))


def test_all_masked_batch_gives_finite_zero_gradient() -> None:
    from scalelab.lm.model import GPT, ModelConfig
    from scalelab.lm.train.loss import LossSum

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, n_layer=1, n_embd=32, n_head=2, n_kv_head=2, max_seq_len=16))
    x = torch.randint(0, 32, (2, 8))
    y = torch.full((2, 8), -1)
    loss_sum = LossSum(model)(x, y)
    # the loop divides the summed loss by max(unmasked count, 1): finite, and zero gradients
    loss = loss_sum / max(int((y != -1).sum()), 1)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    # the model's own mean loss would be NaN here: the point of the summed form
    assert torch.isnan(model(x, y)[1])


def test_empty_source_is_a_usage_error() -> None:
    from scalelab.common import UsageError

    with pytest.raises(UsageError, match="no training rows"):
        SFTSource(np.zeros((0, 8), np.int32), np.zeros((0, 8), np.uint8), None, None, batch_size=2)


BAD_FILES = {
    "bad_json.jsonl": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                       '{"messages": [\n', r"bad_json.jsonl:2: invalid JSON"),
    "bad_role.jsonl": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "yo"}]}\n',
                       r"bad_role.jsonl:1: messages\[1\].role: unknown role 'robot'"),
    "empty.jsonl": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}\n',
                    r"empty.jsonl:1: messages\[1\].content: empty"),
    "no_assistant.jsonl": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]}\n'
                           '{"messages": [{"role": "user", "content": "hi"}]}\n',
                           r"no_assistant.jsonl:2: messages: no assistant turn"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_sft_cli_reports_malformed_conversation_files(name, tmp_path, capsys) -> None:
    import re

    from scalelab.__main__ import main

    text, pattern = BAD_FILES[name]
    (tmp_path / name).write_text(text)
    (tmp_path / "run").mkdir()
    rc = main(["sft", "--run", str(tmp_path / "run"), "--data", f"{tmp_path / name}:2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err


def test_sft_without_a_base_checkpoint_is_a_clear_error(tmp_path, capsys) -> None:
    from scalelab.__main__ import main

    (tmp_path / "run").mkdir()
    assert main(["sft", "--run", str(tmp_path / "run")]) == 2
    hint = f"no checkpoint to start from (run `scalelab pretrain --run {tmp_path / 'run'}` first)"
    assert hint in capsys.readouterr().err


def test_sft_batch_geometry_is_pretrainings_and_a_start_writes_config_once(tmp_path, capsys, monkeypatch) -> None:
    """SFT sizes its batches with train.config.batch_geometry (a total that does not divide is refused, not floored),
    and one SFT start writes config.json once, with the stage, its mixture and its packing report."""
    import json

    from test_chat_cli import scripted_run

    import scalelab.config
    from scalelab.__main__ import main

    run = scripted_run(tmp_path / "run", stage="base")
    args = ["sft", "--run", str(run), "--tasks", "arithmetic:1", "--conversations", "40", "--batch-size", "2",
            "--seq-len", "32", "--device", "cpu", "--dtype", "fp32", "--max-steps", "1", "--preflight-steps", "0",
            "--eval-every", "0", "--sample-max-tokens", "0"]
    assert main([*args, "--total-batch-tokens", "100"]) == 2
    assert ("--total-batch-tokens 100 must be a multiple of batch-size * seq-len * processes = 2 * 32 * 1 = 64"
            in capsys.readouterr().err)
    writes = []
    write = scalelab.config.atomic_write_text
    monkeypatch.setattr(scalelab.config, "atomic_write_text", lambda path, text: (writes.append(path),
                                                                                   write(path, text)))
    assert main([*args, "--total-batch-tokens", "128"]) == 0
    assert [p for p in writes if p.name == "config.json"] == [run / "config.json"]
    saved = json.loads((run / "config.json").read_text())
    assert set(saved) == {"chat", "sft_mixture", "sft_data"} and saved["chat"]["total_batch_tokens"] == 128
