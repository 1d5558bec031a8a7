"""Tests for nanoseek/train/rejection.py: which completions are kept, deduplication, and that the output is SFT
data. The engine is replaced by one that answers with crafted completions."""
import json
from types import SimpleNamespace

import pytest
from train_helpers import small_model

from nanoseek.checkpoint import save_checkpoint
from nanoseek.cli import main
from nanoseek.data.problem import Problem
from nanoseek.data.tasks import TASKS, generate, save_jsonl, verify
from nanoseek.tokenizer import EOS
from nanoseek.train import rejection
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.rejection import RejectionConfig, at_edge, false_step, judge, rejection_sample
from nanoseek.data.conversations import read_rows
from nanoseek.train.sft import SFTBatches, SFTConfig

TOKENIZER = default_tokenizer()
ADD = Problem(task="arithmetic", prompt="What is 2 + 3?", reasoning="2 + 3 = 5", answer="5")
COUNTDOWN = Problem(task="countdown", prompt="Using the numbers 2, 5, 7 (each at most once) and + - * /, make 10.",
                    reasoning="", answer="5 * 2", numbers=(2, 5, 7), target=10)


@pytest.mark.parametrize("completion, verdict", [
    ("<think>\n2 + 3 = 5\n</think>\n\n5", "kept"),
    ("<think>\n2 + 3 = 6\n</think>\n\n6", "incorrect"),
    ("<think>\n2 + 3 = 5\n</think>\n\n</think>5", "format"),     # two </think>
    ("2 + 3 = 5\n\n5", "format"),                                 # no thinking
    ("<think>\n2 + 3 = 5\n</think>\n\n", "format"),               # no answer
    ("<think>\nдва плюс три = 5\n</think>\n\n5", "language"),     # reasoning in another language
    ("<think>\n2 + 3 = 4\n4 + 1 = 5\n</think>\n\n5", "false_step"),  # the right answer through a wrong step
])
def test_judge(completion, verdict):
    assert judge(completion, ADD) == verdict


@pytest.mark.parametrize("task", TASKS)
def test_worked_traces_have_no_false_step(task):
    for level in range(1, 6):
        assert all(false_step(p.reasoning) is None for p in generate(task, 100, seed=level, split="train",
                                                                      difficulty=level))


@pytest.mark.parametrize("reasoning, step", [
    ("92 * 3: 2*3 = 6, write 6; 9*3 = 28, write 28 -> 286", "9*3 = 28"),
    ("(8 - 5) * 7\nbrackets: 8 - 5 = 1 -> 1 * 7\nmultiply: 1 * 7 = 7", "8 - 5 = 1"),
    ("x + 5 = 9\nsubtract 5 from both sides: x = 9 - 5 = 6", "9 - 5 = 6"),
    ("-2x = 1 - 11 = -9", "1 - 11 = -9"),
    ("target 3 from 2, 6, 9\ntry 9 - 2 = 7: off by 4\nSo 9 - 6 = 4.", "9 - 6 = 4"),
    ("try 8 / 2 * 3 = 16: no", "8 / 2 * 3 = 16"),                 # the precedence of the operators
    ("expand: 2n + 6 - 11 = 1\ncombine: 2n - 5 = 1", None),      # equations in the unknown are not claims
    ("add 5 to both sides: 2n = -10 + 6 = -4", None),              # a negative first term is not judged
    ("add: 8 + 9 = 17 -> 17 - 6\nsubtract: 17 - 6 = 11", None),
    ("7 + 9 = 15\nwait: 7 + 9 = 16, not 15, so\n7 + 9 = 16, write 6", None),   # a slip caught on the next line
    ("92 * 3: 2*3 = 7\nwait: 2*3 = 6, not 7, so\n92 * 3: 2*3 = 6", None),
    ("7 + 9 = 15\nthen\nwait: 7 + 9 = 16, not 15, so", "7 + 9 = 15"),            # caught too late
    ("7 + 9 = 15\nwait: 7 + 9 = 15, not 16, so", "7 + 9 = 15"),                  # not a correction of it
    ("7 + 9 = 16\nwait: 7 + 9 = 17, not 16, so", "7 + 9 = 17"),                  # a 'correction' to a false value
])
def test_false_step(reasoning, step):
    assert false_step(reasoning) == step


class ScriptedEngine:
    """Stands in for nanoseek.infer.Engine: request j's k samples are SCRIPT[j % len(SCRIPT)][i]."""

    def __init__(self, model, config=None, tokenizer=None):
        self.requests = []

    def add_request(self, prompt, params):
        self.requests.append((prompt, params))
        return len(self.requests) - 1

    def stream(self, ids):
        for r in ids:
            prompt, params = self.requests[r]
            for i, text in enumerate(SCRIPT[r % len(SCRIPT)][:params.n]):
                ids = TOKENIZER.encode(text)
                yield SimpleNamespace(request_id=r, index=i, finish_reason="stop",
                                      sequence=SimpleNamespace(output_ids=ids, tokens=list(prompt) + ids))


