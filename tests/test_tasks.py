"""Post-training tasks: scorers on hand-made right and wrong answers, no train/eval overlap, MBPP isolation, mixture.

    .venv/bin/pytest tests/test_tasks.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import needs_sets, set_dir

from scalelab.common import UsageError
from scalelab.lm.posttrain.tasks.arithmetic import ArithmeticTask, GSM8KTask, gsm8k_final_answer
from scalelab.lm.posttrain.tasks.base import Example, bag_f1, lcs_length, rouge_l
from scalelab.lm.posttrain.tasks.coding import MBPPTask, StdlibCodeTask
from scalelab.lm.posttrain.tasks.conversation import ConversationTask, rewrite_identity
from scalelab.lm.posttrain.tasks.emails import EmailTask
from scalelab.lm.posttrain.tasks.mixture import MixtureConfig, build_mixture, split_counts
from scalelab.lm.posttrain.tasks.summarise import SummariseTask
from scalelab.lm.special_tokens import END

PUBLIC_CHATS = ("fastchat_dummy_conversation", "oasst_en_100_trees", "dolly_hhrlhf_small")


def _prompts(convs) -> set[str]:
    return {json.dumps(c[:-1]) for c in convs}


# ----------------------------------------------------------------------------------------------- metrics

def test_rouge_l_known_values() -> None:
    # the example of Google's rouge-score README: rougeL P=0.625 R=0.5556 F=0.5882
    r = rouge_l("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log.")
    assert r["precision"] == pytest.approx(5 / 8) and r["recall"] == pytest.approx(5 / 9)
    assert r["f1"] == pytest.approx(0.5882352941, abs=1e-9)
    assert rouge_l("a b c", "a b c")["f1"] == 1.0 and rouge_l("a b", "c d")["f1"] == 0.0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # CLRS's example
    assert bag_f1(["a", "b"], ["a", "c"]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------- arithmetic / gsm8k

def test_arithmetic_scorer_and_split() -> None:
    task = ArithmeticTask(max_digits=3)
    train = task.train_conversations(3000, seed=0)
    evals = task.eval_examples(100, seed=0)
    assert len(train) == 3000 and len(evals) == 100
    for conv in train[:50]:
        q, a = conv[0]["content"], conv[1]["content"]
        nums = [int(x) for x in __import__("re").findall(r"\d+", q)]
        assert int(a) in (nums[0] + nums[1], nums[0] - nums[1], nums[1] - nums[0], nums[0] * nums[1])
    ex = evals[0]
    right = ex.reference["answer"]
    assert task.score(ex, right + END) == {"score": 1.0, "exact": 1.0, "ended": 1.0}
    assert task.score(ex, f"The answer is {right}.")["score"] == 1.0
    assert task.score(ex, str(int(right) + 1) + END)["score"] == 0.0
    assert task.score(ex, "I don't know")["score"] == 0.0
    # held-out problems are never trained on, whatever the phrasing
    train_keys = set()
    for conv in task.train_conversations(20000, seed=1):
        train_keys.add(conv[0]["content"])
    assert not {e.prompt_text() for e in evals} & train_keys
    assert "Question:" in task.few_shot_prompt(ex) and task.few_shot_prompt(ex).endswith("Answer:")


@needs_sets("gsm8k")
def test_gsm8k_scorer_and_split() -> None:
    assert gsm8k_final_answer("so 9 * 2 = 18\n#### 1,018") == "1018"
    task = GSM8KTask()
    ex = task.eval_examples(5, seed=0)[0]
    ans = ex.reference["answer"]
    assert task.score(ex, f"Some steps.\n#### {ans}{END}")["score"] == 1.0
    assert task.score(ex, f"#### {int(float(ans)) + 7}")["score"] == 0.0
    train = task.train_conversations(50, seed=0)
    assert "<<" not in train[0][1]["content"] and "####" in train[0][1]["content"]
    assert not {e.prompt_text() for e in task.eval_examples(200, 0)} & {c[0]["content"] for c in train}


# ----------------------------------------------------------------------------------------------- email

def test_email_rubric() -> None:
    task = EmailTask()
    ex = task.eval_examples(20, seed=0)[0]
    spec = ex.reference
    good = (f"Hi {spec['recipient']},\n\n" + " ".join(p.capitalize() + "." for p in spec["points"])
            + f"\n\nBest regards,\n{spec['sender']}{END}")
    assert task.score(ex, good)["score"] == pytest.approx(1.0)
    no_greeting = good.replace(f"Hi {spec['recipient']},", "Hi there,")
    assert task.score(ex, no_greeting)["greets"] == 0.0
    missing = (f"Hi {spec['recipient']},\n\n" + spec["points"][0] + f".\n\nBest,\n{spec['sender']}")
    s = task.score(ex, missing)
    assert s["points"] == pytest.approx(1 / len(spec["points"])) and s["ended"] == 0.0 and s["score"] < 1
    no_sign = f"Hi {spec['recipient']},\n\n" + " ".join(spec["points"])
    assert task.score(ex, no_sign)["signs_off"] == 0.0
    assert task.score(ex, "whatever")["score"] == 0.0
    # a training answer gets full marks from the rubric (the data teaches what is scored)
    conv = task.train_conversations(1, seed=3)[0]
    ex_train = Example("email", conv[:1], {**_spec_from_prompt(conv[0]["content"])})
    assert task.score(ex_train, conv[1]["content"] + END)["score"] == pytest.approx(1.0)
    assert not _prompts(task.train_conversations(5000, 1)) & {json.dumps(e.messages) for e in
                                                             task.eval_examples(200, 0)}


def _spec_from_prompt(prompt: str) -> dict:
    first, subject, points = prompt.split("\n")
    recipient, sender = first.removeprefix("Write a short email to ").rstrip(".").split(" from ")
    return {"recipient": recipient, "sender": sender, "subject": subject.removeprefix("Subject: "),
            "points": points.removeprefix("Key points: ").split("; ")}


# ----------------------------------------------------------------------------------------------- summarise / code

def test_summarise_scorer_and_split() -> None:
    task = SummariseTask()
    evals = task.eval_examples(30, seed=0)
    assert len(evals) == 30
    ex = evals[0]
    assert task.score(ex, ex.reference["summary"] + END)["score"] == 1.0
    assert task.score(ex, "zzz qqq")["score"] == 0.0
    train = task.train_conversations(120, seed=0)
    assert all(len(c[1]["content"]) <= 120 for c in train)
    assert not _prompts(train) & {json.dumps(e.messages) for e in evals}
    assert task.few_shot_prompt(ex).endswith("Summary:")


def test_code_scorer_and_split() -> None:
    task = StdlibCodeTask()
    evals = task.eval_examples(20, seed=0)
    train = task.train_conversations(200, seed=0)
    eval_modules = {e.reference["module"].split(".")[0] for e in evals}
    train_prompts = {c[0]["content"] for c in train}
    assert not {e.prompt_text() for e in evals} & train_prompts
    assert not eval_modules & {c_mod for c_mod in _train_modules(task)}
    ex = evals[0]
    header = ex.reference["stub"].split("\n")[0]
    right = header + "\n" + "\n".join("    " + ln for ln in ex.reference["body"].split("\n"))
    assert task.score(ex, f"```python\n{right}\n```{END}") == {"score": 1.0, "parses": 1.0, "f1": 1.0, "ended": 1.0}
    broken = task.score(ex, right + "\n    return (")
    assert broken["parses"] == 0.0 and broken["score"] == 0.0
    wrong = task.score(ex, header + "\n    return 42")
    assert wrong["parses"] == 1.0 and wrong["score"] < 0.5
    assert "def " in task.few_shot_prompt(ex) and task.few_shot_prompt(ex).endswith('"""\n')


