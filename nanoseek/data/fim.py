"""Fill-in-Middle (DeepSeek-V3 report §4.1, after DeepSeekCoder-V2; Bavarian et al. 2022, arXiv 2207.14255):
a share of the text documents is cut into prefix, middle and suffix at two random points and laid out
Prefix-Suffix-Middle,

    <｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>middle<｜end▁of▁sentence｜>

(the packer adds the end-of-sequence), so the model learns to write a middle that joins a prefix to a suffix while
next-token prediction on the rest is unchanged. V3 applies it at a rate of 0.1, at the document level, before
packing. The cut points are uniform over the document's characters, as in Bavarian et al. The serving side is
`/beta/completions` with a `suffix` (serve/requests.py), which builds the same layout up to the middle.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from nanoseek.errors import ConfigError
from nanoseek.tokenizer import FIM_BEGIN, FIM_END, FIM_HOLE

FIM_RATE = 0.1   # V3 §4.1


def fim_layout(prefix: str, middle: str, suffix: str) -> str:
    """One document in the Prefix-Suffix-Middle layout."""
    return f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}{middle}"


def fim_document(doc: str, rng: random.Random) -> str:
    """`doc` cut at two uniform random points and laid out Prefix-Suffix-Middle."""
    a, b = sorted(rng.randint(0, len(doc)) for _ in range(2))
    return fim_layout(doc[:a], doc[a:b], doc[b:])


def fim_documents(documents: Iterable[str], rate: float, seed: int) -> Iterator[str]:
    """The documents with a share `rate` of them laid out Prefix-Suffix-Middle; deterministic for a seed."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"fim_rate {rate!r}: expected a number in [0, 1]")
    rng = random.Random(f"fim/{seed}")
    for doc in documents:
        yield fim_document(doc, rng) if rng.random() < rate else doc
