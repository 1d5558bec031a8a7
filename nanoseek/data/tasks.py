"""The task registry and the generation API: deterministic streams of problems by task, seed and
split, a round-robin mix of all tasks, the verifier dispatch, and the JSONL writer.

A split's stream draws problems from one seeded generator and keeps those whose prompt hashes
into that split (`problem.split_of`), so train and eval never share a problem."""
from __future__ import annotations

import json
import random
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

from nanoseek.atomic import open_atomic
from nanoseek.data import arithmetic, countdown, expression, linear
from nanoseek.data.problem import Problem, Task, check_split, split_of
from nanoseek.errors import ConfigError, DataError

TASKS: dict[str, Task] = {t.name: t for t in (arithmetic.TASK, expression.TASK, linear.TASK, countdown.TASK)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


def stream(task: str, seed: int, split: str, difficulty: int | None = None) -> Iterator[Problem]:
    """An endless, deterministic stream of one task's problems belonging to `split`."""
    t, split = get_task(task), check_split(split)
    return _draw(t, t.level(difficulty), seed, split)


def _draw(t: Task, level: int, seed: int, split: str) -> Iterator[Problem]:
    rng = random.Random(f"{t.name}/{level}/{seed}")  # str seeds hash the same in every process
    while True:
        p = t.make(rng, level)
        if split_of(p.prompt) == split:
            yield p


def stream_mix(seed: int, split: str, difficulty: int | None = None) -> Iterator[Problem]:
    """All tasks interleaved in registry order: arithmetic, expression, linear, countdown, ..."""
    return chain.from_iterable(zip(*[stream(name, seed, split, difficulty) for name in TASKS]))


def check_count(n: int) -> int:
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"number of problems {n!r}: expected an int >= 0")
    return n


def generate(task: str, n: int, seed: int, split: str, difficulty: int | None = None) -> list[Problem]:
    return list(islice(stream(task, seed, split, difficulty), check_count(n)))


def generate_mix(n: int, seed: int, split: str, difficulty: int | None = None) -> list[Problem]:
    return list(islice(stream_mix(seed, split, difficulty), check_count(n)))


def verify(problem: Problem | dict, answer_text: str) -> bool:
    """Judge an answer to a problem, or to a row read back from a JSONL file."""
    p = problem if isinstance(problem, Problem) else Problem.from_row(problem)
    return get_task(p.task).check(p, answer_text)


def save_jsonl(problems: Iterable[Problem], path: str | Path) -> int:
    """Write one row per problem atomically (temp file in the same folder, fsync, rename);
    returns the number of rows."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"cannot write {path}: folder {path.parent} does not exist")
    n = 0
    with open_atomic(path) as f:
        for p in problems:
            f.write(json.dumps(p.to_row(), ensure_ascii=False) + "\n")
            n += 1
    return n
