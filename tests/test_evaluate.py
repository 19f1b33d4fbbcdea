"""Evaluation: log-likelihood multiple choice on hand-made cases, and task scoring through a stub completion."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from data_fixtures import needs_sets

from scalelab.common import UsageError
from scalelab.lm.model import GPT, ModelConfig
from scalelab.lm.posttrain.multiple_choice import (
    MC_SETS,
    MCItem,
    continuation_logprobs,
    evaluate_mc,
    load_mc_file,
    load_mc_set,
    option_tokens,
)


class CharTok:
    """A stand-in tokenizer: one id per character (ord mod 50, shifted past the 6 special ids)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(ids=[6 + ord(c) % 50 for c in text])


class Prefers(torch.nn.Module):
    """A 'model' whose next-token distribution always favours one token id (log-probs known in closed form)."""

    def __init__(self, favourite: int, vocab: int = 64) -> None:
        super().__init__()
        self.config = SimpleNamespace(max_seq_len=64)
        self.bias = torch.nn.Parameter(torch.zeros(vocab))
        with torch.no_grad():
            self.bias[favourite] = 5.0

    def forward(self, idx: torch.Tensor, targets=None):
        return self.bias.expand(*idx.shape, -1), None


def test_log_likelihood_picks_the_more_likely_option() -> None:
    tok = CharTok()
    fav = CharTok().encode("a").ids[0]
    model = Prefers(fav)
    # "aaa" is made of the favourite token; "abc" is not; the gold label sits on each option in turn
    items = [MCItem(["Q:"] * 2, ["aaa", "abc"], 0), MCItem(["Q:"] * 2, ["xyz", "aaa"], 1),
             MCItem(["Q:"] * 3, ["bbb", "ccc", "aaa"], 0)]
    res = evaluate_mc(model, tok, items, show_progress=False)
    assert res["n"] == 3 and res["accuracy"] == pytest.approx(2 / 3) and res["accuracy_norm"] == pytest.approx(2 / 3)
    assert res["chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
    # closed form: log p(fav) = 5 - log(e^5 + 63), log p(other) = -log(e^5 + 63); the separator space is not fav
    z = math.log(math.exp(5) + 63)
    ids, n = option_tokens(tok, "Q:", "aaa")
    assert n == 4  # " aaa"
    got = continuation_logprobs(model, [(ids, n)])[0]
    assert got == pytest.approx(3 * (5 - z) + (-z), abs=1e-4)


def test_length_normalisation_can_disagree_with_the_total() -> None:
    tok = CharTok()
    model = Prefers(CharTok().encode("a").ids[0])
    # a long option of favoured tokens has a lower total but a higher per-byte log-likelihood than a short odd one
    item = MCItem(["Q:"] * 2, ["z", "a" * 30], 1)
    res = evaluate_mc(model, tok, [item], show_progress=False)
    assert res["accuracy"] == 0.0 and res["accuracy_norm"] == 1.0


def test_batched_padded_scores_equal_one_by_one() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_kv_head=1, max_seq_len=32)).eval()
    tok = CharTok()
    seqs = [option_tokens(tok, c, k) for c, k in [("The cat", "sat"), ("A much longer context here", "ok"),
                                                   ("x", "a long continuation"), ("q", "r")]]
    batched = continuation_logprobs(model, seqs, batch_size=4)
    for (ids, n), b in zip(seqs, batched):
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids[:-1]]))
        logp = torch.log_softmax(logits[0], -1)
        ref = sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids)))
        assert b == pytest.approx(ref, abs=1e-4)
    # longer than the context: the last tokens are kept, still finite
    long_seq = option_tokens(tok, "w" * 100, "end")
    assert math.isfinite(continuation_logprobs(model, [long_seq])[0])


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_sets(MC_SETS[n].split("/")[0]))
                                  for n in MC_SETS if n != "hellaswag"])
def test_every_shared_set_loads(name: str) -> None:
    items = load_mc_set(name, limit=4)
    assert len(items) == 4
    for it in items:
        assert len(it.contexts) == len(it.continuations) >= 2 and 0 <= it.gold < len(it.contexts)


def test_bad_multiple_choice_files_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q", "choices": ["a"], "gold": 0}\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2: choices"):
        load_mc_file(bad)
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 5}\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:1: gold"):
        load_mc_file(bad)
    hs = tmp_path / "hs.txt"
    hs.write_text("ctx\nx\na\nb\nc\nd\n")
    with pytest.raises(UsageError, match=r"hs.txt:2: gold"):
        load_mc_file(hs)
    with pytest.raises(UsageError, match="unknown multiple-choice set"):
        load_mc_set("nope")


