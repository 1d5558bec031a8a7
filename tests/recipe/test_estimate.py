"""recipe/estimate.py: the run's progress line and its estimate of the time left."""
import pytest

from nanoseek.recipe.estimate import progress_line, remaining_seconds
from nanoseek.recipe.stages import recipe

PLAN = recipe("default")
NAMES = [s.name for s in PLAN.stages]


def done(first: int, minutes: float = 10.0) -> dict[str, dict]:
    return {name: {"seconds": minutes * 60, "eval_seconds": 0.0} for name in NAMES[:first]}


def test_no_estimate_before_a_stage_has_finished():
    assert remaining_seconds(PLAN, {}) is None
    assert progress_line(PLAN, {}, 1).startswith(f"== stage 1/{len(NAMES)}: pretrain; an estimate")


def test_the_estimate_scales_with_the_measured_times_and_names_the_kinds_not_yet_measured():
    slow, unmeasured = remaining_seconds(PLAN, done(2, minutes=20))
    fast, _ = remaining_seconds(PLAN, done(2, minutes=10))
    assert slow == pytest.approx(2 * fast) and fast > 0
    assert unmeasured == ["quantization", "sampling"]      # pretrain (training) and r1-zero (RL) have run
    line = progress_line(PLAN, done(2, minutes=10), 3)
    assert f"== stage 3/{len(NAMES)}: sft; 2 done in 20.0 min, about {fast / 60:.0f} min to go" in line
    assert "quantization and sampling estimated at the finished stages' rate" in line


def test_a_finished_run_has_nothing_left():
    assert remaining_seconds(PLAN, done(len(NAMES))) == (0.0, [])

