"""The reasoning splitter as a pure function over token streams holding </think>: whatever pieces the text streams
in, the parts agree with splitting the whole text at once, and with a split written out by hand."""
import itertools

import pytest

from nanoseek.infer.detokenizer import Detokenizer
from nanoseek.serve.reasoning import ReasoningSplitter, reasoning_tokens, split_reasoning
from nanoseek.train.default_tokenizer import default_tokenizer

# (text generated after the prompt's "<think>\n", reasoning, answer)
CASES = [
    ("Add 2 and 3.\nThat is 5.\n</think>\n\nThe answer is 5.", "Add 2 and 3.\nThat is 5.", "The answer is 5."),
    ("short\n</think>\n\n", "short", ""),
    ("no newlines</think>answer", "no newlines", "answer"),
    ("still thinking when the tokens ran out\n\n", "still thinking when the tokens ran out\n\n", ""),
    ("cut inside the tag\n</thi", "cut inside the tag\n</thi", ""),
    ("a < b and </ is not the tag\n</think>\n\n\n1 < 2 </think> twice", "a < b and </ is not the tag",
     "1 < 2 </think> twice"),
    ("</think>\n\nonly an answer", "", "only an answer"),
    ("unicode ∑ 数学 🙂\n</think>\n\n答案 🙂", "unicode ∑ 数学 🙂", "答案 🙂"),
]


def by_hand(text: str) -> tuple[str, str]:
    if "</think>" not in text:
        return text, ""
    reasoning, answer = text.split("</think>", 1)
    return reasoning.rstrip("\n"), answer.lstrip("\n")


def stream(pieces) -> tuple[str, str]:
    splitter, reasoning, answer = ReasoningSplitter(), "", ""
    for piece in pieces:
        r, a = splitter.feed(piece)
        reasoning, answer = reasoning + r, answer + a
    return reasoning + splitter.finish(), answer


@pytest.mark.parametrize("text, reasoning, answer", CASES)
def test_whole_text(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer) == by_hand(text)


@pytest.mark.parametrize("text, reasoning, answer", CASES)
def test_token_stream_agrees_with_whole_text(text, reasoning, answer):
    """Fed as the engine streams it: the detokenizer's text of each new token of the shipped tokenizer."""
    tokenizer = default_tokenizer()
    ids = tokenizer.encode(text)
    assert tokenizer.end_think_id in ids or "</think>" not in text   # the tag is one special token
    detokenizer = Detokenizer(tokenizer)
    pieces = [detokenizer.add([i])[0] for i in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text
    assert stream(pieces) == (reasoning, answer)


@pytest.mark.parametrize("text, reasoning, answer", CASES)
def test_every_cut_into_three_pieces(text, reasoning, answer):
    for i, j in itertools.combinations(range(len(text) + 1), 2):
        assert stream([text[:i], text[i:j], text[j:]]) == (reasoning, answer), (i, j)


def test_nothing_is_emitted_that_could_still_be_the_tag():
    splitter = ReasoningSplitter()
    assert splitter.feed("thinking\n") == ("thinking", "")      # the newline may come before </think>
    assert splitter.feed("</th") == ("", "")
    assert splitter.feed("ink>\n") == ("", "")                  # newlines after the tag wait for the answer
    assert splitter.feed("\nYes") == ("", "Yes")
    assert not splitter.thinking


def test_reasoning_tokens():
    tokenizer = default_tokenizer()
    end = tokenizer.end_think_id
    ids = tokenizer.encode("two words\n</think>\n\nan answer")
    assert reasoning_tokens(ids, end) == ids.index(end) + 1
    assert reasoning_tokens(ids[:3], end) == 3          # never closed: all of it is reasoning
    assert reasoning_tokens([], end) == 0
