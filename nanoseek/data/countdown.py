"""The countdown numbers game: reach a target from given numbers, each used at most once, with
+ - * / where every division is exact. The trace narrates a short search, near misses first
(the nearest last), then the combination that works:

    target 25 from 3, 7, 8, 100
    try 8 - 3 = 5: off by 20
    try 100 - 8 = 92, 92 + 7 = 99, 99 / 3 = 33: off by 8
    try 7 - 3 = 4, 100 / 4 = 25: yes
    So 100 / (7 - 3) = 25.

The answer is an expression; the verifier parses it with `ast` (never eval), allows only
+ - * / on integer literals, and checks the literals against the given numbers."""
from __future__ import annotations

import ast
import random
import warnings
from collections import Counter
from fractions import Fraction

from nanoseek.data.expression import OPS, Node, render
from nanoseek.data.problem import Problem, Task, parse_number

BIG = (25, 50, 75, 100)
# level -> (numbers given, how many of them big, numbers the solution uses (min, max), target range)
LEVELS = {
    1: (3, 0, (2, 2), (2, 99)),
    2: (4, 0, (2, 3), (10, 99)),
    3: (4, 1, (3, 3), (10, 200)),
    4: (5, 1, (3, 4), (20, 500)),
    5: (6, 2, (4, 5), (100, 999)),
}
MISSES = 8  # random combinations tried, of which the nearest one or two are narrated
MAX_ANSWER_CHARS = 200
AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def combine(rng: random.Random, values: list[int]) -> tuple[list[str], Node, int]:
    """Fold the values into one by random exact steps (larger operand first for - and /, no
    multiplying or dividing by 1). Returns the narrated steps, the expression and its value."""
    pool = [(v, Node(value=v)) for v in values]
    steps = []
    while len(pool) > 1:
        (a, x), (b, y) = sorted((pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))),
                                key=lambda p: -p[0])
        ops = ["+"] + ["-"] * (a != b) + ["*"] * (b != 1) + ["/"] * (b != 1 and a % b == 0)
        op = rng.choice(ops)
        r = a // b if op == "/" else OPS[op](a, b)
        steps.append(f"{a} {op} {b} = {r}")
        pool.append((r, Node(op=op, left=x, right=y)))
    return steps, pool[0][1], pool[0][0]


def make(rng: random.Random, level: int) -> Problem:
    n, n_big, (lo, hi), (t_min, t_max) = LEVELS[level]
    while True:
        numbers = sorted([rng.choice(BIG) for _ in range(n_big)] + [rng.randint(1, 10) for _ in range(n - n_big)])
        steps, tree, target = combine(rng, rng.sample(numbers, rng.randint(lo, hi)))
        if t_min <= target <= t_max and target not in numbers:
            break
    tries = [combine(rng, rng.sample(numbers, rng.randint(2, n))) for _ in range(MISSES)]
    misses = sorted((t for t in tries if t[2] != target), key=lambda t: -abs(t[2] - target))
    lines = [f"target {target} from {', '.join(map(str, numbers))}"]
    for s, _, v in misses[-rng.randint(1, 2):]:
        lines.append(f"try {', '.join(s)}: off by {abs(v - target)}")
    answer = render(tree)
    lines += [f"try {', '.join(steps)}: yes", f"So {answer} = {target}."]
    prompt = f"Using the numbers {', '.join(map(str, numbers))} (each at most once) and + - * /, make {target}."
    return Problem(task="countdown", prompt=prompt, reasoning="\n".join(lines), answer=answer,
                   numbers=tuple(numbers), target=target)


def value(node: ast.AST, used: list[int]) -> Fraction | None:
    """Exact value of an allowed expression, collecting its literals; None for anything else
    (another operator, a unary minus, a float, an inexact division, division by zero)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if not (isinstance(node, ast.BinOp) and type(node.op) in AST_OPS):
        return None
    a, b = value(node.left, used), value(node.right, used)
    if a is None or b is None or (isinstance(node.op, ast.Div) and (b == 0 or (a / b).denominator != 1)):
        return None
    return OPS[AST_OPS[type(node.op)]](a, b)


def check(problem: Problem, text: str) -> bool:
    """True when the expression (optionally followed by '= target') reaches the target using
    only given numbers, none more often than given."""
    text = text.replace("\u00d7", "*").replace("\u00f7", "/").replace("\u2212", "-")
    expr, _, stated = text.partition("=")
    if len(expr) > MAX_ANSWER_CHARS or (stated.strip() and parse_number(stated) != problem.target):
        return False
    try:
        with warnings.catch_warnings():  # "3or 2" is a wrong answer, not a warning on the console
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError):  # ValueError: a null byte
        return False
    used = []
    return value(tree.body, used) == problem.target and not Counter(used) - Counter(problem.numbers)


INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}


def self_check(problem: Problem) -> str:
    """The last combination undone (the target with the inverse operation and the right part gives the left
    part), and the numbers used, each one given."""
    tree = ast.parse(problem.answer, mode="eval").body
    used: list[int] = []
    left, right = value(tree.left, used), value(tree.right, used)
    return (f"check: {problem.target} {INVERSE[AST_OPS[type(tree.op)]]} {right} = {left}; uses "
            f"{', '.join(map(str, sorted(used)))}, each given")


TASK = Task(name="countdown", make=make, check=check, self_check=self_check, default_difficulty=2)
