"""Tests for nanoseek/data/arithmetic.py: every column of the trace against a plain computation."""
import re

from nanoseek.data.arithmetic import add_lines, mul_lines, partial_product, sub_lines
from nanoseek.data.tasks import generate

COLUMN = re.compile(r"^(?P<terms>[\d +-]+?)(?: = \d+)?(?:: borrow 10, [\d -]+ = \d+)?, write (?P<w>\d+)(?P<carry> carry 1)?$")


def digit(n, i):
    return n // 10 ** i % 10


def carry_out(a, b, i):
    """Column i of a + b carries when the low i+1 digits overflow."""
    return a % 10 ** (i + 1) + b % 10 ** (i + 1) >= 10 ** (i + 1)


def borrow_out(a, b, i):
    """Column i of a - b borrows when the low i+1 digits of a are the smaller."""
    return a % 10 ** (i + 1) < b % 10 ** (i + 1)


def operands(op):
    out = []
    for level in range(1, 6):
        for p in generate("arithmetic", 150, seed=level, split="train", difficulty=level):
            a, o, b = p.prompt.removeprefix("What is ").removesuffix("?").split()
            if o == op:
                out.append((int(a), int(b)))
    assert len(out) > 100
    return out


def read_columns(lines):
    """(terms, written digits, carry flag) per column line."""
    out = []
    for line in lines:
        m = COLUMN.match(line)
        assert m, line
        out.append((m["terms"], m["w"], bool(m["carry"])))
    return out


def test_addition_carries_match_plain_computation():
    for a, b in operands("+") + [(999, 1), (95, 5), (1, 1)]:
        columns = read_columns(add_lines(a, b))
        for i, (terms, _, carry) in enumerate(columns):
            expected = [digit(a, i)] + ([digit(b, i)] if b >= 10 ** i else []) + ([1] if i and carry_out(a, b, i - 1) else [])
            assert [int(t) for t in terms.split(" + ")] == expected, (a, b, i)
            assert carry == (carry_out(a, b, i) and i < len(columns) - 1), (a, b, i)
        assert int("".join(w for _, w, _ in reversed(columns))) == a + b


def test_subtraction_borrows_match_plain_computation():
    for a, b in [(max(x, y), min(x, y)) for x, y in operands("-")] + [(1000, 1), (100, 100), (523, 187)]:
        lines = sub_lines(a, b)
        for i, ((terms, _, _), line) in enumerate(zip(read_columns(lines), lines)):
            expected = [digit(a, i)] + ([1] if i and borrow_out(a, b, i - 1) else []) + ([digit(b, i)] if b >= 10 ** i else [])
            assert [int(t) for t in terms.split(" - ")] == expected, (a, b, line)
            assert ("borrow 10" in line) == borrow_out(a, b, i), (a, b, line)
        assert int("".join(w for _, w, _ in reversed(read_columns(lines)))) == a - b


def test_multiplication_partial_products_and_carries():
    for a, b in operands("*"):
        digits = [int(c) for c in reversed(str(b))]
        for d in set(digits) - {0}:
            head, _, rest = partial_product(a, d).partition(": ")
            steps, _, result = rest.rpartition(" -> ")
            assert head == f"{a} * {d}" and int(result) == a * d
            for i, step in enumerate(steps.split("; ")):
                carry_in = (a % 10 ** i) * d // 10 ** i  # what the lower digits of a * d carry over
                assert step.startswith(f"{digit(a, i)}*{d} " + (f"+ {carry_in} =" if carry_in else "=")), (a, d, step)
        lines = mul_lines(a, b)
        assert [int(line.rsplit(" ", 1)[1]) for line in lines if " -> " in line] == [a * d * 10 ** k for k, d in enumerate(digits) if d]
        assert int(lines[-1].rsplit(" ", 1)[1]) == a * b
