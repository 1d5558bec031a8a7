"""Tests for nanoseek/data/tasks.py and problem.py: verifiers, traces that end on a verified
answer, determinism by seed, disjoint splits, rows that round-trip."""
import pytest

from nanoseek.data.problem import Problem, parse_number, split_of
from nanoseek.data.tasks import TASKS, generate, generate_mix, stream, verify
from nanoseek.errors import ConfigError, DataError


def numeric(task, answer):
    return Problem(task=task, prompt="", reasoning="", answer=answer)


@pytest.mark.parametrize("text", ["1234", " 1234 ", "1,234", "1234.0", " 1,234.00 ", "= 1234", "1234.", "+1234"])
def test_numeric_answer_in_any_format(text):
    assert verify(numeric("arithmetic", "1234"), text)


@pytest.mark.parametrize("text", ["1235", "12,34", "1234.5", "12 34", "", "abc", "1234 5", "about 1234"])
def test_numeric_wrong_or_unreadable(text):
    assert not verify(numeric("arithmetic", "1234"), text)


@pytest.mark.parametrize("text,ok", [("x = -3", True), ("x=-3", True), ("-3", True), (" -3.0 ", True),
                                     ("\u22123", True), ("- 3", True), ("3", False), ("x = 3", False),
                                     ("-3.5", False), ("x = -33", False)])
def test_linear_answers(text, ok):
    assert verify(numeric("linear", "-3"), text) is ok


def test_parse_number():
    assert parse_number("1,234,567") == 1234567 and parse_number("2.50") == 2.5
    assert parse_number("1,2345") is None and parse_number("") is None


def final_answer(p):
    """What the trace itself concludes: the value after the last '=' of its last line."""
    last = p.reasoning.splitlines()[-1]
    if p.task == "countdown":
        return last.removeprefix("So ").removesuffix(".")  # 'expr = target', judged whole
    return last.rsplit("=", 1)[1]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_traces_end_on_a_verified_answer(task):
    for level in range(1, 6):
        problems = generate(task, 120, seed=7, split="train", difficulty=level)
        for p in problems:
            assert verify(p, final_answer(p)), (p.prompt, p.reasoning)
            assert verify(p, p.answer) and verify(p.to_row(), p.answer)
            assert p.reasoning.isascii() and p.prompt.isascii()
        wrong = [p for p in problems if not verify(p, str(int(p.answer) + 1) if p.task != "countdown" else p.answer + " + 1")]
        assert len(wrong) == len(problems)  # off-by-one answers never pass


@pytest.mark.parametrize("task", sorted(TASKS))
def test_deterministic_by_seed(task):
    a = generate(task, 50, seed=1, split="train")
    assert a == generate(task, 50, seed=1, split="train")
    assert a != generate(task, 50, seed=2, split="train")
    assert generate(task, 20, seed=1, split="train", difficulty=4) != generate(task, 20, seed=1, split="train", difficulty=3)


def test_splits_are_disjoint_and_sized():
    train = generate_mix(4000, seed=0, split="train")
    evals = generate_mix(400, seed=0, split="eval") + generate_mix(400, seed=1, split="eval")
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in evals})
    assert all(split_of(p.prompt) == "train" for p in train) and all(split_of(p.prompt) == "eval" for p in evals)
    assert [p.task for p in train[:8]] == ["arithmetic", "expression", "linear", "countdown"] * 2
    share = sum(split_of(f"What is {i} + 1?") == "eval" for i in range(20000)) / 20000
    assert 0.08 < share < 0.12


def test_eval_stream_only_keeps_eval_problems():
    s = stream("linear", seed=3, split="eval", difficulty=2)
    assert all(split_of(next(s).prompt) == "eval" for _ in range(50))


def test_row_round_trip():
    for p in generate_mix(8, seed=5, split="eval"):
        row = p.to_row()
        assert set(row) >= {"prompt", "answer", "reasoning", "task"}
        assert ("numbers" in row) == (p.task == "countdown")
        assert Problem.from_row(row) == p


def test_bad_arguments_name_the_value():
    with pytest.raises(ConfigError, match="'sudoku'"):
        generate("sudoku", 1, seed=0, split="train")
    with pytest.raises(ConfigError, match="'test'"):
        generate("linear", 1, seed=0, split="test")
    with pytest.raises(ConfigError, match="difficulty 9"):
        stream("countdown", seed=0, split="train", difficulty=9)
    with pytest.raises(ConfigError, match="-1"):
        generate_mix(-1, seed=0, split="train")
    with pytest.raises(DataError, match="answer"):
        verify({"prompt": "What is 1 + 1?", "task": "arithmetic"}, "2")
