"""Multi-step integer expressions with precedence and parentheses, e.g. `(3 + 4) * 5 - 6 * 2`,
evaluated one operation per line the way it is taught: the innermost brackets first, inside
them (and then outside) multiplication before addition and subtraction, left to right.

    brackets: 3 + 4 = 7 -> 7 * 5 - 6 * 2
    multiply: 7 * 5 = 35 -> 35 - 6 * 2

Also home of the expression tree (`Node`, `render`) that countdown uses for its answers."""
from __future__ import annotations

import operator
import random
import re
from dataclasses import dataclass

from nanoseek.data.problem import Problem, Task, check_number

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
NAMES = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}
# level -> (number of operations, largest operand)
LEVELS = {1: (2, 9), 2: (3, 9), 3: (3, 20), 4: (4, 20), 5: (5, 30)}
MAX_VALUE = 9999  # keep every intermediate result a number a small model can write
TIMES_TABLE = 12  # both factors of every product are at most this: a times-table fact, worked in one line


@dataclass(frozen=True)
class Node:
    """A leaf (op is None, value set) or a binary operation on two subtrees."""
    op: str | None = None
    value: int = 0
    left: Node | None = None
    right: Node | None = None


def render(node: Node) -> str:
    """Infix text with only the parentheses precedence needs: a child binding more loosely
    than its parent, or a right child of - or / at the same level (a - (b + c))."""
    if node.op is None:
        return str(node.value)
    left, right = render(node.left), render(node.right)
    p = PRECEDENCE[node.op]
    if node.left.op and PRECEDENCE[node.left.op] < p:
        left = f"({left})"
    if node.right.op and (PRECEDENCE[node.right.op] < p or (PRECEDENCE[node.right.op] == p and node.op in "-/")):
        right = f"({right})"
    return f"{left} {node.op} {right}"


def random_tree(rng: random.Random, n_ops: int, largest: int) -> Node:
    if n_ops == 0:
        return Node(value=rng.randint(1, largest))
    n_left = rng.randint(0, n_ops - 1)
    return Node(op=rng.choice("+-*"), left=random_tree(rng, n_left, largest),
                right=random_tree(rng, n_ops - 1 - n_left, largest))


def tokenize(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in text.replace("(", "( ").replace(")", " )").split()]


def show(tokens: list) -> str:
    return " ".join(map(str, tokens)).replace("( ", "(").replace(" )", ")")


def reduce_once(tokens: list) -> tuple[list, bool, int, str, int, int]:
    """Perform the next operation in teaching order. Returns the new tokens, whether the step
    was inside brackets, and the step itself (a, op, b, result)."""
    lo, hi = 0, len(tokens)
    in_brackets = ")" in tokens
    if in_brackets:  # the first ')' closes an innermost bracket
        hi = tokens.index(")")
        lo = hi - tokens[hi - 1::-1].index("(")
    group = tokens[lo:hi]
    i = lo + (group.index("*") if "*" in group else 1)
    a, op, b = tokens[i - 1], tokens[i], tokens[i + 1]
    r = OPS[op](a, b)
    out = tokens[:i - 1] + [r] + tokens[i + 2:]
    if in_brackets and out[lo - 1] == "(" and out[lo + 1] == ")":  # a bracket now holds one number
        out = out[:lo - 1] + [r] + out[lo + 2:]
    return out, in_brackets, a, op, b, r


def make(rng: random.Random, level: int) -> Problem:
    n_ops, largest = LEVELS[level]
    while True:
        text = render(random_tree(rng, n_ops, largest))
        tokens, lines, ok = tokenize(text), [text], True
        while len(tokens) > 1:
            tokens, in_brackets, a, op, b, r = reduce_once(tokens)
            # no negatives mid-way (they would need '(-4)'), and products within the times tables
            ok = ok and 0 <= r <= MAX_VALUE and not (op == "*" and max(a, b) > TIMES_TABLE)
            step = f"{'brackets' if in_brackets else NAMES[op]}: {a} {op} {b} = {r}"
            lines.append(step if len(tokens) == 1 else f"{step} -> {show(tokens)}")
        if ok:
            return Problem(task="expression", prompt=f"What is {text}?", reasoning="\n".join(lines),
                           answer=str(tokens[0]))


def self_check(problem: Problem) -> str:
    """The last operation undone: its result, with the inverse operation and the second operand, gives back the
    first (a product by division, unless the divisor would be 0)."""
    a, op, b, r = re.fullmatch(r"\w+: (\d+) ([-+*]) (\d+) = (\d+)", problem.reasoning.splitlines()[-1]).groups()
    if op == "+":
        return f"check: {r} - {b} = {a}"
    if op == "-":
        return f"check: {r} + {b} = {a}"
    if int(b):
        return f"check: {r} / {b} = {a}"
    return f"check: {b} * {a} = {r}"


TASK = Task(name="expression", make=make, check=check_number, self_check=self_check, default_difficulty=2)