def _train_modules(task: StdlibCodeTask) -> set[str]:
    return {mod.split(".")[0] for mod, _ in task._files(held_out=False)}


@needs_sets("mbpp")
def test_mbpp_pass_at_1_and_split() -> None:
    task = MBPPTask(timeout_s=5, unsafe_exec=True)   # jailed wherever a jail works
    ex = task.eval_examples(3, seed=0)[0]
    row = next(r for r in task.rows() if f"mbpp-{r['task_id']}" == ex.id)
    assert 11 <= row["task_id"] <= 510
    assert task.score(ex, task.solution(row) + END)["score"] == 1.0
    name = row["test_list"][0].split("assert ")[1].split("(")[0].strip()
    assert task.score(ex, f"def {name}(*args):\n    return None")["score"] == 0.0
    assert task.score(ex, "this is not python")["score"] == 0.0
    train_ids = {c[0]["content"] for c in task.train_conversations(400, seed=0)}
    assert not train_ids & {e.prompt_text() for e in task.eval_examples(500, 0)}


# the sandbox that runs MBPP answers: tests/test_sandbox.py


# ----------------------------------------------------------------------------------------------- conversation

def test_conversation_identity_and_ending() -> None:
    assert rewrite_identity("I am Vicuna, a language model trained by researchers from Large Model Systems "
                            "Organization (LMSYS).") == \
        "I am scalelab, a language model trained by the scalelab project."
    task = ConversationTask(public=all(set_dir(n) for n in PUBLIC_CHATS))
    evals = task.eval_examples(40, seed=0)
    identity = [e for e in evals if e.reference["kind"] == "identity"]
    assert identity
    ex = identity[0]
    assert task.score(ex, f"I'm scalelab, made by the scalelab project.{END}")["score"] == 1.0
    assert task.score(ex, "I'm scalelab, made by the scalelab project.")["score"] == 0.0   # did not stop
    assert task.score(ex, f"I am ChatGPT.{END}")["score"] == 0.0
    other = next(e for e in task.eval_examples(200, seed=0) if e.reference.get("category") == "other")
    assert task.score(other, f"Yes, I am scalelab.{END}")["identity"] == 0.0
    train = task.train_conversations(3000, seed=0)
    train_users = {m["content"] for c in train for m in c if m["role"] == "user"}
    assert not {e.prompt_text() for e in identity} & train_users
    assert not {json.dumps(e.messages) for e in evals} & {json.dumps(c[:i]) for c in train for i in range(len(c))}
    assert not any("Vicuna" in m["content"] or "LMSYS" in m["content"]
                   for c in train for m in c if m["role"] == "assistant")


# ----------------------------------------------------------------------------------------------- mixture

def test_mixture_weights_and_user_files(tmp_path: Path) -> None:
    assert split_counts(10, [3, 1, 1]) == [6, 2, 2] and sum(split_counts(7, [1, 1, 1])) == 7
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"messages": [{"role": "user", "content": "ping"},
                                             {"role": "assistant", "content": "pong"}]}) + "\n")
    cfg = MixtureConfig(tasks=["arithmetic:2", "email:1"], user_files=[f"{mine}:1"], n_train=40, n_eval=5,
                        public_chats=False)
    train, evals = build_mixture(cfg)
    assert len(train) == 40 and set(evals) == {"arithmetic", "email"} and all(len(v) == 5 for v in evals.values())
    assert sum(c[0]["content"] == "ping" for c in train) == 10
    train2, _ = build_mixture(cfg)
    assert train2 == train                                                   # deterministic
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        MixtureConfig(tasks=["nope:1"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}\n')
    with pytest.raises(UsageError, match=r"bad\.jsonl:1: messages\[1\]\.content: empty"):
        build_mixture(MixtureConfig(tasks=["arithmetic:1"], user_files=[str(bad)], n_train=4, n_eval=0))
