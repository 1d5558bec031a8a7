"""Rule-based rewards for reasoning RL (R1 §2.2.2 and §2.3.2): no reward model, only rules that can be checked.

Each reward is a pure function `(completion, problem) -> float`, where `completion` is the assistant's output
after the generation prompt (`<think>\\n…\\n</think>\\n\\nanswer`, special tokens kept, end-of-sentence dropped)
and `problem` a `Problem` or a row with the verifier's fields. `RewardSet` sums them with weights by name.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Callable

from nanoseek.data.tasks import verify
from nanoseek.errors import ConfigError

THINK, END_THINK = "<think>", "</think>"
_FORMAT = re.compile(r"\s*<think>(.*?)</think>\s*(\S.*?)\s*", re.DOTALL)


def split_completion(completion: str) -> tuple[str, str] | None:
    """(reasoning, answer) of a well-formed completion: `<think>` and `</think>` exactly once each, in that
    order at the start, then a non-empty answer; None otherwise."""
    if completion.count(THINK) != 1 or completion.count(END_THINK) != 1:
        return None
    m = _FORMAT.fullmatch(completion)
    return (m[1].strip(), m[2]) if m else None


def format_reward(completion: str, problem=None) -> float:
    """R1 §2.2.2 format reward: the thinking between `<think>` and `</think>`, then an answer."""
    return 1.0 if split_completion(completion) else 0.0


def accuracy_reward(completion: str, problem) -> float:
    """R1 §2.2.2 accuracy reward: the task's verifier judges the final answer (the text after `</think>`; for an
    ill-formed completion, its last line, so R1-Zero's base model can earn accuracy before it learns the format)."""
    parts = split_completion(completion)
    if parts is not None:
        answer = parts[1]
    else:
        lines = [ln for ln in completion.replace(END_THINK, "\n").splitlines() if ln.strip()]
        answer = lines[-1] if lines else ""
    return 1.0 if answer and verify(problem, answer) else 0.0


_TARGET_WORD = re.compile(r"[A-Za-z0-9+\-*/=().,:;%<>'\"!?]+")


def language_reward(completion: str, problem=None) -> float:
    """R1 §2.3.2 language consistency: the proportion of words of the chain of thought in the target language
    (here the tasks' own: ASCII English words, numbers and arithmetic). 0 for a completion without one."""
    parts = split_completion(completion)
    words = parts[0].split() if parts else []
    if not words:
        return 0.0
    return sum(bool(_TARGET_WORD.fullmatch(w)) for w in words) / len(words)


def length_penalty(completion: str, problem=None, limit: int = 600) -> float:
    """Optional: 0 up to `limit` characters, then falling linearly to -1 at twice the limit."""
    return -min(1.0, max(0.0, (len(completion) - limit) / limit))


REWARDS: dict[str, Callable] = {"accuracy": accuracy_reward, "format": format_reward,
                                "language": language_reward, "length": length_penalty}


@dataclass
class RewardSet:
    """A weighted sum of rewards by name, e.g. RewardSet.parse("accuracy=1,format=0.5"). A reward that raises
    on one sample gives that sample 0 for it; errors are counted and each reward's first one is logged."""
    weights: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        unknown = [n for n in self.weights if n not in REWARDS]
        if unknown:
            raise ConfigError(f"unknown reward(s) {unknown}; choose from {', '.join(REWARDS)}")

    @classmethod
    def parse(cls, spec: str) -> "RewardSet":
        weights = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, w = part.partition("=")
            try:
                weights[name.strip()] = float(w) if w else 1.0
            except ValueError:
                raise ConfigError(f"reward weight {part!r}: expected name=number") from None
        return cls(weights)

    def score(self, completion: str, problem) -> dict[str, float]:
        """Each reward's value and their weighted sum under "total"."""
        values = {}
        for name in self.weights:
            try:
                values[name] = float(REWARDS[name](completion, problem))
            except Exception as e:  # one bad sample must not stop the run: it scores 0 and is counted
                if not self.errors.get(name):
                    print(f"warning: reward {name!r} failed ({type(e).__name__}: {e}); scoring 0", file=sys.stderr)
                self.errors[name] = self.errors.get(name, 0) + 1
                values[name] = 0.0
        values["total"] = sum(self.weights[n] * values[n] for n in self.weights)
        return values
