"""Tests for nanoseek/data/linear.py: the solution satisfies every equation of the trace."""
import re

import pytest

from nanoseek.data.tasks import generate


def value(side, x, unknown="x"):
    """Evaluate one side such as '2(x - 1) - 10', '-3x + 44' or '7' at x, by hand-written parsing."""
    side = side.replace(unknown, "x")
    side = re.sub(r"(-?\d*)\(x ([+-]) (\d+)\)", lambda m: f"{m[1] or 1}x {m[2]} {int(m[1] or 1) * int(m[3])}", side)
    total = 0
    for sign, num, var in re.findall(r"([+-]?)\s*(\d*)(x?)", side.replace(" ", "")):
        if not num and not var:
            continue
        k = int(num or 1) * (-1 if sign == "-" else 1)
        total += k * x if var else k
    return total


def test_value_helper():
    assert value("2(x - 1) - 10", 3) == -6
    assert value("-x + 4", 3) == 1
    assert value("-3x - 44", 2) == -50
    assert value("7", 9) == 7


@pytest.mark.parametrize("level", range(1, 6))
def test_solution_satisfies_every_line(level):
    unknowns = set()
    for p in generate("linear", 200, seed=level, split="train", difficulty=level):
        x = int(p.answer)
        unknown, equation = re.fullmatch(r"Solve for ([a-z]): (.*)", p.prompt).groups()
        unknowns.add(unknown)
        lines = p.reasoning.splitlines()
        assert lines[0] == equation
        for line in lines:
            sides = line.split(": ")[-1].split(" = ")  # 'x = 9 - 5 = 4': the sum written out, then its value
            assert len({value(s, x, unknown) for s in sides}) == 1 and len(sides) in (2, 3), (p.prompt, line)
        last = lines[-1].split(": ")[-1]
        assert last.startswith(f"{unknown} = ") and last.endswith(f" = {x}")
        if level == 1:  # no negative numbers anywhere, and none above 21
            assert x >= 0 and not re.search(r"(^|[=:] )-", "\n".join([equation] + lines)), p
            assert max(map(int, re.findall(r"\d+", equation))) <= 21, p
        if level >= 4:
            assert "(" in p.prompt and lines[1].startswith("expand: ")
    assert len(unknowns) > 1
