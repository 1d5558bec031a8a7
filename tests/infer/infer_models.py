"""Tiny models for the inference tests (imported by them; fixtures live in conftest.py)."""
import torch

from nanoseek.config import ModelConfig
from nanoseek.model import Transformer

# A small MLA + DeepSeekMoE model with one MTP module; every test here builds on variants of it.
TINY = ModelConfig(vocab_size=96, hidden_size=48, intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=3,
                   num_attention_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                   v_head_dim=12, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                   first_k_dense_replace=1, num_nextn_predict_layers=1, max_position_embeddings=256)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of unit-scale activations (so logits are far apart and greedy choices are not near-ties), norms
    around 1, and a routing bias large enough to change expert choices."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
    return model.eval()


def make_model(config: ModelConfig = TINY, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return randomize(Transformer(config), seed)


@torch.no_grad()
def greedy_reference(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Plain greedy decoding by full forwards, no cache at all."""
    ids = torch.tensor([prompt])
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def prompts(lengths, vocab: int = TINY.vocab_size, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
