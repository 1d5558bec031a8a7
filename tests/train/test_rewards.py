import pytest

from nanoseek.data.tasks import generate
from nanoseek.train.rewards import (RewardSet, accuracy_reward, format_reward, language_reward, length_penalty,
                                    split_completion)

PROBLEM = {"task": "arithmetic", "prompt": "What is 2 + 3?", "answer": "5", "reasoning": ""}


def test_good_completion():
    c = "<think>\n2 + 3 = 5\n</think>\n\n5"
    assert split_completion(c) == ("2 + 3 = 5", "5")
    assert format_reward(c) == 1 and accuracy_reward(c, PROBLEM) == 1 and language_reward(c) == 1


def test_wrong_answer_keeps_format():
    c = "<think>\n2 + 3 = 6\n</think>\n\n6"
    assert format_reward(c) == 1 and accuracy_reward(c, PROBLEM) == 0


@pytest.mark.parametrize("c", [
    "2 + 3 = 5",                                          # no thinking at all
    "<think>\n2 + 3 = 5\n</think>\n\n",                   # missing answer
    "<think>a</think><think>b</think>5",                  # two <think>
    "<think>\n2 + 3\n</think>\n</think>\n\n5",            # two </think>
    "</think>5<think>",                                   # wrong order
    "<think> unfinished 5",                               # never closed
])
def test_malformed_completions_get_no_format_reward(c):
    assert format_reward(c) == 0 and language_reward(c) == 0


def test_accuracy_without_format_reads_the_last_line():
    assert accuracy_reward("let me see\n2 + 3 is\n5", PROBLEM) == 1
    assert accuracy_reward("", PROBLEM) == 0


def test_language_consistency_is_the_share_of_target_words():
    c = "<think>\nadd 两个 numbers 数字\n</think>\n\n5"
    assert language_reward(c) == pytest.approx(2 / 4)


def test_length_penalty():
    assert length_penalty("x" * 100, limit=100) == 0
    assert length_penalty("x" * 150, limit=100) == pytest.approx(-0.5)
    assert length_penalty("x" * 500, limit=100) == -1


def test_rewards_verify_generated_problems_of_every_task():
    for task in ("arithmetic", "expression", "linear", "countdown"):
        for p in generate(task, 5, seed=1, split="eval"):
            good = f"<think>\n{p.reasoning}\n</think>\n\n{p.answer}"
            assert accuracy_reward(good, p) == 1 and format_reward(good) == 1


def test_weighted_sum_and_errors_are_contained(capsys):
    rs = RewardSet.parse("accuracy=1,format=0.5")
    s = rs.score("<think>\nx\n</think>\n\n5", PROBLEM)
    assert s == {"accuracy": 1.0, "format": 1.0, "total": 1.5}
    bad = {"task": "no-such-task", "prompt": "?", "answer": "1"}
    for _ in range(3):
        s = rs.score("<think>\nx\n</think>\n\n1", bad)
        assert s["accuracy"] == 0 and s["total"] == 0.5
    assert rs.errors == {"accuracy": 3}
    assert capsys.readouterr().err.count("warning") == 1
    with pytest.raises(Exception, match="bogus"):
        RewardSet.parse("bogus=1")
