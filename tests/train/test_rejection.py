"""Tests for nanoseek/train/rejection.py: which completions are kept, deduplication, and that the output is SFT
data. The engine is replaced by one that answers with crafted completions."""
import json
from types import SimpleNamespace

import pytest
from train_helpers import small_model

from nanoseek.checkpoint import save_checkpoint
from nanoseek.cli import main
from nanoseek.data.problem import Problem
from nanoseek.data.tasks import save_jsonl, verify
from nanoseek.tokenizer import EOS
from nanoseek.train import rejection
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.rejection import RejectionConfig, judge, rejection_sample
from nanoseek.train.sft import SFTBatches, SFTConfig, read_rows

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
])
def test_judge(completion, verdict):
    assert judge(completion, ADD) == verdict


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
     f"<think>\n3 + 2 = 5\n</think>\n\n 5{EOS}", f"<think>\n2 + 3 = 5\n</think>\n\n6{EOS}",    # kept, incorrect
     "<think>\n2 + 3 = 5\n</think>\n\n5"],                                                    # truncated (no eos)
    [f"<think>\ntry 5 * 2 = 10: yes\n</think>\n\n2 * 5{EOS}", f"<think>\nguess\n</think>{EOS}",  # kept, format
     f"<think>\ntry 7 + 2 = 9\n</think>\n\n7 + 2{EOS}",                                         # incorrect
     f"<think>\nx</think>\n\n5 * 2</think>{EOS}",                                                # format
     f"<think>\nфыва\n</think>\n\n5 * 2{EOS}"],                                               # language
]


def test_rejection_keeps_verified_well_formed_distinct_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(rejection, "Engine", ScriptedEngine)
    checkpoint = tmp_path / "model"
    save_checkpoint(small_model(vocab_size=TOKENIZER.vocab_size), checkpoint)
    TOKENIZER.save(checkpoint)
    prompts = tmp_path / "prompts.jsonl"
    save_jsonl([ADD, COUNTDOWN], prompts)
    out = tmp_path / "kept.jsonl"
    counts = rejection_sample(RejectionConfig(str(checkpoint), str(prompts), k=5), out)
    assert counts | {"generated_tokens": 0, "context": 0} == {
        "questions": 2, "samples": 10, "truncated": 1, "format": 2, "language": 1, "incorrect": 2, "duplicate": 1,
        "kept": 3, "questions_solved": 2, "generated_tokens": 0, "context": 0}
    rows = list(read_rows(out))
    assert [(r["prompt"], r["reasoning"], r["answer"]) for r in rows] == [
        (ADD.prompt, "2 + 3 = 5", "5"), (ADD.prompt, "3 + 2 = 5", "5"),
        (COUNTDOWN.prompt, "try 5 * 2 = 10: yes", "2 * 5")]
    assert rows[2]["numbers"] == [2, 5, 7] and rows[2]["target"] == 10        # the verifier's fields stay
    assert all(verify(r, r["answer"]) for r in rows)
    batch = next(SFTBatches((str(out),), TOKENIZER, SFTConfig(), batch_size=3, seed=0))   # SFT reads them
    assert batch["input_ids"].shape[0] == 3


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
