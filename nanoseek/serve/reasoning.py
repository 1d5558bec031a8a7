"""Reasoning apart from the answer (DeepSeek API: `reasoning_content` beside `content`).

Thinking is on or off per request (DeepSeek's API): the model id `deepseek-reasoner` thinks and `deepseek-chat` does
not, both served by the one checkpoint, and the server's own model name thinks (an R1 checkpoint's default);
`thinking: {"type": "enabled" | "disabled"}` decides over the model id, and `reasoning_effort` "none" turns thinking
off (any other effort leaves it on: a small model has no reasoning budget to set). Without thinking the prompt ends
with an empty thought, `<think>\\n\\n</think>\\n\\n`, the shape R1's template gives a reply that skipped its
reasoning, and the whole reply is the answer.

An R1 reply reads `<think>\\n{reasoning}\\n</think>\\n\\n{answer}` (R1 report §2.2.3, Table 1). The
chat prompt ends with the opening `<think>\\n` itself (DeepSeek's advice for R1: make every reply begin with it,
so the model never skips thinking), so the generated text starts inside the reasoning. `ReasoningSplitter` cuts it
as it streams, in pieces of any size: text that may be the start of `</think>`, or newlines that may come before
it, wait for the next piece. `split_reasoning` runs the same machine over a whole text, so a streamed reply and
the same reply in one piece always agree.
"""
from __future__ import annotations

from collections.abc import Sequence

from nanoseek.serve.invalid import invalid, short
from nanoseek.tokenizer import END_THINK, THINK, Tokenizer

THINKING_MODELS = {"deepseek-reasoner": True, "deepseek-chat": False}
EFFORTS = ("none", "minimal", "low", "medium", "high")


def thinking_mode(body: dict, model: str) -> bool:
    """Whether the reply thinks first: `thinking`, else `reasoning_effort`, else the model id."""
    thinking, effort = body.get("thinking"), body.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        raise invalid("reasoning_effort", f"expected one of {list(EFFORTS)}, got {short(effort)}")
    if thinking is not None:
        if not isinstance(thinking, dict) or set(thinking) != {"type"} or \
                thinking["type"] not in ("enabled", "disabled"):
            raise invalid("thinking", f"expected {{\"type\": \"enabled\"}} or {{\"type\": \"disabled\"}}, "
                                      f"got {short(thinking)}")
        enabled = thinking["type"] == "enabled"
        if effort is not None and (effort != "none") != enabled:
            raise invalid("reasoning_effort", f"reasoning_effort {effort!r} contradicts thinking {thinking['type']}")
        return enabled
    if effort is not None:
        return effort != "none"
    return THINKING_MODELS.get(model, True)


def prompt_end(tokenizer: Tokenizer, thinking: bool) -> list[int]:
    """What the prompt ends with after `<｜Assistant｜>`: R1's usage advice, "<think>\\n", so that a thinking reply
    never skips its reasoning; or an empty thought, so that the reply is the answer."""
    return tokenizer.encode(THINK + "\n" if thinking else f"{THINK}\n\n{END_THINK}\n\n")


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
