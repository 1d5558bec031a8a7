"""The tokenizer that ships with nanoseek for the `tiny` preset, so no command trains one implicitly.

It is a byte-level BPE of 2048 tokens (V3 report §4.1, in miniature; digits split one per token as DeepSeek LLM
§2.1 does) trained on the default pre-training mix: the standard library's docstrings interleaved with worked
synthetic problems (`data.mix`). `build_default_tokenizer` is how the files in `nanoseek/assets/` were made:

    python -m nanoseek.train.default_tokenizer nanoseek/assets
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from nanoseek.data.mix import mix_documents
from nanoseek.data.text import stdlib_documents
from nanoseek.tokenizer import Tokenizer, train_tokenizer

ASSETS = Path(__file__).resolve().parents[1] / "assets"
VOCAB_SIZE = 2048
SEED = 0


def default_tokenizer() -> Tokenizer:
    """The shipped tokenizer (nanoseek/assets/tokenizer.json)."""
    return Tokenizer.from_dir(ASSETS)


def build_default_tokenizer(out_dir: str | Path) -> Tokenizer:
    """Train the default tokenizer on one pass over the default mix and save it to `out_dir`."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "mix.txt"
        with open(corpus, "w", encoding="utf-8") as f:
            for doc in mix_documents(stdlib_documents(), seed=SEED):
                f.write(doc + "\n")
        return train_tokenizer([corpus], VOCAB_SIZE, out_dir)


if __name__ == "__main__":
    tokenizer = build_default_tokenizer(sys.argv[1] if len(sys.argv) > 1 else ASSETS)
    print(f"vocab size {tokenizer.vocab_size}")
