"""Tests for nanoseek/data/countdown.py: the verifier on crafted answers, and generated traces."""
from collections import Counter

import pytest

from nanoseek.data.countdown import LEVELS
from nanoseek.data.problem import Problem
from nanoseek.data.tasks import generate, verify

P = Problem(task="countdown", prompt="Using the numbers 2, 3, 7, 50 (each at most once) and + - * /, make 75.",
            reasoning="", answer="50 * 3 / 2", numbers=(2, 3, 7, 50), target=75)


@pytest.mark.parametrize("text", [
    "50 * 3 / 2", " 50*3/2 ", "(50 * 3) / 2", "3 * 50 / 2", "50 / 2 * 3", "(50 / 2) * 3",
    "50 * 3 / 2 = 75", "50 * 3 / 2 = 75.", "50 \u00d7 3 \u00f7 2",
])
def test_correct_answers_in_any_format(text):
    assert verify(P, text)


@pytest.mark.parametrize("text", [
    "50 + 7 * 3",              # 71, wrong value
    "50 * 3 / 2 = 76",         # right expression, wrong stated result
    "50 + 7 * 3 + 2 * 2",      # 75, but 2 used twice
    "25 * 3",                  # 75, but 25 is not given
    "75",                      # the target itself is not given
    "3 / 2 * 50",              # 75, but 3 / 2 is not exact
    "50 * 3 / -(-2)",          # unary minus
    "50 * 3 / 2.0",            # a float
    "2 ** 3",                  # another operator
    "__import__('os').getcwd()",
    "50 * 3 /", "", "seventy-five",
])
def test_wrong_answers(text):
    assert not verify(P, text)


def test_malformed_number_is_wrong_without_a_warning(recwarn):
    """Python warns on "3or 2" as it parses ("invalid decimal literal"): a model's answer is judged, not warned about."""
    assert not verify(P, "50 * 3or 2") and not verify(P, "3and 25")
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning)]


def test_division_by_zero_is_wrong_not_an_error():
    p = Problem(task="countdown", prompt="", reasoning="", answer="3 + 3 + 5", numbers=(3, 3, 5), target=11)
    assert verify(p, "3 + 3 + 5") and not verify(p, "5 / (3 - 3)")


@pytest.mark.parametrize("level", range(1, 6))
def test_generated_problems_follow_the_level(level):
    n, n_big, _, (t_min, t_max) = LEVELS[level]
    for p in generate("countdown", 60, seed=level, split="train", difficulty=level):
        assert len(p.numbers) == n and sum(x in (25, 50, 75, 100) for x in p.numbers) == n_big
        assert list(p.numbers) == sorted(p.numbers) and t_min <= p.target <= t_max
        assert p.prompt == (f"Using the numbers {', '.join(map(str, p.numbers))} (each at most once) "
                            f"and + - * /, make {p.target}.")
        lines = p.reasoning.splitlines()
        assert lines[0] == f"target {p.target} from {', '.join(map(str, p.numbers))}"
        assert lines[-2].endswith(": yes") and lines[-1] == f"So {p.answer} = {p.target}."
        for line in lines[1:-1]:  # every attempt is exact arithmetic on numbers at hand
            steps, verdict = line.removeprefix("try ").split(": ")
            pool = Counter(p.numbers)
            for step in steps.split(", "):
                a, op, b, _, r = step.split()
                a, b, r = int(a), int(b), int(r)
                for x in (a, b):
                    assert pool[x] > 0, (p.numbers, line)
                    pool[x] -= 1
                assert {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op] == r, step
                pool[r] += 1
            assert verdict == ("yes" if r == p.target else f"off by {abs(r - p.target)}"), line
