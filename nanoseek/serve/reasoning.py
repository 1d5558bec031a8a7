"""Reasoning apart from the answer (DeepSeek API: `reasoning_content` beside `content`).

An R1 reply reads `<think>\\n{reasoning}\\n</think>\\n\\n{answer}` (R1 report §2.2.3, Table 1). The
chat prompt ends with the opening `<think>\\n` itself (DeepSeek's advice for R1: make every reply begin with it,
so the model never skips thinking), so the generated text starts inside the reasoning. `ReasoningSplitter` cuts it
as it streams, in pieces of any size: text that may be the start of `</think>`, or newlines that may come before
it, wait for the next piece. `split_reasoning` runs the same machine over a whole text, so a streamed reply and
the same reply in one piece always agree.
"""
from __future__ import annotations

from collections.abc import Sequence

from nanoseek.tokenizer import END_THINK


class ReasoningSplitter:
    def __init__(self):
        self.thinking = True            # still inside the reasoning
        self._held = ""                 # reasoning text that may still turn out to be "\n</think>"
        self._answer_started = False    # the newlines between </think> and the answer are behind us

    def feed(self, text: str) -> tuple[str, str]:
        """Add generated text; returns (new reasoning, new answer) that are final."""
        if not self.thinking:
            return "", self._answer(text)
        text = self._held + text
        end = text.find(END_THINK)
        if end >= 0:
            self.thinking, self._held = False, ""
            return text[:end].rstrip("\n"), self._answer(text[end + len(END_THINK):])
        keep = _partial_tag(text)
        keep = len(text) - len(text[:len(text) - keep].rstrip("\n"))
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep], ""

    def finish(self) -> str:
        """The generation ended: the reasoning held back, if it never closed."""
        held, self._held = self._held, ""
        return held

    def _answer(self, text: str) -> str:
        if not self._answer_started:
            text = text.lstrip("\n")
            self._answer_started = bool(text)
        return text


def _partial_tag(text: str) -> int:
    """Length of the longest tail of `text` that is a proper beginning of </think>."""
    return next((n for n in range(min(len(END_THINK) - 1, len(text)), 0, -1) if text.endswith(END_THINK[:n])), 0)


def split_reasoning(text: str) -> tuple[str, str]:
    """A whole generated text -> (reasoning, answer)."""
    splitter = ReasoningSplitter()
    reasoning, answer = splitter.feed(text)
    return reasoning + splitter.finish(), answer


def reasoning_tokens(output_ids: Sequence[int], end_think_id: int) -> int:
    """Generated tokens spent on reasoning: those up to and including </think>, or all of them if it never came."""
    ids = list(output_ids)
    return ids.index(end_think_id) + 1 if end_think_id in ids else len(ids)
