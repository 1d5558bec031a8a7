"""Tests for nanoseek/train/sft.py: the loss mask covers the assistant's tokens and nothing else; batches resume."""
import json

import pytest
import torch

from nanoseek.data.tasks import generate, stream_mix
from nanoseek.errors import DataError
from nanoseek.tokenizer import ASSISTANT, BOS, EOS, USER
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.data.conversations import conversation, encode, pad_batch, read_rows
from nanoseek.train.sft import SFTBatches, SFTConfig

TOKENIZER = default_tokenizer()


def test_conversation_of_a_problem_is_a_cold_start_trace():
    p = generate("linear", 1, 0, "train")[0]
    assert conversation(p) == [{"role": "user", "content": p.prompt},
                               {"role": "assistant", "content": p.answer, "reasoning_content": p.reasoning}]
    assert conversation({"prompt": "q", "answer": "a", "task": ""})[1] == {"role": "assistant", "content": "a"}


def test_loss_only_on_assistant_tokens():
    problems = generate("arithmetic", 2, 0, "train") + generate("countdown", 1, 0, "train")
    batch = pad_batch([encode(TOKENIZER, p, 512) for p in problems], TOKENIZER.eos_id)
    for row, p in enumerate(problems):
        ids, mask = encode(TOKENIZER, p, 512)
        trained = [int(t) for t in batch["labels"][row] if t != -100]
        assert TOKENIZER.decode(trained) == f"<think>\n{p.reasoning}\n</think>\n\n{p.answer}{EOS}"
        # everything before the assistant's first token is context: bos, the user turn, <｜Assistant｜>
        first = next(i for i, t in enumerate(batch["labels"][row].tolist()) if t != -100)
        assert TOKENIZER.decode(batch["input_ids"][row, :first + 1].tolist()) == f"{BOS}{USER}{p.prompt}{ASSISTANT}"
        # padding carries no loss
        assert (batch["labels"][row, len(ids) - 1:] == -100).all()


def test_messages_rows_and_long_conversations_are_cut():
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello " * 50}]}
    ids, mask = encode(TOKENIZER, row, 16)
    assert len(ids) == len(mask) == 17


def test_batches_resume_at_the_same_row():
    config = SFTConfig(seq_len=96)
    a = SFTBatches((), TOKENIZER, config, batch_size=3, seed=0)
    next(a)
    state = a.state_dict()
    expected = next(a)
    b = SFTBatches((), TOKENIZER, config, batch_size=3, seed=0)
    b.load_state_dict(json.loads(json.dumps(state)))
    got = next(b)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def greedy_rows(encoded, limit, n):
    """Pack conversations in order into rows of at most `limit` tokens, by hand."""
    stream = iter(encoded)
    pending, rows = next(stream), []
    for _ in range(n):
        row = []
        while not row or len(row) + len(pending[0]) <= limit:
            row += pending[0]
            pending = next(stream)
        rows.append(row)
    return rows


def test_rows_pack_whole_conversations():
    config = SFTConfig(seq_len=128)
    batch = next(SFTBatches((), TOKENIZER, config, batch_size=4, seed=0))
    stream = (encode(TOKENIZER, p, 128) for p in stream_mix(0, "train", config.difficulty))
    rows = greedy_rows(stream, 129, 4)
    for r, ids in enumerate(rows):
        n = len(ids) - 1
        assert batch["input_ids"][r, :n].tolist() == ids[:-1]
        assert (batch["labels"][r, n:] == -100).all()
        text = TOKENIZER.decode([int(t) for t in batch["labels"][r] if t != -100])
        assert text.count("<think>") == text.count(EOS) == ids.count(TOKENIZER.bos_id)
        assert BOS not in text and USER not in text
    assert max(ids.count(TOKENIZER.bos_id) for ids in rows) > 1


def test_files_start_over_after_the_last_row(tmp_path):
    path = tmp_path / "sft.jsonl"
    problems = generate("linear", 3, 0, "train")
    path.write_text("\n".join(json.dumps(p.to_row()) for p in problems) + "\n")
    encoded = [encode(TOKENIZER, p, 64) for p in problems]
    batch = next(SFTBatches((str(path),), TOKENIZER, SFTConfig(seq_len=64), batch_size=3, seed=0))
    for r, ids in enumerate(greedy_rows(encoded * 4, 65, 3)):
        assert batch["input_ids"][r, :len(ids) - 1].tolist() == ids[:-1]


@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("", "is empty"),
                                              ("{\"text\": 1}\n", ":1: expected"), ("not json\n", ":1: not valid JSON")])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        list(read_rows(path))


def test_an_sft_file_that_is_not_utf8_is_one_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "\xff", "answer": "1"}\n')
    with pytest.raises(DataError, match="SFT data file .*bad.jsonl is not UTF-8"):
        list(read_rows(path))
