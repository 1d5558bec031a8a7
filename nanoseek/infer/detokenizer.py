"""Incremental detokenization and stop strings.

A byte-level BPE token may end in the middle of a UTF-8 character, so the text of the tokens so far is only
final up to the last complete character. Like vLLM, the detokenizer decodes a short window of recent tokens and
hands out what lies past the previous window's text once it no longer ends in U+FFFD. Stop strings may span
tokens: text that could still grow into a stop string is held back until it cannot, and a stop string ends the
text just before it (OpenAI semantics: the stop string itself is not returned).
"""
from __future__ import annotations

from nanoseek.tokenizer import Tokenizer


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""           # every character decoded so far
        self.emitted = 0         # characters of `text` handed out
        self._prefix = 0         # ids[_prefix:_read] decode to the tail of `text`
        self._read = 0

    def add(self, ids: list[int]) -> tuple[str, bool]:
        """Append token ids; return the new text that is final, and whether a stop string was reached (then the
        text ends before it and nothing more will come)."""
        self.ids += ids
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        after = self.tokenizer.decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        # a stop string can only begin in text not handed out yet: anything that could start one is held back
        hits = [at for at in (self.text.find(s, self.emitted) for s in self.stop) if at >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return self._emit(len(self.text)), True
        return self._emit(len(self.text) - self._held()), False

    def flush(self) -> str:
        """The held-back rest, once the sequence has ended for another reason."""
        rest = self.tokenizer.decode(self.ids[self._prefix:])
        self.text += rest[len(self.tokenizer.decode(self.ids[self._prefix:self._read])):]
        self._prefix = self._read = len(self.ids)
        return self._emit(len(self.text))

    def _held(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        tail = self.text[self.emitted:]
        return max((n for s in self.stop for n in range(min(len(s) - 1, len(tail)), 0, -1)
                    if s.startswith(tail[-n:])), default=0)

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        out, self.emitted = self.text[self.emitted:end], end
        return out
