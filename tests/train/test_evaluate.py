"""Tests for nanoseek/train/evaluate.py: scoring of crafted responses, the cached generation loop against plain
greedy decoding, the prompts."""
import pytest
import torch
from train_helpers import small_model

from nanoseek.data.mix import render
from nanoseek.data.problem import Problem
from nanoseek.data.tasks import generate as generate_problems
from nanoseek.tokenizer import ASSISTANT, BOS, EOS, USER
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.errors import ConfigError
from nanoseek.data.prompts import prompt_ids
from nanoseek.train.evaluate import EvalConfig, generate, mtp_accuracy, parse_response, score

ADD = Problem(task="arithmetic", prompt="What is 2 + 3?", reasoning="", answer="5")
COUNTDOWN = Problem(task="countdown", prompt="make 10", reasoning="", answer="5 * 2", numbers=(2, 5, 7), target=10)


@pytest.mark.parametrize("text, ok, answer", [
    ("<think>\n2 + 3 = 5\n</think>\n\n5", True, "5"),
    ("  <think>x</think> 5 ", True, "5"),
    ("<think>\n2 + 3 = 5\n</think>\n\n", False, ""),        # no answer after the thinking
    ("5", False, "5"),                                       # no thinking
    ("<think>a</think>b</think>5", True, "5"),               # the answer follows the last </think>
    ("<think>a</think> 5 <think>b</think>", False, ""),
])
def test_parse_response(text, ok, answer):
    assert parse_response(text) == (ok, answer)


def test_score_greedy():
    responses = [["<think>2+3</think>\n\n5"], ["<think>?</think>\n\n6"], ["7 - 2 * ... 5 * 2"]]
    figures = score([ADD, ADD, COUNTDOWN], responses, [[10], [10], [4]])
    assert figures["accuracy"] == pytest.approx(1 / 3)
    assert figures["self_check_rate"] == figures["correction_rate"] == 0
    assert figures["format_rate"] == pytest.approx(2 / 3)
    assert figures["mean_response_tokens"] == 8
    assert figures["accuracy_by_task"] == {"arithmetic": 0.5, "countdown": 0.0}
    assert "pass@1" not in figures


def test_score_pass_and_majority():
    responses = [
        ["<think></think>6", "<think></think>5", "<think></think> 6.0"],     # one right: pass, but the vote says 6
        ["<think></think>5", "<think></think>5", "<think></think>4"],         # majority right
        ["<think></think>7 + 5 - 2", "<think></think>2 * 5", "<think></think>5*2"],  # all right, no two alike
    ]
    figures = score([ADD, ADD, COUNTDOWN], responses, [[1, 2, 3]] * 3)
    assert figures["pass@3"] == 1.0
    assert figures["maj@3"] == pytest.approx(2 / 3)
    assert figures["accuracy"] == pytest.approx((1 + 2 + 3) / 9)
    assert figures["mean_response_tokens"] == 2


def test_score_counts_self_checks_and_corrections():
    responses = [["<think>\n2 + 3 = 5\ncheck: 5 - 3 = 2\n</think>\n\n5"],
                 ["<think>\n2 + 3 = 6\nwait: 2 + 3 = 5, not 6, so\n2 + 3 = 5\ncheck: 5 - 3 = 2\n</think>\n\n5"],
                 ["<think>\n2 + 3 = 5\n</think>\n\n5"], ["<think>\nwe check: it\n</think>\n\n5"]]
    figures = score([ADD] * 4, responses, [[1]] * 4)
    assert figures["self_check_rate"] == pytest.approx(2 / 4) and figures["correction_rate"] == pytest.approx(1 / 4)


def test_generate_matches_plain_greedy_decoding():
    model = small_model().double().eval()
    prompts = [[1, 5, 9, 13, 2], [7, 3], [4, 4, 4, 8, 8, 8, 15, 16]]
    expected = []
    for p in prompts:
        ids = torch.tensor([p])
        for _ in range(6):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        expected.append(ids[0, len(p):].tolist())
    assert generate(model, prompts, 6, stop_id=None) == expected
    stop = expected[0][1]  # the second token of row 0 ends that row; the others go on
    out = generate(model, prompts, 6, stop_id=stop)
    assert out[0] == expected[0][:2]
    for row, want in zip(out[1:], expected[1:]):
        assert row == (want[:want.index(stop) + 1] if stop in want else want)


def test_sampling_is_seeded():
    model = small_model().eval()
    a = generate(model, [[1, 2, 3]] * 4, 8, 63, temperature=1.0, seed=1)
    b = generate(model, [[1, 2, 3]] * 4, 8, 63, temperature=1.0, seed=1)
    c = generate(model, [[1, 2, 3]] * 4, 8, 63, temperature=1.0, seed=2)
    assert a == b != c and len({tuple(r) for r in a}) > 1


def test_more_samples_than_sequences_at_a_time_and_a_cache_sized_to_the_block():
    model = small_model().eval()
    out = generate(model, [[1, 2, 3]], 8, None, temperature=1.0, samples=5, max_seqs=2)
    assert len(out) == 5 and all(len(r) == 8 for r in out)
    # one sequence of 17 tokens needs two blocks of 16, beside the pool's block 0
    assert len(generate(model, [[1] * 9], 8, None, max_seqs=1)[0]) == 8


def test_prompts():
    tokenizer = default_tokenizer()
    problem = generate_problems("linear", 1, 0, "eval")[0]
    assert tokenizer.decode(prompt_ids(tokenizer, problem, [])) == f"{BOS}{USER}{problem.prompt}{ASSISTANT}"
    shots = generate_problems("linear", 2, 0, "train")
    assert tokenizer.decode(prompt_ids(tokenizer, problem, shots)) == \
        f"{render(shots[0])}{EOS}{render(shots[1])}{EOS}{problem.prompt}\n"
    r1_zero = tokenizer.decode(prompt_ids(tokenizer, problem, [], "r1-zero"))
    assert r1_zero.startswith("A conversation between User and Assistant. The user asks a question, and the Assistant "
                              "solves it.") and r1_zero.endswith(f"User: {problem.prompt}\nAssistant:")
    assert BOS not in r1_zero and USER not in r1_zero      # plain text, for a base model (R1 §2.2.1)
    with pytest.raises(ConfigError, match="choose one"):
        EvalConfig(few_shot=1, template="r1-zero")
    with pytest.raises(ConfigError, match="'plain'"):
        EvalConfig(template="plain")


def test_mtp_accuracy_figures():
    model = small_model().eval()
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
    figures = mtp_accuracy(model, tokens)
    assert set(figures) == {"mtp_accuracy", "mtp_agreement"}
    assert all(0 <= v <= 1 for v in figures.values())
