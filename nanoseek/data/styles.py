"""Trace styles: the worked problems of the pretraining mix come as web text has them, several styles side by side,
none marked as the one to prefer. R1-Zero amplifies what the base model already does (R1 §2.2.4: reflection and
self-verification emerge under RL; Gandhi et al. 2025, arXiv 2503.01307: a base that never verifies or backtracks
does not learn to under RL), so the base must have seen checks and corrections, rarely, to have something to amplify.

    answer     the answer alone, the thinking left empty:   What is 38 + 9?  <think> </think>  47
    worked     the worked steps (the tasks' own traces)
    checked    the worked steps, then the result verified by another route, one line after them:
                   check: 47 - 9 = 38              (a sum by subtraction; a linear solution substituted back, ...)
    corrected  the worked steps with one slip, caught on the next line and the step done again:
                   7 + 9 = 15
                   wait: 7 + 9 = 16, not 15, so
                   7 + 9 = 16, write 6 carry 1

Every style ends on the same verified answer; the checks and the corrected steps are true arithmetic, and the slipped
step is the one false line, which `train.rejection.false_step` excuses because the next line corrects it. A style is
drawn per problem with the shares of a spec such as "answer=0.25,worked=0.62,checked=0.09,corrected=0.04" (the
default: mostly worked steps, checks and corrections a small minority, as in web text). SFT's cold-start data keeps
the clean worked style: R1 §2.3.1 curates readable traces, and what RL adds should show against it.
"""
from __future__ import annotations

import dataclasses
import random
import re

from nanoseek.data.problem import Problem
from nanoseek.errors import ConfigError

STYLES = ("answer", "worked", "checked", "corrected")
DEFAULT_STYLES = "answer=0.25,worked=0.62,checked=0.09,corrected=0.04"
CHECK, CORRECTION = "check:", "wait:"   # what starts a self-check line and a correction line

# A worked step: integers joined by + - * / then "= value", at the start of a line or after ": ", "; ", "= ", "try "
# or "So " ("2*3 = 6", "add: 8 + 9 = 17", "x = 9 - 5 = 4", "try 7 - 1 = 6"), its value not followed by more terms.
STEP = re.compile(r"(?:^|(?<=: )|(?<=; )|(?<== )|(?<=try )|(?<=So ))"
                  r"(\d+(?: ?[-+*/] ?\d+)+) = (-?\d+)(?!\d| ?[-+*/] ?\d)", re.MULTILINE)


def parse_styles(spec: str) -> dict[str, float]:
    """{"answer": 0.25, ...} from "answer=0.25,..."; the shares must be >= 0 and sum to 1."""
    shares = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, share = part.partition("=")
        if name.strip() not in STYLES:
            raise ConfigError(f"trace style {name.strip()!r}: expected one of {STYLES}")
        try:
            shares[name.strip()] = float(share)
        except ValueError:
            raise ConfigError(f"trace style share {part!r}: expected name=number") from None
    if not shares or any(v < 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
        raise ConfigError(f"trace styles {spec!r}: expected shares >= 0 that sum to 1")
    return shares


def correction_line(expression: str, value: int, slipped: int) -> str:
    """The line that catches a slip: 'wait: 7 + 9 = 16, not 15, so'."""
    return f"{CORRECTION} {expression} = {value}, not {slipped}, so"


def slip(reasoning: str, rng: random.Random) -> str | None:
    """`reasoning` with one worked step (not the closing 'So ...' line) written with a wrong value, the line cut
    there, then the correction and the whole line again; None when the reasoning has no such step."""
    lines = reasoning.split("\n")
    steps = [(i, m) for i, line in enumerate(lines) if not line.startswith("So ") for m in STEP.finditer(line)]
    if not steps:
        return None
    i, m = rng.choice(steps)
    value = int(m[2])
    wrong = rng.choice([v for v in (value - 10, value - 1, value + 1, value + 10) if v >= 0 or value < 0])
    return "\n".join(lines[:i] + [lines[i][:m.start(2)] + str(wrong), correction_line(m[1], value, wrong)]
                     + lines[i:])


def styled(problem: Problem, style: str, self_check: str, rng: random.Random) -> Problem:
    """The problem with its reasoning in `style` (self_check: the task's check line for it); a problem with no
    step to slip on stays worked."""
    if style == "answer":
        reasoning = ""
    elif style == "checked":
        reasoning = f"{problem.reasoning}\n{self_check}"
    elif style == "corrected":
        reasoning = slip(problem.reasoning, rng) or problem.reasoning
    else:
        reasoning = problem.reasoning
    return dataclasses.replace(problem, reasoning=reasoning)


def choose(shares: dict[str, float], rng: random.Random) -> str:
    return rng.choices(list(shares), weights=list(shares.values()))[0]


def _lines(reasoning: str, mark: str) -> bool:
    return any(line.strip().lower().startswith(mark) for line in reasoning.splitlines())


def has_self_check(reasoning: str) -> bool:
    """Whether a chain of thought verifies its result: a line starting 'check:'."""
    return _lines(reasoning, CHECK)


def has_correction(reasoning: str) -> bool:
    """Whether a chain of thought corrects itself: a line starting 'wait:'."""
    return _lines(reasoning, CORRECTION)
