"""Multi-digit arithmetic worked the schoolbook way: column addition with carries, column
subtraction with borrows, and long multiplication by partial products (one digit of the
multiplier at a time, shifted, then summed).

Trace lines, right to left, one column each:
    7 + 9 = 16, write 6 carry 1                      (addition)
    2 - 1 - 8: borrow 10, 12 - 1 - 8 = 3, write 3    (subtraction; '- 1' is the borrow paid back)
    347 * 6: 7*6 = 42, write 2 carry 4; ... -> 2082  (one partial product)
The leftmost column writes its whole value, so the result reads off the written digits."""
from __future__ import annotations

import random

from nanoseek.data.problem import Problem, Task, check_number

# level -> digits of the operands: (+ and -), then (x: multiplicand, multiplier)
ADD_DIGITS = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6}
MUL_DIGITS = {1: (2, 1), 2: (3, 1), 3: (3, 2), 4: (4, 2), 5: (4, 3)}


def digits(n: int) -> list[int]:
    """Digits of n, least significant first."""
    return [int(c) for c in reversed(str(n))]


def add_lines(a: int, b: int) -> list[str]:
    """Column addition of a >= b."""
    da, db = digits(a), digits(b)
    lines, carry = [], 0
    for i in range(len(da)):
        terms = [da[i]] + ([db[i]] if i < len(db) else []) + ([carry] if carry else [])
        s = sum(terms)
        head = f"{' + '.join(map(str, terms))} = {s}" if len(terms) > 1 else f"{s}"
        carry = int(s >= 10 and i < len(da) - 1)
        lines.append(f"{head}, write {s % 10} carry 1" if carry else f"{head}, write {s}")
    return lines


def sub_lines(a: int, b: int) -> list[str]:
    """Column subtraction of b from a >= b."""
    da, db = digits(a), digits(b)
    lines, borrow = [], 0
    for i, t in enumerate(da):
        rest = ([1] if borrow else []) + ([db[i]] if i < len(db) else [])
        r = t - sum(rest)
        expr = " - ".join(map(str, [t] + rest))
        if not rest:
            lines.append(f"{t}, write {t}")
        elif r < 0:
            lines.append(f"{expr}: borrow 10, {' - '.join(map(str, [t + 10] + rest))} = {r + 10}, write {r + 10}")
        else:
            lines.append(f"{expr} = {r}, write {r}")
        borrow = int(r < 0)
    return lines


def partial_product(a: int, d: int) -> str:
    """One row of long multiplication: a times the single digit d, with carries."""
    steps, carry = [], 0
    da = digits(a)
    for i, t in enumerate(da):
        p = t * d + carry
        head = f"{t}*{d} + {carry} = {p}" if carry else f"{t}*{d} = {p}"
        carry = p // 10 if i < len(da) - 1 else 0
        steps.append(f"{head}, write {p % 10} carry {carry}" if carry else f"{head}, write {p}")
    return f"{a} * {d}: " + "; ".join(steps) + f" -> {a * d}"


def mul_lines(a: int, b: int) -> list[str]:
    lines, partials = [], []
    for k, d in enumerate(digits(b)):
        if d == 0:
            continue  # a zero digit adds nothing
        row = partial_product(a, d)
        p = a * d * 10 ** k
        lines.append(row + (f" * {10 ** k} = {p}" if k else ""))
        partials.append(p)
    total = partials[0]
    for p in partials[1:]:
        lines.append(f"{total} + {p} = {total + p}")
        total += p
    return lines


def make(rng: random.Random, level: int) -> Problem:
    op = rng.choice("+-*")
    if op == "*":
        n_a, n_b = MUL_DIGITS[level]
        a = rng.randint(10 ** (n_a - 1), 10 ** n_a - 1)
        b = rng.randint(max(2, 10 ** (n_b - 1)), 10 ** n_b - 1)
    else:
        n = ADD_DIGITS[level]
        a = rng.randint(10 ** (n - 1), 10 ** n - 1)
        b = rng.randint(1, 10 ** rng.randint(1, n) - 1)
    # the larger operand goes first: one canonical prompt per + or * problem (so one split), and
    # subtraction stays non-negative below level 3
    if b > a:
        a, b = b, a
    if op == "-" and level >= 3 and rng.random() < 0.5:
        a, b = b, a
    if op == "+":
        head, lines, value = "column by column from the right:", add_lines(a, b), a + b
    elif op == "*":
        head, lines, value = "one digit of the multiplier at a time:", mul_lines(a, b), a * b
    elif a >= b:
        head, lines, value = "column by column from the right:", sub_lines(a, b), a - b
    else:
        head, lines, value = f"{a} < {b}, so it is -({b} - {a}):", sub_lines(b, a), a - b
    lines = [f"{a} {op} {b}, {head}"] + lines + [f"So {a} {op} {b} = {value}."]
    return Problem(task="arithmetic", prompt=f"What is {a} {op} {b}?", reasoning="\n".join(lines), answer=str(value))


def self_check(problem: Problem) -> str:
    """The result checked by the inverse operation: a sum by subtraction, a difference by addition, a product by
    division."""
    a, op, b = problem.prompt.removeprefix("What is ").removesuffix("?").split()
    a, b, value = int(a), int(b), int(problem.answer)
    if op == "+":
        return f"check: {value} - {b} = {a}"
    if op == "*":
        return f"check: {value} / {b} = {a}"
    if value >= 0:
        return f"check: {value} + {b} = {a}"
    return f"check: {-value} + {a} = {b}"  # a - b = -(b - a)


TASK = Task(name="arithmetic", make=make, check=check_number, self_check=self_check, default_difficulty=2)