# ----------------------------------------------------------------------------------------------- task scoring


@pytest.fixture(scope="module")
def tok():
    from scalelab.lm.data.tokenizer import train_tokenizer

    text = ["What is 12 plus 30? Add 4 and 5. Subtract 3 from 9. Calculate 7 * 8. The sum of 1 and 2."] * 50
    return train_tokenizer(text, vocab_size=300)


def test_task_scores_through_a_stub_completion(tok) -> None:
    from scalelab.lm.chat import render_prompt
    from scalelab.lm.posttrain.evaluate import decode, evaluate_task
    from scalelab.lm.posttrain.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(max_digits=2)
    examples = task.eval_examples(4, seed=0)
    answers = {tuple(render_prompt(tok, ex.messages)): ex.reference["answer"] for ex in examples}
    # hand-checked: the stub answers examples 0 and 2 right (1 with a closing <|end|>), 1 wrong, 3 right without <|end|>
    canned = {0: "{a}<|end|>", 1: "{wrong}<|end|>", 2: "The answer is {a}.<|end|>", 3: "{a}"}
    order = [tuple(render_prompt(tok, ex.messages)) for ex in examples]
    seen_stops = []

    def stub(prompts, stop_ids):
        seen_stops.append(stop_ids)
        out = []
        for p in prompts:
            a = answers[tuple(p)]
            out.append(canned[order.index(tuple(p))].format(a=a, wrong=int(a) + 1))
        return out

    res = evaluate_task(task, "chat", tok, stub, limit=4, seed=0, samples=2)
    assert res["n"] == 4 and res["score"] == pytest.approx(3 / 4)
    assert res["metrics"]["ended"] == pytest.approx(3 / 4) and res["metrics"]["exact"] == pytest.approx(2 / 4)
    assert len(res["samples"]) == 2 and res["samples"][1]["score"] == 0.0
    assert seen_stops[0] == [tok.token_to_id("<|end|>"), tok.token_to_id("<|bos|>")]
    assert decode(tok, tok.encode("<|end|>").ids) == "<|end|>"


def test_base_stage_uses_few_shot_text_and_cuts_the_continuation(tok) -> None:
    from scalelab.lm.posttrain.evaluate import evaluate_task
    from scalelab.lm.posttrain.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(max_digits=2)
    examples = task.eval_examples(3, seed=0)
    prompts_seen = []

    def stub(prompts, stop_ids):
        prompts_seen.extend(prompts)
        # the base model answers then rambles on with the next question: the cut must drop the ramble
        return [f" {ex.reference['answer']}\n\nQuestion: What is 1 plus 1?\nAnswer: 3" for ex in examples]

    res = evaluate_task(task, "base", tok, stub, limit=3, seed=0, few_shot=2)
    assert res["score"] == 1.0
    text = tok.decode(prompts_seen[0], skip_special_tokens=False)
    assert text.startswith("<|bos|>Question:") and text.count("Answer:") == 3 and text.endswith("Answer:")
    # a prompt longer than the room left is cut from the left, BOS kept
    res = evaluate_task(task, "base", tok, stub, limit=3, seed=0, few_shot=2, max_prompt_len=20)
    assert res["truncated_prompts"] == 3 and all(len(p) <= 20 and p[0] == 0 for p in prompts_seen[3:])


def test_chat_stage_without_a_template_is_a_clear_error(tmp_path: Path) -> None:
    from scalelab.lm.posttrain.evaluate import require_chat_template
    from scalelab.runs import RunDir

    run = RunDir(tmp_path)
    run.tokenizer_dir.mkdir()
    (run.tokenizer_dir / "tokenizer_config.json").write_text('{"bos_token": "<|bos|>"}')
    with pytest.raises(UsageError, match="no chat template"):
        require_chat_template(run)
    (run.tokenizer_dir / "tokenizer_config.json").write_text('{"chat_template": "{{ x }}"}')
    require_chat_template(run)


@needs_sets("copa", "winogrande", "hellaswag")
def test_multiple_choice_runs_on_real_items(tok) -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=1, n_embd=32, n_head=1, n_kv_head=1,
                            max_seq_len=64)).eval()
    for name in ("copa", "winogrande", "hellaswag"):
        items = load_mc_set(name, limit=3, seed=1)
        res = evaluate_mc(model, tok, items, batch_size=4, show_progress=False)
        assert res["n"] == 3 and 0.0 <= res["accuracy"] <= 1.0 and 0.0 <= res["accuracy_norm"] <= 1.0
        assert res["chance"] == pytest.approx(sum(1 / len(it.contexts) for it in items) / 3)
