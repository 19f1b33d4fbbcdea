"""`scalelab chat`: talk to a model in the terminal, replies streamed as they are generated.

    scalelab chat --run runs/demo                                  # REPL on the chat model (else the base model)
    scalelab chat --run runs/demo --system "Be brief." --prompt "What is 12 + 34?"    # one shot: reply, exit

In the REPL: ``/reset`` clears the history, ``/system TEXT`` sets the system prompt (and clears the history),
``/help``, ``/quit``. Ctrl-C stops a reply (the REPL stays), Ctrl-D exits. When the conversation outgrows the
context, the oldest turns are dropped (and you are told). Prompts are rendered by scalelab/lm/chat.py, the same
template the model was fine-tuned on and that Hugging Face's ``apply_chat_template`` uses.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from scalelab.cli import check_generation_flags
from scalelab.common import UsageError
from scalelab.config import parse_config
from scalelab.lm.inference.loading import DTYPE_HELP

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt and start over (/system alone removes it)
  /help           this list
  /quit           leave (Ctrl-D works too); Ctrl-C stops a reply"""


@dataclass
class ChatConfig:
    """Chat with a model in the terminal."""

    run: str = field(default="", metadata={"help": "run folder (or a stage or step folder inside one)"})
    stage: str = field(default="", metadata={"help": "checkpoint stage: chat or base; empty = chat if present, "
                                                     "else base"})
    system: str = field(default="", metadata={"help": "system prompt; empty = none"})
    prompt: str = field(default="", metadata={"help": "one-shot: send this message, print the reply and exit; "
                                                      "empty = interactive"})
    max_tokens: int = field(default=256, metadata={"help": "most tokens per reply (also capped by the context)"})
    temperature: float = field(default=0.7, metadata={"help": "softmax temperature; 0 = greedy (deterministic)"})
    top_k: int = field(default=50, metadata={"help": "sample among the k likeliest tokens; 0 = off"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus: smallest set with this probability mass; 1 = off"})
    seed: int = field(default=-1, metadata={"help": "random seed (reply i uses seed + i); -1 = random"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})

    def check(self) -> None:
        check_generation_flags(self, ("chat", "base"))


class ChatSession:
    """The conversation state: system prompt, history, and streaming one reply at a time."""

    def __init__(self, model: Any, tokenizer: Any, cfg: ChatConfig) -> None:
        from scalelab.lm.chat import stop_token_ids

        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.system = cfg.system.strip()
        self.history: list[dict[str, str]] = []
        self.context = model.config.max_seq_len
        self.stop_ids = stop_token_ids(tokenizer)
        self.replies = 0

    def reset(self) -> None:
        self.history = []

    def _messages(self, history: list[dict[str, str]], user: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + history + [{"role": "user", "content": user}]

    def prepare(self, user: str) -> tuple[list[int], int]:
        """Prompt ids for the next reply and how many old turns were dropped to fit; UsageError if it cannot fit."""
        from scalelab.lm.chat import render_prompt

        reserve = min(self.cfg.max_tokens, max(1, self.context // 4))  # room kept for the reply
        history, dropped = list(self.history), 0
        while True:
            ids = render_prompt(self.tok, self._messages(history, user), where="message")
            if len(ids) + reserve <= self.context or not history:
                break
            history, dropped = history[2:], dropped + 1  # drop the oldest user + assistant turn
        if len(ids) >= self.context:
            raise UsageError(f"the message is too long: the prompt is {len(ids)} tokens but the model's context "
                             f"length is {self.context} tokens; shorten it")
        self.history = history
        return ids, dropped

    def stream(self, ids: list[int]) -> Iterator[str]:
        from scalelab.lm.inference.engine import TextStream, generate

        seed = None if self.cfg.seed < 0 else self.cfg.seed + self.replies
        self.replies += 1
        text = TextStream(self.tok)
        c = self.cfg
        for token in generate(self.model, ids, c.max_tokens, c.temperature, c.top_k, c.top_p, seed, self.stop_ids):
            if token in self.stop_ids:
                break
            delta = text.push(token)
            if delta:
                yield delta
        rest = text.flush()
        if rest:
            yield rest

    def commit(self, user: str, reply: str) -> bool:
        """Keep the turn in the history (False when the reply is empty: the pair is dropped to keep turns valid)."""
        if not reply.strip():
            return False
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return True


def answer(session: ChatSession, user: str, out: TextIO, err: TextIO) -> None:
    """Stream one reply to ``out``; Ctrl-C stops it and keeps what was said so far."""
    ids, dropped = session.prepare(user)
    if dropped:
        print(f"(dropped the {dropped} oldest turn{'s' if dropped > 1 else ''} to fit the context)", file=err)
    parts: list[str] = []
    try:
        for delta in session.stream(ids):
            parts.append(delta)
            out.write(delta)
            out.flush()
    except KeyboardInterrupt:
        out.write(" [stopped]")
    finally:
        out.write("\n")
        out.flush()
    if not session.commit(user, "".join(parts)):
        print("(empty reply: this turn is not kept in the history)", file=err)


def _read_line(interactive: bool) -> str | None:
    """One line of input, None at end of input (Ctrl-D)."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def repl(session: ChatSession, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as Python's REPL does
            print(file=err)
            continue
        if line is None:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            if command in ("/quit", "/exit"):
                return 0
            if command == "/help":
                print(HELP, file=err)
            elif command == "/reset":
                session.reset()
                print("(history cleared)", file=err)
            elif command == "/system":
                session.system = arg.strip()
                session.reset()
                print(f"(system prompt {'set' if session.system else 'removed'}; history cleared)", file=err)
            else:
                print(f"unknown command {command!r}; /help lists the commands", file=err)
            continue
        try:
            answer(session, line, out, err)
        except UsageError as e:
            print(f"error: {e}", file=err)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ChatConfig, argv, prog="scalelab chat")
    cfg.check()
    from scalelab.lm.chat import has_chat_template
    from scalelab.lm.data.tokenizer import find_tokenizer
    from scalelab.lm.inference.loading import load_for_inference

    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    model, tok, step_dir = load_for_inference(cfg.run, cfg.stage or None, cfg.device, cfg.dtype)
    tok_json = find_tokenizer(cfg.run, step_dir)
    tok_dir = tok_json.parent if tok_json is not None else None
    if tok_dir is None or not has_chat_template(tok_dir):
        raise UsageError(f"{tok_dir or cfg.run}: the tokenizer has no chat template (no chat_template in "
                         "tokenizer_config.json); chat needs a scalelab tokenizer or a fine-tuned chat model")
    session = ChatSession(model, tok, cfg)
    if cfg.prompt:
        if not cfg.prompt.strip():
            raise UsageError("--prompt is empty")
        answer(session, cfg.prompt, sys.stdout, sys.stderr)
        return 0
    print(f"scalelab chat: {step_dir} ({model.num_params() / 1e6:.1f}M parameters, context "
          f"{session.context} tokens). /help for commands, Ctrl-D to quit.", file=sys.stderr)
    return repl(session)
