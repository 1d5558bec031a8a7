"""Pre-training documents and fixed-length sequences.

`mix_documents` interleaves natural-text documents with synthetic task documents. A task
document is rendered the way R1 answers (R1 §2.2.1 template: reasoning inside <think> tags,
then the answer), so a base model has already seen the format that GRPO's format reward asks for:

    What is 347 + 589?
    <think>
    347 + 589, column by column from the right:
    ...
    </think>

    936

Each problem comes in one of several trace styles (`data.styles`): the answer alone, the worked steps, the steps with
a self-check, or, rarely, with a slip caught and corrected. A share of them (DIALOGUE) is laid out as a transcript,
`User: What is 347 + 589?` then `Assistant: <think>...`, as web text has question-and-answer threads: R1-Zero's
plain-text template (R1 §2.2.1) ends in `User: question` and `Assistant:`, and a base model follows such a template
only if it has read that layout (ours reads no other dialogue: its text is the standard library's docstrings).

The synthetic share defaults to 0.3 of the text, counted in characters (a tokenizer-free
stand-in for tokens, the unit in which a corpus's shares are given; counted in documents, 0.3 of
them held only 14% of the text, the problems being short). DeepSeek-V3 (§4.1) raised the share of
mathematics and code in its pre-training corpus over V2's without publishing the figure, so 0.3
is our own choice: enough worked problems for a tiny model to pick up the formats, while most
of what it reads stays natural text.

`Packer` turns documents into token sequences of exactly seq_len + 1 ids (inputs and shifted
targets) with eos_id after every document; consecutive sequences share one boundary token, so
no target is dropped. Its `state_dict()` (documents consumed, offset into the next one)
resumes the same stream at the same token."""
from __future__ import annotations

import random
from itertools import islice
from typing import Callable, Iterable, Iterator

from nanoseek.data.problem import Problem
from nanoseek.data.styles import DEFAULT_STYLES, choose, parse_styles, styled
from nanoseek.data.tasks import TASKS, stream_mix
from nanoseek.errors import ConfigError, DataError

SYNTHETIC_FRACTION = 0.3
DIALOGUE = 0.3  # the share of problems rendered as a transcript (User: / Assistant:), the layout of R1-Zero's template


def render(problem: Problem, dialogue: bool = False) -> str:
    """The problem as a document: the question on its own line, or (dialogue) as a transcript's turns, `User: ...`
    then `Assistant: ...`; then the thinking and the answer."""
    head = f"User: {problem.prompt}\nAssistant: " if dialogue else f"{problem.prompt}\n"
    return f"{head}<think>\n{problem.reasoning}\n</think>\n\n{problem.answer}"


def mix_documents(text: Iterable[str], seed: int, synthetic_fraction: float = SYNTHETIC_FRACTION,
                  split: str = "train", difficulty: int | None = None, styles: str = DEFAULT_STYLES) -> Iterator[str]:
    """The text documents in order, each followed by as many problems of the all-task mix (rendered, each in a
    trace style drawn with the shares of `styles`, `data.styles`) as keep the problems' share of all characters so
    far at most `synthetic_fraction`; ends when the text does (1.0: problems only, endless). Deterministic for a
    given seed and text."""
    if not 0 <= synthetic_fraction <= 1:
        raise ConfigError(f"synthetic_fraction {synthetic_fraction!r}: expected a number in [0, 1]")
    return _interleave(text, synthetic_fraction, styled_documents(stream_mix(seed, split, difficulty),
                                                                  parse_styles(styles), seed))


def styled_documents(problems: Iterable[Problem], shares: dict[str, float], seed: int) -> Iterator[str]:
    """Each problem rendered in a style drawn with `shares`, DIALOGUE of them as transcripts, from a generator of
    its own seed."""
    rng = random.Random(f"styles/{seed}")
    for p in problems:
        yield render(styled(p, choose(shares, rng), TASKS[p.task].self_check(p), rng), rng.random() < DIALOGUE)


def _interleave(text: Iterable[str], synthetic_fraction: float, documents: Iterator[str]) -> Iterator[str]:
    if synthetic_fraction == 1:
        yield from documents
        return
    natural = synthetic = 0
    pending = None
    for doc in text:
        yield doc
        natural += len(doc)
        while True:  # problems while the share stays at most f: s / (s + n) <= f  <=>  s <= f / (1 - f) * n
            pending = pending or next(documents)
            if synthetic + len(pending) > synthetic_fraction / (1 - synthetic_fraction) * natural:
                break
            synthetic += len(pending)
            yield pending
            pending = None


class Packer:
    """Iterator of token lists of length seq_len + 1 cut from `doc0 eos doc1 eos ...`; each
    sequence starts on the last token of the one before. Stops when the documents run out
    (the partial tail is dropped)."""

    def __init__(self, documents: Iterable[str], encode: Callable[[str], list[int]], eos_id: int,
                 seq_len: int, state: dict | None = None):
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ConfigError(f"seq_len {seq_len!r}: expected an int >= 1")
        self.documents, self.encode, self.eos_id, self.seq_len = iter(documents), encode, eos_id, seq_len
        state = state or {"documents": 0, "offset": 0}
        if set(state) != {"documents", "offset"}:
            raise DataError(f"packer state {state!r}: expected keys 'documents' and 'offset'")
        # the buffer holds tokens from the current position on; lengths[0] is the (eos-ended)
        # token length of document number `consumed`, the one the position falls in
        self.consumed, self.offset = state["documents"], state["offset"]
        self.buffer: list[int] = []
        self.lengths: list[int] = []
        if sum(1 for _ in islice(self.documents, self.consumed)) < self.consumed:
            raise DataError(f"packer state {state!r} is past the end of the documents")

    def state_dict(self) -> dict:
        return {"documents": self.consumed, "offset": self.offset}

    def __iter__(self) -> Packer:
        return self

    def __next__(self) -> list[int]:
        while len(self.buffer) < self.seq_len + 1:
            doc = next(self.documents, None)
            if doc is None:
                raise StopIteration
            tokens = self.encode(doc) + [self.eos_id]
            skip = self.offset if not self.lengths else 0  # resuming inside this document
            self.buffer += tokens[skip:]
            self.lengths.append(len(tokens))
        seq = self.buffer[:self.seq_len + 1]
        del self.buffer[:self.seq_len]
        self.offset += self.seq_len
        while self.lengths and self.offset >= self.lengths[0]:
            self.offset -= self.lengths.pop(0)
            self.consumed += 1
        return seq
