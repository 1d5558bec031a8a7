import pytest
import torch

from nanoseek.tokenizer import train_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one torch thread. (On a shared 2-core machine a second OpenMP thread spinning
    for a descheduled sibling makes each small operation milliseconds slower.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A byte-level BPE of 300 tokens trained on a few lines (the model's vocabulary must cover it)."""
    d = tmp_path_factory.mktemp("tokenizer")
    text = d / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\nhello world, hello nanoseek\n"
                    "déjà vu: naïve café, 数学 and emoji 🙂\n" * 20, encoding="utf-8")
    return train_tokenizer([text], 300, d)
