"""Tests for nanoseek/data/mix.py: the synthetic share, rendering, packing and exact resumption."""
from itertools import islice

import pytest

from nanoseek.data.mix import DIALOGUE, Packer, mix_documents, render
from nanoseek.data.tasks import generate, verify
from nanoseek.errors import ConfigError, DataError

EOS = 0
TEXT = [f"natural text number {i}." + " more" * (i % 37) for i in range(2000)]


def encode(text):
    return [ord(c) for c in text]  # every id > 0, so EOS = 0 is unambiguous


def test_synthetic_fraction_and_order():
    docs = list(mix_documents(TEXT, seed=0))
    synthetic = [d for d in docs if "<think>" in d]
    assert [d for d in docs if "<think>" not in d] == TEXT  # all text, in order, once
    share = sum(map(len, synthetic)) / sum(map(len, docs))  # of the characters, not of the documents
    assert abs(share - 0.3) < 0.01
    assert {d.split("\n")[0].split()[0] for d in synthetic} >= {"What", "Solve", "Using"}
    half = list(mix_documents(TEXT, seed=0, synthetic_fraction=0.5))
    assert abs(sum(len(d) for d in half if "<think>" in d) / sum(map(len, half)) - 0.5) < 0.01
    assert all("<think>" in d for d in islice(mix_documents(TEXT, seed=0, synthetic_fraction=1.0), 50))
    assert list(mix_documents(TEXT, seed=0, synthetic_fraction=0.0)) == TEXT


def test_mix_is_deterministic_by_seed():
    assert list(mix_documents(TEXT[:300], seed=4)) == list(mix_documents(TEXT[:300], seed=4))
    assert list(mix_documents(TEXT[:300], seed=4)) != list(mix_documents(TEXT[:300], seed=5))
    with pytest.raises(ConfigError, match="1.5"):
        mix_documents(TEXT, seed=0, synthetic_fraction=1.5)


def test_render_matches_the_r1_template():
    p = generate("linear", 1, seed=0, split="train")[0]
    prompt, rest = render(p).split("\n<think>\n")
    reasoning, answer = rest.split("\n</think>\n\n")
    assert (prompt, reasoning, answer) == (p.prompt, p.reasoning, p.answer) and verify(p, answer)
    assert render(p, dialogue=True) == f"User: {p.prompt}\nAssistant: <think>\n{p.reasoning}\n</think>\n\n{p.answer}"


def test_a_share_of_the_problems_are_transcripts():
    docs = list(islice(mix_documents(TEXT, seed=0, synthetic_fraction=1.0), 2000))
    share = sum(d.startswith("User: ") and "\nAssistant: <think>\n" in d for d in docs) / len(docs)
    assert abs(share - DIALOGUE) < 0.03


def unpack(seqs):
    """The token stream the sequences were cut from (each starts on the last token of the one before)."""
    stream = list(seqs[0])
    for prev, seq in zip(seqs, seqs[1:]):
        assert seq[0] == prev[-1]
        stream += seq[1:]
    return stream


@pytest.mark.parametrize("seq_len", [1, 7, 64, 1000])
def test_packing_lengths_and_eos_between_documents(seq_len):
    docs = TEXT[:300]
    seqs = list(Packer(docs, encode, EOS, seq_len))
    assert seqs and all(len(s) == seq_len + 1 for s in seqs)
    expected = [t for d in docs for t in encode(d) + [EOS]]
    stream = unpack(seqs)
    assert stream == expected[:len(stream)]
    assert len(expected) - len(stream) < seq_len + 1  # only a partial tail is dropped
    assert len(seqs) == (len(expected) - 1) // seq_len


def test_packing_empty_documents_and_long_ones():
    docs = ["", "x" * 50, "", "ab"]
    stream = unpack(list(Packer(docs, encode, EOS, 10)))
    full = [EOS] + [ord("x")] * 50 + [EOS, EOS, ord("a"), ord("b"), EOS]
    assert stream == full[:51]  # 56 tokens give 5 sequences of 10 + 1; the last 5 are a partial tail


@pytest.mark.parametrize("k", [0, 1, 5, 13, 40])
def test_resume_from_state_gives_the_same_sequences(k):
    docs = lambda: mix_documents(TEXT[:200], seed=3)  # noqa: E731 (a fresh, identical stream each time)
    packer = Packer(docs(), encode, EOS, 33)
    before = list(islice(packer, k))
    state = packer.state_dict()
    rest = list(islice(packer, 20))
    resumed = Packer(docs(), encode, EOS, 33, state=state)
    assert list(islice(resumed, 20)) == rest
    assert resumed.state_dict() == packer.state_dict()
    unpack(before + rest)  # one continuous stream across the resume point


def test_state_counts_documents_and_offset():
    docs = ["abc", "defgh", "ij"]  # token stream: a b c . d e f g h . i j .
    packer = Packer(docs, encode, EOS, 3)
    assert packer.state_dict() == {"documents": 0, "offset": 0}
    next(packer)  # a b c .   -> next starts at '.' of doc 0
    assert packer.state_dict() == {"documents": 0, "offset": 3}
    next(packer)  # . d e f   -> next starts at 'f' of doc 1
    assert packer.state_dict() == {"documents": 1, "offset": 2}
    assert next(Packer(docs, encode, EOS, 3, state={"documents": 1, "offset": 2})) == encode("fgh") + [EOS]


def test_bad_packer_arguments():
    with pytest.raises(DataError, match="past the end"):
        Packer(["a", "b"], encode, EOS, 4, state={"documents": 3, "offset": 0})
    with pytest.raises(DataError, match="'docs'"):
        Packer(["a"], encode, EOS, 4, state={"docs": 1})
    with pytest.raises(ConfigError, match="seq_len 0"):
        Packer(["a"], encode, EOS, 0)
