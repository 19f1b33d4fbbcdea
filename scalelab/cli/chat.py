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
from dataclasses import dataclass, field
from typing import Any, TextIO

from scalelab.cli import GenerationConfig
from scalelab.common import UsageError
from scalelab.config import parse_config

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt and start over (/system alone removes it)
  /help           this list
  /quit           leave (Ctrl-D works too); Ctrl-C stops a reply"""


@dataclass
class ChatConfig(GenerationConfig):
    """Chat with a model in the terminal."""

    system: str = field(default="", metadata={"help": "system prompt; empty = none"})
    prompt: str = field(default="", metadata={"help": "one-shot: send this message, print the reply and exit; "
                                                      "empty = interactive"})


def answer(session: Any, user: str, out: TextIO, err: TextIO) -> None:
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


def enable_line_editing() -> bool:
    """Arrow keys, Home/End and history at the prompt: ``input()`` uses GNU readline once the module is imported
    (without it the keys print escape codes such as ^[[A). False where Python was built without readline."""
    try:
        import readline  # noqa: F401
    except ImportError:
        return False
    return True


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


def repl(session: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        enable_line_editing()
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
    from scalelab.lm.inference.session import ChatSession, Sampling

    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    model, tok, step_dir = load_for_inference(cfg.run, cfg.stage or None, cfg.device, cfg.dtype)
    tok_json = find_tokenizer(cfg.run, step_dir)
    tok_dir = tok_json.parent if tok_json is not None else None
    if tok_dir is None or not has_chat_template(tok_dir):
        raise UsageError(f"{tok_dir or cfg.run}: the tokenizer has no chat template (no chat_template in "
                         "tokenizer_config.json); chat needs a scalelab tokenizer or a fine-tuned chat model")
    settings = Sampling(cfg.max_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed)
    session = ChatSession(model, tok, settings, system=cfg.system)
    if cfg.prompt:
        if not cfg.prompt.strip():
            raise UsageError("--prompt is empty")
        answer(session, cfg.prompt, sys.stdout, sys.stderr)
        return 0
    print(f"scalelab chat: {step_dir} ({model.num_params() / 1e6:.1f}M parameters, context "
          f"{session.context} tokens). /help for commands, Ctrl-D to quit.", file=sys.stderr)
    return repl(session)
