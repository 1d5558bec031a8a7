"""Tests for nanoseek/train/pretrain.py and data/sources.py: packed batches, epochs, the data position, the held-out
sets."""
import json

import pytest
import torch

from nanoseek.data.problem import split_of
from nanoseek.data.tasks import TASKS
from nanoseek.errors import ConfigError, DataError
from nanoseek.data.sources import eval_problems, heldout_sequences, split_text, text_source
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.pretrain import PretrainBatches, PretrainConfig

TOKENIZER = default_tokenizer()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(f"Paragraph {i} says that {i} times {i + 1} is {i * (i + 1)}." for i in range(60)))
    return path


def test_batches_are_shifted_pairs(text_file):
    config = PretrainConfig(data=(str(text_file),), seq_len=32)
    batch = next(PretrainBatches(text_source(config.data), TOKENIZER, config, batch_size=3, seed=0))
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 32)
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    assert torch.equal(batch["input_ids"][1:, 0], batch["labels"][:-1, -1])  # consecutive sequences share a token


def test_resume_mid_epoch_and_across_epochs(text_file):
    config = PretrainConfig(data=(str(text_file),), seq_len=64)
    source = PretrainBatches(text_source(config.data), TOKENIZER, config, batch_size=4, seed=0)
    states, batches = [], []
    for _ in range(12):
        states.append(json.loads(json.dumps(source.state_dict())))
        batches.append(next(source))
    assert source.epoch >= 1, "the file should run out within 12 batches"
    for i in (3, 9):
        again = PretrainBatches(text_source(config.data), TOKENIZER, config, batch_size=4, seed=0)
        again.load_state_dict(states[i])
        assert torch.equal(next(again)["input_ids"], batches[i]["input_ids"])


def test_text_shorter_than_a_sequence(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny")
    config = PretrainConfig(data=(str(path),), seq_len=64)
    with pytest.raises(DataError, match="shorter than one sequence"):
        next(PretrainBatches(text_source(config.data), TOKENIZER, config, batch_size=2, seed=0))


def test_heldout_text_is_disjoint(text_file):
    text = text_source((str(text_file),))
    train, held = set(split_text(text(), "train")), set(split_text(text(), "eval"))
    assert train and held and not train & held and len(train) + len(held) == 60
    rows = heldout_sequences(TOKENIZER, text, 2, 16)
    assert rows is not None and rows.shape == (2, 17)


def test_eval_problems_are_distinct_and_all_tasks_in_turn():
    problems = eval_problems(200)
    assert len({p.prompt for p in problems}) == 200
    assert [p.task for p in problems[:8]] == [*TASKS] * 2
    assert all(split_of(p.prompt) == "eval" for p in problems)


def test_more_eval_problems_than_a_level_holds_names_the_task_and_count():
    with pytest.raises(ConfigError, match=r"held-out (linear|countdown) problems at difficulty 1 number only \d+"):
        eval_problems(2000, difficulty=1)
