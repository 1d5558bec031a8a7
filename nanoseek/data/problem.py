"""What every verifiable task shares: the `Problem` record, the `Task` registry entry, the
train/eval split by hash, and the forgiving number parser the numeric verifiers use.

A problem's split is a pure function of its prompt (the canonical problem text), so the same
problem can never land in both splits, whatever seed or generator produced it."""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from nanoseek.errors import ConfigError, DataError

SPLITS = ("train", "eval")
EVAL_PER_MILLE = 100  # ~10% of all possible problems belong to eval


@dataclass(frozen=True)
class Problem:
    """One generated task instance. `numbers` and `target` are filled for countdown only, whose
    verifier needs them to judge an expression other than the reference answer."""
    task: str
    prompt: str
    reasoning: str
    answer: str
    numbers: tuple[int, ...] = ()
    target: int | None = None

    def to_row(self) -> dict:
        row = {"prompt": self.prompt, "answer": self.answer, "reasoning": self.reasoning, "task": self.task}
        if self.target is not None:
            row["numbers"] = list(self.numbers)
            row["target"] = self.target
        return row

    @classmethod
    def from_row(cls, row: dict) -> Problem:
        missing = [k for k in ("prompt", "answer", "task") if k not in row]
        if missing:
            raise DataError(f"row is missing field(s) {missing}; has {sorted(row)}")
        return cls(task=row["task"], prompt=row["prompt"], reasoning=row.get("reasoning", ""),
                   answer=row["answer"], numbers=tuple(row.get("numbers", ())), target=row.get("target"))


@dataclass(frozen=True)
class Task:
    """A registry entry: `make(rng, difficulty)` draws one problem, `check(problem, text)` judges an answer,
    `self_check(problem)` is a line that verifies the answer by another route (`data.styles`)."""
    name: str
    make: Callable[[random.Random, int], Problem]
    check: Callable[[Problem, str], bool]
    self_check: Callable[[Problem], str]
    default_difficulty: int
    max_difficulty: int = 5

    def level(self, difficulty: int | None) -> int:
        if difficulty is None:
            return self.default_difficulty
        if not isinstance(difficulty, int) or not 1 <= difficulty <= self.max_difficulty:
            raise ConfigError(f"difficulty {difficulty!r} for task {self.name!r}: expected an int in 1..{self.max_difficulty}")
        return difficulty


def split_of(prompt: str) -> str:
    """'eval' for ~10% of prompts, 'train' for the rest, decided by a hash of the text alone."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return "eval" if h % 1000 < EVAL_PER_MILLE else "train"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {SPLITS}")
    return split


_NUMBER = re.compile(r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?")


def parse_number(text: str) -> Fraction | None:
    """The value of an answer like '5', ' 5.0 ', '1,234', '-7', 'x = 5' or '= 42.'; None when
    the text is not one number (so '5 6', '12,34' and 'five' are rejected, not guessed at)."""
    s = text.strip().replace("\u2212", "-")
    s = re.sub(r"^([a-zA-Z]\s*)?=\s*", "", s)  # a leading 'x =' or '='
    s = re.sub(r"^([+-])\s+", r"\1", s).rstrip(".").strip()
    if not _NUMBER.fullmatch(s):
        return None
    return Fraction(s.replace(",", ""))


def check_number(problem: Problem, text: str) -> bool:
    """Verifier for the tasks whose answer is one integer: same value, any formatting."""
    return parse_number(text) == int(problem.answer)
