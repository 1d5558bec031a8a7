"""Tests for nanoseek/data/expression.py: each line of the trace against Python's own reading of
the expression (through ast, with exact fractions)."""
import ast
import operator
import re
from fractions import Fraction

from nanoseek.data.expression import Node, reduce_once, render, show, tokenize
from nanoseek.data.tasks import generate

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def reference(text):
    def ev(n):
        if isinstance(n, ast.Constant):
            return Fraction(n.value)
        return OPS[type(n.op)](ev(n.left), ev(n.right))
    return ev(ast.parse(text, mode="eval").body)


def test_every_step_is_right_and_keeps_the_value():
    for level in range(1, 6):
        for p in generate("expression", 100, seed=level, split="train", difficulty=level):
            text = p.prompt.removeprefix("What is ").removesuffix("?")
            lines = p.reasoning.splitlines()
            assert lines[0] == text
            value = reference(text)
            for line in lines[1:]:
                m = re.fullmatch(r"(brackets|add|subtract|multiply): (\d+) ([-+*]) (\d+) = (\d+)(?: -> (.*))?", line)
                assert m, line
                assert reference(f"{m[2]} {m[3]} {m[4]}") == int(m[5]), line
                assert m[3] != "*" or max(int(m[2]), int(m[4])) <= 12, line  # products from the times tables
                assert reference(m[6] or m[5]) == value, line
            assert int(p.answer) == value


def test_teaching_order_on_a_worked_example():
    tokens, steps = tokenize("2 * (6 + 7 * (20 - 17)) + 27"), []
    while len(tokens) > 1:
        tokens, in_brackets, a, op, b, r = reduce_once(tokens)
        steps.append((in_brackets, f"{a} {op} {b} = {r}", show(tokens)))
    assert steps == [
        (True, "20 - 17 = 3", "2 * (6 + 7 * 3) + 27"),
        (True, "7 * 3 = 21", "2 * (6 + 21) + 27"),
        (True, "6 + 21 = 27", "2 * 27 + 27"),
        (False, "2 * 27 = 54", "54 + 27"),
        (False, "54 + 27 = 81", "81"),
    ]


def test_render_minimal_parentheses():
    leaf = lambda v: Node(value=v)  # noqa: E731
    assert render(Node("-", left=leaf(9), right=Node("-", left=leaf(5), right=leaf(2)))) == "9 - (5 - 2)"
    assert render(Node("-", left=Node("-", left=leaf(9), right=leaf(5)), right=leaf(2))) == "9 - 5 - 2"
    assert render(Node("*", left=Node("+", left=leaf(1), right=leaf(2)), right=leaf(3))) == "(1 + 2) * 3"
    assert render(Node("+", left=leaf(1), right=Node("*", left=leaf(2), right=leaf(3)))) == "1 + 2 * 3"
    assert render(Node("/", left=leaf(8), right=Node("*", left=leaf(2), right=leaf(2)))) == "8 / (2 * 2)"
