"""Streamed text: ids to text deltas that never hold a broken UTF-8 character, and stop strings found in a stream.

    text = TextStream(tokenizer); piece = text.push(token_id)        # "" while a character is incomplete
    stops = StopStrings(["\\n\\n"]); out, hit = stops.push(piece)    # text safe to show, whether a stop was hit

Used by the engine's requests (scalelab/lm/inference/engine.py). Tested in tests/test_engine.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scalelab.lm.special_tokens import backend


class TextStream:
    """Incremental detokenisation: ``push(id)`` returns the new text (maybe ""), ``flush()`` the held-back rest.

    Decodes a short window of recent tokens and diffs it against the window without the new token, so the cost per
    token stays constant and tokenizers that drop a leading space on the first token still decode exactly.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tok = backend(tokenizer)
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids before this are already emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        new = self._decode(self.ids[self.prefix:])
        if new.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next bytes
            return ""
        old = self._decode(self.ids[self.prefix:self.read])
        self.prefix, self.read = self.read, len(self.ids)
        return new[len(old):]

    def flush(self) -> str:
        if self.read == len(self.ids):
            return ""
        new = self._decode(self.ids[self.prefix:])
        old = self._decode(self.ids[self.prefix:self.read])
        self.prefix = self.read = len(self.ids)
        return new[len(old):]


class StopStrings:
    """Finds the first stop string in streamed text; holds back a tail that could still become one."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.sent = 0

    def push(self, delta: str, final: bool = False) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was found)."""
        self.text += delta
        if self.stops:
            start = max(0, self.sent - self.longest)
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                cut = min(hits)
                out, self.text = self.text[self.sent:cut], self.text[:cut]
                self.sent = cut
                return out, True
        end = len(self.text)
        if not final and self.stops:
            for k in range(min(self.longest - 1, end - self.sent), 0, -1):
                if any(s.startswith(self.text[end - k:]) for s in self.stops):
                    end -= k
                    break
        out, self.sent = self.text[self.sent:end], end
        return out, False
