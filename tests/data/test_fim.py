"""data/fim.py: the Prefix-Suffix-Middle layout (V3 §4.1), its rate, and FIM documents in pretraining batches."""
import pytest

from nanoseek.data.fim import fim_document, fim_documents
from nanoseek.data.sources import text_source
from nanoseek.errors import ConfigError
from nanoseek.tokenizer import FIM_BEGIN, FIM_END, FIM_HOLE
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.pretrain import PretrainBatches, PretrainConfig

DOCS = [f"Document {i}: the quick brown fox, {'and more ' * (i % 7)}jumps over {i} lazy dogs. 数学 🙂"
        for i in range(2000)]


def unfold(text: str) -> tuple[str, str, str]:
    """PSM back to (prefix, middle, suffix), by hand."""
    assert text.startswith(FIM_BEGIN)
    prefix, rest = text[len(FIM_BEGIN):].split(FIM_HOLE)
    suffix, middle = rest.split(FIM_END)
    return prefix, middle, suffix


def test_layout_keeps_every_character():
    out = list(fim_documents(DOCS, 1.0, seed=0))
    cuts = set()
    for doc, fim in zip(DOCS, out):
        prefix, middle, suffix = unfold(fim)
        assert prefix + middle + suffix == doc
        cuts.add((len(prefix), len(middle)))
    assert len(cuts) > 1000                                     # the cut points are drawn, not fixed


def test_rate_and_determinism():
    out = list(fim_documents(DOCS, 0.1, seed=3))
    share = sum(d.startswith(FIM_BEGIN) for d in out) / len(DOCS)
    assert 0.08 < share < 0.12                                  # 0.1 +- 3 standard deviations of 2000 draws
    assert out == list(fim_documents(DOCS, 0.1, seed=3)) != list(fim_documents(DOCS, 0.1, seed=4))
    assert [d for d in out if not d.startswith(FIM_BEGIN)] == [d for d, o in zip(DOCS, out) if o == d]
    with pytest.raises(ConfigError, match="fim_rate"):
        list(fim_documents(DOCS, 1.5, seed=0))


def test_empty_pieces():
    import random
    for seed in range(50):
        assert "".join(unfold(fim_document("ab", random.Random(seed)))) == "ab"


@pytest.mark.parametrize("rate, expected", [(0.0, False), (1.0, True)])
def test_pretraining_batches_hold_fim_tokens(tmp_path, rate, expected):
    tokenizer = default_tokenizer()
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(f"Paragraph {i} says that {i} times {i + 1} is {i * (i + 1)}." for i in range(60)))
    config = PretrainConfig(data=(str(path),), seq_len=64, fim_rate=rate)
    batch = next(PretrainBatches(text_source(config.data), tokenizer, config, batch_size=4, seed=0))
    ids = set(batch["input_ids"].flatten().tolist())
    fim = {tokenizer.special_id(t) for t in (FIM_BEGIN, FIM_HOLE, FIM_END)}
    assert (fim <= ids) == expected and (not fim & ids) == (not expected)
