"""The pipeline's data choices, shared by pretraining, SFT and evaluation.

- `DIFFICULTY`: the level of the synthetic tasks the default pipeline trains and evaluates on, calibrated so that
  the default `pretrain` then `sft` on a 2-core CPU lands between 30% and 85% held-out accuracy (room for RL).
- Text is split into training and held-out documents by a hash of each document (`data.problem.split_of`, the
  rule the task generators use), so validation loss and the MTP accuracy are measured on text never trained on.
- The default evaluation set is the held-out split of the all-task mix, drawn with its own seed, each problem
  once: a task's held-out split at level 1 holds only about a hundred problems, and drawn with repeats a few of them
  would weigh several times in the accuracy.
"""
from __future__ import annotations

from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from nanoseek.data.mix import Packer, mix_documents
from nanoseek.data.problem import Problem, split_of
from nanoseek.data.styles import DEFAULT_STYLES
from nanoseek.data.tasks import TASKS, check_count, stream
from nanoseek.data.text import read_documents, stdlib_documents
from nanoseek.errors import ConfigError
from nanoseek.tokenizer import Tokenizer

DIFFICULTY = 1
EVAL_SEED = 1234
EVAL_PROBLEMS = 200


def check_text_files(paths: Sequence[str | Path]) -> None:
    """Fail now, before a run writes anything, on a missing, empty or unreadable text file."""
    for path in paths:
        next(read_documents(path))


def text_source(paths: Sequence[str | Path]) -> Callable[[], Iterator[str]]:
    """A function that starts a fresh pass over the text: the given files in order, or the standard library's
    docstrings (1.5 MB, read once and kept) when there are none."""
    if paths:
        def files() -> Iterator[str]:
            for path in paths:
                yield from read_documents(path)
        return files
    cache: list[str] = []

    def stdlib() -> Iterator[str]:
        if not cache:
            cache.extend(stdlib_documents())
        return iter(cache)
    return stdlib


def split_text(text: Iterator[str], split: str) -> Iterator[str]:
    """The documents of `text` that belong to `split` ("train" or "eval")."""
    return (doc for doc in text if split_of(doc) == split)


def heldout_sequences(tokenizer: Tokenizer, text: Callable[[], Iterator[str]], n: int, seq_len: int,
                      difficulty: int | None = DIFFICULTY, seed: int = EVAL_SEED,
                      styles: str = DEFAULT_STYLES) -> torch.Tensor | None:
    """Up to n sequences (n, seq_len + 1) of held-out text mixed with held-out worked problems, packed as in
    pretraining; None when the held-out text is shorter than one sequence (a small file of the user's)."""
    documents = mix_documents(split_text(text(), "eval"), seed, split="eval", difficulty=difficulty, styles=styles)
    rows = list(islice(Packer(documents, tokenizer.encode, tokenizer.eos_id, seq_len), n))
    return torch.tensor(rows) if rows else None


def eval_problems(n: int = EVAL_PROBLEMS, difficulty: int | None = DIFFICULTY, seed: int = EVAL_SEED) -> list[Problem]:
    """The default evaluation set: n distinct held-out problems, the four tasks in turn."""
    tasks = [_distinct(stream(task, seed, "eval", difficulty), difficulty) for task in TASKS]
    return list(islice(chain.from_iterable(zip(*tasks)), check_count(n)))


def _distinct(problems: Iterator[Problem], difficulty: int | None, patience: int = 10_000) -> Iterator[Problem]:
    """The problems without repeats; ConfigError when `patience` draws in a row bring nothing new."""
    seen: set[str] = set()
    misses = 0
    for p in problems:
        if p.prompt not in seen:
            seen.add(p.prompt)
            misses = 0
            yield p
        elif (misses := misses + 1) > patience:
            raise ConfigError(f"the held-out {p.task} problems at difficulty {difficulty} number only {len(seen)}: "
                              f"ask for at most {len(seen) * len(TASKS)} problems")
