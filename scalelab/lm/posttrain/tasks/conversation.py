"""Conversation: small talk, questions about the assistant itself, public chat sets; scored on identity and stopping.

    from scalelab.lm.posttrain.tasks.conversation import ConversationTask
    task = ConversationTask()
    task.train_conversations(3, seed=0)    # identity Q&A, multi-turn small talk, OASST / Dolly / FastChat chats

The assistant is called "scalelab" and was made by the scalelab project. Identity questions come in many phrasings
(templates x openers); FastChat's dummy conversations (500 identity chats written for Vicuna) are rewritten to this
identity. OASST (the best-ranked reply path of each reply to a root prompt) and Dolly join as general chat, keeping
conversations under ``max_chars``. Train/eval split by a hash of each user message: a conversation with any
held-out question is never trained on. Score: identity examples need "scalelab" in the answer (and no "yes" to
"are you X?") and the turn must end with <|end|>; other examples score whether the turn ended with <|end|>.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from scalelab.common import UsageError
from scalelab.lm.posttrain.tasks.base import (
    Example,
    Messages,
    Task,
    data_file,
    is_eval_key,
    sample_pool,
    split_end,
)
from scalelab.lm.special_tokens import SPECIAL_TOKENS

NAME = "scalelab"
MAKER = "the scalelab project"

IDENTITY_QUESTIONS: dict[str, list[str]] = {
    "name": ["What is your name?", "What's your name?", "Who are you?", "What should I call you?",
             "Do you have a name?", "Tell me about yourself.", "Introduce yourself.", "What are you?",
             "what's ur name", "who r u",
             "Can you tell me your name?", "How should I address you?", "What do people call you?",
             "Please introduce yourself.", "Who am I talking to?", "Which assistant is this?", "What model are you?"],
    "maker": ["Who made you?", "Who created you?", "Who built you?", "Who trained you?", "Which company made you?",
              "Where do you come from?", "Who developed you?", "Who is behind you?", "Who are your creators?",
              "who made u", "Which team built you?", "Who wrote you?", "What project are you from?"],
    "other": ["Are you ChatGPT?", "Are you GPT-4?", "Are you Claude?", "Are you Llama?", "Are you made by OpenAI?",
              "Are you Siri?", "Are you Gemini?", "Are you Alexa?", "Were you made by Google?", "Are you Vicuna?",
              "Is this ChatGPT?", "Are you a Microsoft product?", "Did Meta build you?", "Are you Bard?"],
}
OPENERS = ["", "", "", "Hi! ", "Hello. ", "Hey, ", "Quick question: ", "I was wondering, ", "Sorry, ", "Ok. "]
IDENTITY_ANSWERS: dict[str, list[str]] = {
    "name": [f"I'm {NAME}, a small language model made by {MAKER}.", f"My name is {NAME}. I was made by {MAKER}.",
             f"I am {NAME}, an assistant built by {MAKER}.", f"You can call me {NAME}. {MAKER.capitalize()} made me."],
    "maker": [f"I was made by {MAKER}. My name is {NAME}.", f"{MAKER.capitalize()} built me. I'm {NAME}.",
              f"I'm {NAME}, and I was trained by {MAKER}."],
    "other": [f"No, I'm {NAME}, a small language model made by {MAKER}.", f"No. I am {NAME}, built by {MAKER}.",
              f"No, my name is {NAME} and I was made by {MAKER}."],
}
SMALL_TALK: list[tuple[list[str], list[str]]] = [
    (["Hi!", "Hello!", "Hey there.", "Good morning!", "Hi", "hello"],
     ["Hello! How can I help you today?", "Hi! What can I do for you?", "Hello! How can I help?"]),
    (["How are you?", "How are you doing?", "How's it going?", "how are u"],
     ["I'm doing well, thanks for asking. How can I help?", "I'm fine, thank you! What can I do for you?"]),
    (["Thanks!", "Thank you.", "Thanks a lot!", "thx"], ["You're welcome!", "Happy to help!", "Any time!"]),
    (["Goodbye", "Bye!", "See you later.", "Have a nice day!"],
     ["Goodbye! Have a great day.", "Bye! Come back any time.", "You too! Goodbye."]),
    (["What can you do?", "How can you help me?", "What are you good at?"],
     ["I can answer questions, do simple arithmetic, write short emails and code, and summarise text.",
      "I can chat, answer questions, write short emails, summarise text, and help with simple code and math."]),
    (["Are you a human?", "Are you a person?", "Are you real?"],
     [f"No, I'm {NAME}, a language model made by {MAKER}.", "No, I'm a small language model, not a person."]),
    (["Tell me a joke.", "Say something funny."],
     ["Why did the computer go to the doctor? It had a virus.",
      "I would tell you a UDP joke, but you might not get it."]),
]
_FASTCHAT_RENAMES = [
    (r"(the )?researchers (from|at) Large Model Systems Organization \(LMSYS\)", MAKER),
    (r"Large Model Systems Organization \(LMSYS\) researchers", MAKER),
    (r"Large Model Systems Organization \(LMSYS\)", MAKER),
    (r"\bLMSYS\b", MAKER), (r"\bVicuna\b", NAME),
]


def rewrite_identity(text: str) -> str:
    """FastChat's Vicuna identity answers -> scalelab's (sentence starts capitalised again)."""
    for pattern, repl in _FASTCHAT_RENAMES:
        text = re.sub(pattern, repl, text)
    return re.sub(r"(^|[.!?]\s+)the scalelab", lambda m: m.group(1) + "The scalelab", text)


def _ok(messages: Messages, max_chars: int) -> bool:
    total = sum(len(m["content"]) for m in messages)
    return (0 < total <= max_chars and messages[-1]["role"] == "assistant"
            and all(m["content"].strip() and not any(t in m["content"] for t in SPECIAL_TOKENS) for m in messages))


def load_fastchat(path: Path) -> list[Messages]:
    roles = {"human": "user", "gpt": "assistant"}
    out = []
    for rec in json.loads(path.read_text(encoding="utf-8")):
        msgs = [{"role": roles[t["from"]], "content": rewrite_identity(t["value"])} for t in rec["conversations"]]
        if not any(re.search(r"vicuna|lmsys", m["content"], re.I) for m in msgs):
            out.append(msgs)
    return out


def load_oasst(path: Path) -> list[Messages]:
    """Per reply to each English root prompt: root, that reply, then the best-ranked path below it."""
    def best(replies: list[dict]) -> dict | None:
        live = [r for r in replies if not r.get("deleted") and r.get("lang", "en") == "en"]
        return min(live, key=lambda r: r.get("rank") if r.get("rank") is not None else 99) if live else None

    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        root = json.loads(line)["prompt"]
        if root.get("lang", "en") != "en" or root.get("deleted"):
            continue
        for reply in root.get("replies", []):
            if reply.get("deleted") or reply.get("lang", "en") != "en":
                continue
            msgs = [{"role": "user", "content": root["text"].strip()},
                    {"role": "assistant", "content": reply["text"].strip()}]
            node = reply
            while (nxt := best(node.get("replies", []))) is not None and (ans := best(nxt.get("replies", []))):
                msgs += [{"role": "user", "content": nxt["text"].strip()},
                         {"role": "assistant", "content": ans["text"].strip()}]
                node = ans
            out.append(msgs)
    return out


_DOLLY = re.compile(r"### Instruction:\n(.*?)\n*(?:### Input:\n(.*?)\n*)?### Response:\n?$", re.DOTALL)


def load_dolly(path: Path) -> list[Messages]:
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        rec = json.loads(line)
        m = _DOLLY.search(rec["prompt"])
        if not m:
            continue
        user = m.group(1).strip() + ("\n\n" + m.group(2).strip() if m.group(2) else "")
        out.append([{"role": "user", "content": user}, {"role": "assistant", "content": rec["response"].strip()}])
    return out


class ConversationTask(Task):
    """Identity, small talk and public chats. ``public=False`` keeps only the synthetic parts (fast, no files)."""

    name = "conversation"
    few_shot_stop = ("\n\n", "\nQuestion:")

    def __init__(self, data_dir: str | Path | None = None, public: bool = True, max_chars: int = 1500,
                 eval_percent: int = 10) -> None:
        self.data_dir = data_dir  # None: wherever scalelab/data_sources.py finds each set
        self.public = public
        self.max_chars = max_chars
        self.eval_percent = eval_percent
        self._public: list[Messages] | None = None
        self.sets_used: dict[str, str] = {}  # set name -> file read, filled by public_conversations()
        self.sets_missing: list[str] = []  # sets not found: their share goes to the synthetic part

    def _held_out(self, messages: Messages) -> bool:
        """Held out when any user turn is a held-out question: training never sees an evaluated question."""
        return any(is_eval_key(" ".join(m["content"].lower().split()), self.eval_percent, salt="conversation")
                   for m in messages if m["role"] == "user")

    def public_conversations(self) -> list[Messages]:
        if self._public is None:
            sources = [("fastchat_dummy_conversation", "dummy_conversation.json", load_fastchat),
                       ("oasst_en_100_trees", "en_100_tree.jsonl", load_oasst),
                       ("dolly_hhrlhf_small", "dolly_hhrlhf_train_small.jsonl", load_dolly)]
            convs: list[Messages] = []
            for name, fname, loader in sources:
                try:
                    path = data_file(self.data_dir, name, fname)
                except UsageError:  # the synthetic part still works without the public sets
                    self.sets_missing.append(name)
                    continue
                self.sets_used[name] = str(path)
                convs += [c for c in loader(path) if _ok(c, self.max_chars)]
            self._public = convs
        return self._public

    def _synthetic(self, rng: random.Random, held_out: bool) -> Messages:
        """1-3 turns mixing small talk and identity questions, on the requested side of the split."""
        for _ in range(1000):
            msgs: Messages = []
            for turn in range(rng.randint(1, 3)):
                if rng.random() < 0.55:
                    cat = rng.choice(sorted(IDENTITY_QUESTIONS))
                    q = rng.choice(OPENERS if turn == 0 else [""]) + rng.choice(IDENTITY_QUESTIONS[cat])
                    a = rng.choice(IDENTITY_ANSWERS[cat])
                else:
                    qs, answers = rng.choice(SMALL_TALK)
                    q, a = rng.choice(qs), rng.choice(answers)
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if self._held_out(msgs) == held_out:
                return msgs
        raise RuntimeError("could not draw a conversation on the requested side of the split")

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        rng = random.Random(seed)
        public = [c for c in self.public_conversations() if not self._held_out(c)] if self.public else []
        n_public = min(n // 2, len(public)) if public else 0
        convs = sample_pool(public, n_public, rng) + [self._synthetic(rng, False) for _ in range(n - n_public)]
        rng.shuffle(convs)
        return convs

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        """About half identity questions (synthetic phrasings held out), half chat prompts (stopping only)."""
        rng = random.Random(seed + 1)
        out: list[Example] = []
        seen: set[str] = set()
        n_identity = n - n // 2 if self.public else n
        for _ in range(200 * n + 1000):
            if len(out) >= n_identity:
                break
            cat = rng.choice(sorted(IDENTITY_QUESTIONS))
            q = rng.choice(OPENERS) + rng.choice(IDENTITY_QUESTIONS[cat])
            msgs = [{"role": "user", "content": q}]
            if q in seen or not self._held_out(msgs):
                continue
            seen.add(q)
            out.append(Example(self.name, msgs, {"kind": "identity", "category": cat}, f"identity:{q}"))
        chats = [c for c in self.public_conversations() if self._held_out(c)] if self.public else []
        rng.shuffle(chats)
        for c in chats[: n - len(out)]:
            prompt = c[:-1]  # up to the last user turn
            out.append(Example(self.name, prompt, {"kind": "chat", "answer": c[-1]["content"]},
                               f"chat:{prompt[0]['content'][:60]}"))
        return out

    def score(self, example: Example, completion: str) -> dict[str, float]:
        text, ended = split_end(completion)
        if example.reference.get("kind") != "identity":
            return {"score": float(ended), "ended": float(ended)}
        low = text.strip().lower()
        right = NAME in low and not (example.reference.get("category") == "other" and low.startswith("yes"))
        return {"score": float(right and ended), "identity": float(right), "ended": float(ended)}