SCRIPT = [
    [f"<think>\n2 + 3 = 5\n</think>\n\n5{EOS}", f"<think>\n2 + 3 = 5\n</think>\n\n5{EOS}",     # kept, duplicate
     f"<think>\n3 + 2 = 5\n</think>\n\n 5{EOS}",                                                # kept
     f"<think>\n2 + 3 = 6\n6 - 1 = 5\n</think>\n\n5{EOS}",                                       # false step
     "<think>\n2 + 3 = 5\n</think>\n\n5"],                                                    # truncated (no eos)
    [f"<think>\ntry 5 * 2 = 10: yes\n</think>\n\n2 * 5{EOS}", f"<think>\nguess\n</think>{EOS}",  # kept, format
     f"<think>\ntry 7 + 2 = 9\n</think>\n\n7 + 2{EOS}",                                         # incorrect
     f"<think>\nx</think>\n\n5 * 2</think>{EOS}",                                                # format
     f"<think>\nфыва\n</think>\n\n5 * 2{EOS}"],                                               # language
]


def sample(tmp_path, monkeypatch, engine, **settings):
    """rejection_sample over ADD and COUNTDOWN with `engine` in place of the inference engine: (counts, out)."""
    monkeypatch.setattr(rejection, "Engine", engine)
    checkpoint = tmp_path / "model"
    save_checkpoint(small_model(vocab_size=TOKENIZER.vocab_size), checkpoint)
    TOKENIZER.save(checkpoint)
    prompts = tmp_path / "prompts.jsonl"
    save_jsonl([ADD, COUNTDOWN], prompts)
    out = tmp_path / "kept.jsonl"
    return rejection_sample(RejectionConfig(str(checkpoint), str(prompts), k=5, **settings), out), out


def test_rejection_keeps_verified_well_formed_distinct_rows(tmp_path, monkeypatch):
    counts, out = sample(tmp_path, monkeypatch, ScriptedEngine)
    assert counts | {"generated_tokens": 0, "context": 0} == {
        "questions": 2, "samples": 10, "truncated": 1, "format": 2, "language": 1, "incorrect": 1, "false_step": 1,
        "duplicate": 1, "solved": 0,
        "kept": 3, "questions_solved": 2, "generated_tokens": 0, "context": 0}
    rows = list(read_rows(out))
    assert [(r["prompt"], r["reasoning"], r["answer"]) for r in rows] == [
        (ADD.prompt, "2 + 3 = 5", "5"), (ADD.prompt, "3 + 2 = 5", "5"),
        (COUNTDOWN.prompt, "try 5 * 2 = 10: yes", "2 * 5")]
    assert rows[2]["numbers"] == [2, 5, 7] and rows[2]["target"] == 10        # the verifier's fields stay
    assert all(verify(r, r["answer"]) for r in rows)
    batch = next(SFTBatches((str(out),), TOKENIZER, SFTConfig(), batch_size=3, seed=0))   # SFT reads them
    assert batch["input_ids"].shape[0] == 3


@pytest.mark.parametrize("greedy, samples, expected", [
    (False, [False, True, False], True),      # greedy wrong, a sample right: at the edge
    (True, [False, True, False], False),      # solved greedily already
    (False, [False, False], False),           # beyond reach
    (True, [True, True], False),
])
def test_at_edge(greedy, samples, expected):
    assert at_edge(greedy, samples) is expected


class EdgeEngine(ScriptedEngine):
    """Samples as ScriptedEngine (request j of the sampled ones: SCRIPT[j]); greedy requests answer GREEDY[j]."""

    def stream(self, ids):
        sampled = [r for r in ids if self.requests[r][1].temperature > 0]
        greedy = [r for r in ids if self.requests[r][1].temperature == 0]
        yield from super().stream(sampled)
        for j, r in enumerate(greedy):
            ids = TOKENIZER.encode(GREEDY[j])
            yield SimpleNamespace(request_id=r, index=0, finish_reason="stop",
                                  sequence=SimpleNamespace(output_ids=ids, tokens=list(self.requests[r][0]) + ids))


GREEDY = [f"<think>\n2 + 3 = 6\n</think>\n\n6{EOS}", f"<think>\ntry 5 * 2 = 10: yes\n</think>\n\n5 * 2{EOS}"]


def test_rejection_at_the_edge_keeps_only_questions_the_greedy_answer_misses(tmp_path, monkeypatch):
    # ADD: greedy '6' is wrong, two samples right -> at the edge, kept; COUNTDOWN: greedy right -> its one keepable
    # sample is rejected as solved
    counts, out = sample(tmp_path, monkeypatch, EdgeEngine, edge=True)
    assert (counts["at_edge"], counts["solved"], counts["kept"], counts["questions_solved"]) == (1, 1, 2, 1)
    assert [r["prompt"] for r in read_rows(out)] == [ADD.prompt, ADD.prompt]


def test_rejection_sample_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rejection, "Engine", ScriptedEngine)
    checkpoint = tmp_path / "model"
    save_checkpoint(small_model(vocab_size=TOKENIZER.vocab_size), checkpoint)
    prompts = tmp_path / "prompts.jsonl"
    save_jsonl([ADD], prompts)
    out = tmp_path / "kept.jsonl"
    main(["rejection-sample", str(checkpoint), "--prompts", str(prompts), "--k", "2", "--out", str(out)])
    assert "kept 1 of 2 completions" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["rejection-sample", str(checkpoint), "--prompts", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert "missing.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rejection-sample", str(checkpoint), "--prompts", str(prompts), "--k", "0", "--out", str(out)])
    assert "k 0" in capsys.readouterr().err
    assert json.loads(out.read_text())["answer"] == "5"
