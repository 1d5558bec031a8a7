"""Linear equations in one unknown with an integer solution, solved by isolating x one move per
line: expand brackets, collect the x terms on the left, the numbers on the right, divide.

    2(x + 3) + 5 = 4x + 1
    expand: 2x + 6 + 5 = 4x + 1
    combine: 2x + 11 = 4x + 1
    subtract 4x from both sides: -2x + 11 = 1
    subtract 11 from both sides: -2x = 1 - 11 = -10
    divide both sides by -2: x = 5

Levels: 1 `x + b = d` (numbers within 21); 2 `ax + b = d`; 3 `ax + b = cx + d`; 4 `a(x + b) + c = d`;
5 `a(x + b) + c = ex + f`. The unknown is one of several letters (`Solve for n: n - 2 = 9`), which keeps level
1's few hundred equations from repeating in the held-out set."""
from __future__ import annotations

import ast
import operator
import random
import re

from nanoseek.data.problem import Problem, Task, check_number

UNKNOWNS = "xyznmk"


def term(coef: int) -> str:
    return {1: "x", -1: "-x"}.get(coef, f"{coef}x")


def plus(k: int) -> str:
    """' + k', ' - |k|' or '' for k = 0: a constant following a term."""
    return f" + {k}" if k > 0 else f" - {-k}" if k < 0 else ""


def side(coef: int, const: int) -> str:
    return term(coef) + plus(const) if coef else str(const)


def bracket(a: int, b: int) -> str:
    return f"{a}(x{plus(b)})"


def isolate(a: int, b: int, c: int, d: int) -> list[str]:
    """The moves that take `ax + b = cx + d` (a != c) to `x = value`."""
    lines = []
    if c:
        move = f"subtract {term(c)} from" if c > 0 else f"add {term(-c)} to"
        a, c = a - c, 0
        lines.append(f"{move} both sides: {side(a, b)} = {d}")
    if b:
        move = f"subtract {b} from" if b > 0 else f"add {-b} to"
        lines.append(f"{move} both sides: {term(a)} = {d}{plus(-b)} = {d - b}")
        b, d = 0, d - b
    if a != 1:
        lines.append(f"divide both sides by {a}: x = {d // a}")
    return lines


def make(rng: random.Random, level: int) -> Problem:
    x = rng.randint(0, 12) if level == 1 else rng.randint(0, 20) if level == 2 else rng.randint(-10, 10)
    a = 1 if level == 1 else rng.randint(2, 9)
    b = rng.choice([-1, 1]) * rng.randint(1, 9 if level == 1 else 20)  # level 1: a sum or difference within 21
    if level == 1 and x < -b:
        b = -b  # keep level 1 free of negative numbers
    if level <= 3:
        c = rng.choice([m for m in range(10) if m != a]) if level == 3 else 0
        d = a * x + b - c * x
        text, lines = f"{side(a, b)} = {side(c, d)}", []
    else:
        b = rng.choice([-1, 1]) * rng.randint(1, 9)
        k = rng.randint(-20, 20)
        c = rng.choice([m for m in range(10) if m != a]) if level == 5 else 0
        d = a * (x + b) + k - c * x
        right = side(c, d)
        text = f"{bracket(a, b)}{plus(k)} = {right}"
        lines = [f"expand: {term(a)}{plus(a * b)}{plus(k)} = {right}"]
        if k:
            lines.append(f"combine: {side(a, a * b + k)} = {right}")
        b = a * b + k
    lines = [text] + lines + isolate(a, b, c, d)
    unknown = rng.choice(UNKNOWNS)
    text, reasoning = (re.sub(r"(?<![a-z])x(?![a-z])", unknown, s) for s in (text, "\n".join(lines)))  # not "expand"
    return Problem(task="linear", prompt=f"Solve for {unknown}: {text}", reasoning=reasoning, answer=str(x))


def substitute(side: str, unknown: str, x: int) -> str:
    """A side of the equation with the unknown replaced by x, products written out: '2(n + 3)' -> '2*(5 + 3)'."""
    v = str(x) if x >= 0 else f"({x})"
    side = re.sub(r"(\d)\(", r"\1*(", side)
    side = re.sub(rf"(\d){unknown}(?![a-z])", rf"\g<1>*{v}", side)
    return re.sub(rf"(?<![a-z]){unknown}(?![a-z])", v, side)


def _value(node: ast.AST) -> int:
    """The value of a substituted side: integers, + - *, unary minus and brackets."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        return -_value(node.operand)
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
    return ops[type(node.op)](_value(node.left), _value(node.right))


def self_check(problem: Problem) -> str:
    """The solution substituted back: each side that holds the unknown worked out, both equal."""
    unknown, equation = problem.prompt.removeprefix("Solve for ").split(": ", 1)
    x = int(problem.answer)
    worked = []
    for side in equation.split(" = "):
        if re.search(rf"(?<![a-z]){unknown}(?![a-z])", side):
            text = substitute(side, unknown, x)
            worked.append(f"{text} = {_value(ast.parse(text, mode='eval').body)}")
    return f"check: {unknown} = {x}: " + "; ".join(worked)


TASK = Task(name="linear", make=make, check=check_number, self_check=self_check, default_difficulty=2)
