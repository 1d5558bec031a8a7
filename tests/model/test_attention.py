import pytest
import torch

from nanoseek.config import ModelConfig
from nanoseek.infer.kv_cache import LatentCache
from nanoseek.model import Transformer

CONFIGS = {
    "q_lora": ModelConfig(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, q_lora_rank=32,
                          kv_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                          n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                          moe_intermediate_size=16, intermediate_size=96, num_nextn_predict_layers=1),
    "no_q_lora_yarn": ModelConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                                  v_head_dim=8, n_routed_experts=4, num_experts_per_tok=1, n_group=1, topk_group=1,
                                  moe_intermediate_size=16, intermediate_size=64, rope_interleave=False,
                                  rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=32,
                                                    mscale=1.0, mscale_all_dim=0.8)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_absorbed_decoding_reproduces_full_sequence(name):
    config = CONFIGS[name]
    torch.manual_seed(1)
    model = Transformer(config).eval()
    for m in model.moe_layers():
        m.gate.e_score_correction_bias.normal_(std=0.05)
    prompt, steps, B = 9, 64, 2
    ids = torch.randint(0, config.vocab_size, (B, prompt + steps))
    with torch.no_grad():
        full = model(ids)
        cache = LatentCache(config, B, prompt + steps)
        pos = torch.arange(prompt).expand(B, -1)
        logits = [model(ids[:, :prompt], positions=pos, cache=cache)]
        for t in range(prompt, prompt + steps):
            logits.append(model(ids[:, t:t + 1], positions=torch.full((B, 1), t), cache=cache))
    assert (torch.cat(logits, 1) - full).abs().max() <= 1e-4


def test_cache_holds_only_latent_and_rotary_key():
    config = CONFIGS["q_lora"]
    model = Transformer(config).eval()
    B, T = 2, 7
    cache = LatentCache(config, B, T)
    with torch.no_grad():
        model(torch.randint(0, 128, (B, T)), positions=torch.arange(T).expand(B, -1), cache=cache)
    tensors = [t for t in vars(cache).values() if isinstance(t, torch.Tensor)]
    per_token = sum(t.numel() for t in tensors) / (B * T)
    layers = config.num_hidden_layers + config.num_nextn_predict_layers
    assert per_token == (config.kv_lora_rank + config.qk_rope_head_dim) * layers
    # and what was written is exactly the normalised latent and the rotated shared key, not per-head keys
    assert cache.c_kv.shape[-1] == config.kv_lora_rank and cache.k_rope.shape[-1] == config.qk_rope_head_dim
    assert cache.c_kv[: config.num_hidden_layers].abs().sum() > 0


def test_rows_of_different_lengths_decode_in_one_batch():
    config = CONFIGS["q_lora"]
    torch.manual_seed(2)
    model = Transformer(config).eval()
    a, b = torch.randint(0, 128, (1, 12)), torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        ref_a, ref_b = model(a)[0, -1], model(b)[0, -1]
        cache = LatentCache(config, 2, 16)
        padded = torch.cat([a, torch.cat([b, torch.zeros(1, 7, dtype=torch.long)], 1)])
        model(padded[:, :-1], positions=torch.arange(11).expand(2, -1), cache=cache)
        last = model(torch.stack([a[:, -1], b[:, -1]]), positions=torch.tensor([[11], [4]]), cache=cache)
    assert (last[0, 0] - ref_a).abs().max() <= 1e-4
    assert (last[1, 0] - ref_b).abs().max() <= 1e-4
