"""Small models and batch sources shared by the tests of nanoseek/train."""
import torch

from nanoseek.config import ModelConfig
from nanoseek.model import Transformer

SMALL = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                    v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                    max_position_embeddings=64)


def small_model(seed: int = 0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(SMALL.replace(**changes))


class RandomBatches:
    """Deterministic batches of random tokens (batch i from seed i): a BatchSource whose position is a counter."""

    def __init__(self, batch_size: int = 4, seq_len: int = 16, vocab: int = 64):
        self.batch_size, self.seq_len, self.vocab, self.i = batch_size, seq_len, vocab, 0

    def __next__(self) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.i)
        self.i += 1
        # a skewed distribution, so there is something to learn
        x = torch.multinomial(torch.arange(1, self.vocab + 1.0) ** 2, self.batch_size * (self.seq_len + 1),
                              replacement=True, generator=g).view(self.batch_size, -1)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]
