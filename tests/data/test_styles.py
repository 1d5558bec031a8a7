"""Tests for nanoseek/data/styles.py: every trace style of every task ends on a verified answer, the self-checks and
corrections are true arithmetic (judged here by a plain evaluation), the styles come in their shares, and the
detectors of self-checks and corrections."""
import random
import re
from fractions import Fraction
from itertools import islice

import pytest

from nanoseek.data.mix import mix_documents
from nanoseek.data.styles import (STYLES, has_correction, has_self_check, parse_styles, slip, styled)
from nanoseek.data.tasks import TASKS, generate, verify
from nanoseek.errors import ConfigError
from nanoseek.train.rejection import false_step

CLAIM = re.compile(r"([-\d(][-+*/() \d]*?) = (-?\d+)(?=$|[;,])")


def plain_value(text: str) -> Fraction:
    """The value of integers with + - * / and brackets, by Python's own arithmetic on a checked string."""
    assert re.fullmatch(r"[-+*/() \d]+", text), text
    return Fraction(eval(text.replace("/", "*Fraction(1)/"), {"Fraction": Fraction}))  # noqa: S307 (digits only)


def claims(line: str) -> list[tuple[str, int]]:
    """The 'expression = value' claims of a line, e.g. [('47 - 9', 38)] for 'check: 47 - 9 = 38'."""
    return [(m[1].strip(), int(m[2])) for m in CLAIM.finditer(line.split(": ", 1)[-1].replace("; uses", "; x"))
            if re.search(r"\d ?[-+*/] ?[(\d-]", m[1])]


def parts(document: str) -> tuple[str, str, str]:
    prompt, rest = document.split("<think>\n")
    reasoning, answer = rest.split("\n</think>\n\n")
    return prompt, reasoning.strip("\n"), answer


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_style_ends_on_the_verified_answer(task):
    rng = random.Random(0)
    for level in range(1, 6):
        for p in generate(task, 60, seed=level, split="train", difficulty=level):
            check = TASKS[task].self_check(p)
            for style in STYLES:
                q = styled(p, style, check, rng)
                assert q.answer == p.answer and verify(q, q.answer), (style, p.prompt)
                assert q.reasoning.isascii()
                assert false_step(q.reasoning) is None, (style, q.reasoning)   # rejection sampling keeps them all
            assert styled(p, "answer", check, rng).reasoning == ""


@pytest.mark.parametrize("task", sorted(TASKS))
def test_self_checks_are_true_arithmetic_by_another_route(task):
    for level in range(1, 6):
        for p in generate(task, 60, seed=level, split="train", difficulty=level):
            line = TASKS[task].self_check(p)
            found = claims(line)
            assert line.startswith("check: ") and found, line
            for expression, value in found:
                assert plain_value(expression) == value, line
            if task in ("arithmetic", "expression"):        # the inverse operation of the result...
                assert p.answer.lstrip("-") in re.split(r"[ =]", line.split(": ", 1)[1]), line
            if task == "linear":                            # ...the solution substituted back...
                assert f"= {p.answer}:" in line and len({v for _, v in found}) == 1, line
            if task == "countdown":                         # ...the target undone, the numbers each given
                assert line.split(": ", 1)[1].startswith(f"{p.target} "), line
                used = [int(n) for n in line.split("uses ")[1].removesuffix(", each given").split(", ")]
                assert all(used.count(n) <= p.numbers.count(n) for n in used), line


def test_a_slip_is_one_false_step_caught_on_the_next_line():
    rng = random.Random(3)
    for p in generate("arithmetic", 40, seed=1, split="train", difficulty=2) + generate("countdown", 40, seed=1,
                                                                                        split="train"):
        text = slip(p.reasoning, rng)
        lines = text.split("\n")
        [k] = [i for i, line in enumerate(lines) if line.startswith("wait: ")]
        (expression, value), = claims(lines[k])
        slipped = int(lines[k].split(", not ")[1].removesuffix(", so"))
        assert lines[k - 1].endswith(f"{expression} = {slipped}") and slipped != value
        assert plain_value(expression) == value                   # the correction is true
        assert lines[k + 1] in p.reasoning.split("\n")            # then the step again, whole
        assert lines[:k - 1] + lines[k + 1:] == p.reasoning.split("\n")
        uncaught = "\n".join(lines[:k] + lines[k + 1:])
        assert false_step(uncaught) == f"{expression} = {slipped}"   # without the correction, a false step
    assert slip("no steps here", rng) is None


def test_styles_come_in_their_shares():
    spec = "answer=0.3,worked=0.4,checked=0.2,corrected=0.1"
    docs = list(islice(mix_documents([], seed=5, synthetic_fraction=1.0, styles=spec), 4000))
    counts = dict.fromkeys(STYLES, 0)
    for doc in docs:
        _, reasoning, _ = parts(doc)
        style = ("answer" if not reasoning else "corrected" if has_correction(reasoning)
                 else "checked" if has_self_check(reasoning) else "worked")
        counts[style] += 1
    for style, share in parse_styles(spec).items():
        assert abs(counts[style] / len(docs) - share) < 0.025, counts
    default = list(islice(mix_documents([], seed=5, synthetic_fraction=1.0), 4000))
    minority = sum(has_self_check(parts(d)[1]) or has_correction(parts(d)[1]) for d in default) / len(default)
    assert 0.08 < minority < 0.2                             # checks and corrections: a small minority
    only = list(islice(mix_documents([], seed=5, synthetic_fraction=1.0, styles="worked=1"), 200))
    assert not any(has_self_check(d) or has_correction(d) or not parts(d)[1] for d in only)


@pytest.mark.parametrize("text, check, correction", [
    ("2 + 3 = 5\ncheck: 5 - 3 = 2", True, False),
    ("2 + 3 = 6\nwait: 2 + 3 = 5, not 6, so\n2 + 3 = 5", False, True),
    ("  Check: 5 - 3 = 2\n  WAIT: no", True, True),
    ("we check: nothing; then wait: more", False, False),     # only at the start of a line
    ("checking 5 - 3 = 2\nwaiting", False, False),
    ("", False, False),
])
def test_detectors(text, check, correction):
    assert has_self_check(text) is check and has_correction(text) is correction


@pytest.mark.parametrize("spec, words", [("answer=0.5,worked=0.6", "sum to 1"), ("essay=1", "'essay'"),
                                         ("worked=x", "'worked=x'"), ("worked=1.5,answer=-0.5", "sum to 1"),
                                         ("", "sum to 1")])
def test_bad_style_specs_name_the_value(spec, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_styles(spec)
