from nanoseek.infer.detokenizer import Detokenizer

TEXT = "déjà vu: naïve café, 数学 and emoji 🙂 hello world"


def feed_one_by_one(tokenizer, ids, stop=()):
    d = Detokenizer(tokenizer, stop)
    pieces = []
    for token in ids:
        piece, stopped = d.add([token])
        pieces.append(piece)
        if stopped:
            return pieces, True, d
    pieces.append(d.flush())
    return pieces, False, d


def test_streamed_text_is_the_decoded_text_and_never_half_a_character(tokenizer):
    # byte fallback: the emoji and CJK characters take several byte-level tokens each
    ids = tokenizer.encode(TEXT)
    assert len(ids) > len(TEXT.split())
    pieces, stopped, _ = feed_one_by_one(tokenizer, ids)
    assert not stopped and "".join(pieces) == TEXT
    assert not any("\ufffd" in p for p in pieces)


def test_stop_strings_across_tokens_end_the_text_before_them(tokenizer):
    ids = tokenizer.encode(TEXT)
    pieces, stopped, d = feed_one_by_one(tokenizer, ids, stop=("ji 🙂 h", "zzz"))
    assert stopped and "".join(pieces) == d.text == "déjà vu: naïve café, 数学 and emo"
    # the earliest of several stop strings wins, wherever it is in the list
    pieces, stopped, _ = feed_one_by_one(tokenizer, ids, stop=("world", "café"))
    assert stopped and "".join(pieces) == "déjà vu: naïve "


def test_text_that_might_begin_a_stop_string_is_held_back_then_released(tokenizer):
    d = Detokenizer(tokenizer, stop=("hello there",))
    out, stopped = d.add(tokenizer.encode("say hello"))
    assert out == "say " and not stopped       # "hello" could still become "hello there"
    out, stopped = d.add(tokenizer.encode(" world"))
    assert out == "hello world" and not stopped
