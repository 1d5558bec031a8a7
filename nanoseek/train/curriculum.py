"""A curriculum over the tasks' levels that keeps each task at the edge of the policy's competence (arXiv 2512.07783:
RL lifts pass@k only there; DAPO §3.2: groups all right or all wrong carry no gradient)."""
from __future__ import annotations

from typing import Sequence


def next_level(level: int, pass_rate: float, band: tuple[float, float], levels: tuple[int, int]) -> int:
    """The curriculum's rule: one level up when the running pass rate is above the band, one down when below it,
    within levels (lowest, highest); else the same level. Keeping questions where the policy sometimes succeeds is
    where RL helps (arXiv 2512.07783: pass@k rises only at the edge of competence; DAPO §3.2: groups all right or
    all wrong carry no gradient)."""
    low, high = band
    if pass_rate > high and level < levels[1]:
        return level + 1
    if pass_rate < low and level > levels[0]:
        return level - 1
    return level


class Curriculum:
    """A level per task, moved by `next_level` on the running pass rate: the mean accuracy reward of the last
    `window` completions sampled at the task's current level, judged after every rollout once the window is full.
    A change of level empties the window, so the next judgement sees the new level only."""

    def __init__(self, tasks: Sequence[str], start: int, band: tuple[float, float], levels: tuple[int, int],
                 window: int):
        self.band, self.levels, self.window = band, levels, window
        self.level = dict.fromkeys(tasks, start)
        self.outcomes: dict[str, list[float]] = {task: [] for task in tasks}

    def record(self, task: str, level: int, outcomes: Sequence[float]) -> None:
        """The accuracy rewards of completions of a `task` question drawn at `level`."""
        if level != self.level[task]:
            return  # drawn before the level changed
        kept = (self.outcomes[task] + list(outcomes))[-self.window:]
        self.outcomes[task] = kept
        if len(kept) == self.window:
            new = next_level(level, sum(kept) / len(kept), self.band, self.levels)
            if new != level:
                self.level[task], self.outcomes[task] = new, []

    def pass_rate(self, task: str) -> float | None:
        kept = self.outcomes[task]
        return sum(kept) / len(kept) if kept else None

    def state_dict(self) -> dict:
        return {"level": dict(self.level), "outcomes": {k: list(v) for k, v in self.outcomes.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.level, self.outcomes = dict(state["level"]), {k: list(v) for k, v in state["outcomes"].items()}
