"""model/attention.py: MLA's absorbed path (decoding over the paged cache) and its decompressed path (training,
prefill) give the same logits, for every preset's attention shape."""
import pytest
import torch

from nanoseek.config import PRESETS, ModelConfig
from nanoseek.infer.kv_cache import BlockPool, PagedBatch
from nanoseek.model import Transformer
from nanoseek.model.rope import apply_rope


def preset_shape(name: str) -> ModelConfig:
    """The preset's attention (heads up to 16, ranks, head dims, RoPE and YaRN) and routing, around a narrow
    residual stream with 2 layers, a small vocabulary and few experts: a V3-sized layer does not fit a test."""
    c = ModelConfig.from_preset(name)
    experts = min(c.n_routed_experts, 8)
    groups = min(c.n_group, experts // 2) if experts else 1
    return c.replace(vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                     num_hidden_layers=2, first_k_dense_replace=min(c.first_k_dense_replace, 1),
                     num_attention_heads=min(c.num_attention_heads, 16), n_routed_experts=experts,
                     n_group=groups, topk_group=min(c.topk_group, groups),
                     num_experts_per_tok=min(c.num_experts_per_tok, experts // groups * min(c.topk_group, groups)),
                     num_key_value_heads=c.num_key_value_heads and min(c.num_key_value_heads, 16))


def randomized(config: ModelConfig, seed: int) -> Transformer:
    """Weights of unit-scale activations, so logits are far apart, and a routing bias that changes choices."""
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape) if p.ndim == 1 else torch.randn(p.shape) * p.shape[-1] ** -0.5)
        for m in model.moe_layers():
            m.gate.e_score_correction_bias.normal_(std=0.2)
    return model


def pool_for(config: ModelConfig, block_size: int = 4) -> BlockPool:
    return BlockPool(config.num_hidden_layers + config.num_nextn_predict_layers, sum(config.cache_widths()),
                     block_size, 1 << 22)


@pytest.mark.parametrize("name", list(PRESETS))
def test_absorbed_decoding_equals_the_decompressed_forward_for_every_preset_shape(name):
    """Prefill in two chunks of different lengths per row (decompressed over the cache), then 10 absorbed decode
    steps of one token, two rows in one batch padded as a compiled step pads it: every logit within 1e-4 of the
    training forward's."""
    config = preset_shape(name)
    model = randomized(config, seed=len(name))
    pool = pool_for(config)
    ids = torch.randint(0, config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    tables = [pool.allocate(8), pool.allocate(8)]
    with torch.inference_mode():
        full = model(ids)
        got = torch.zeros_like(full)
        for starts, lengths in (([0, 0], [11, 5]), ([11, 5], [9, 6])):
            T = max(lengths)
            chunk = torch.stack([torch.cat([ids[i, s:s + n], torch.zeros(T - n, dtype=torch.long)])
                                 for i, (s, n) in enumerate(zip(starts, lengths))])
            logits = model(chunk, PagedBatch.build(pool, tables, starts, lengths))
            for i, (s, n) in enumerate(zip(starts, lengths)):
                got[i, s:s + n] = logits[i, :n]
        pos = [20, 11]
        for _ in range(10):
            step = torch.tensor([[ids[0, pos[0]]], [ids[1, pos[1]]], [0], [0]])  # two rows of padding, as compiled
            logits = model(step, PagedBatch.build(pool, tables, pos, [1, 1], absorbed=True, span=32, rows=4))
            got[0, pos[0]], got[1, pos[1]] = logits[0, 0], logits[1, 0]
            pos = [p + 1 for p in pos]
    assert full.std() > 0.5
    assert (got[0] - full[0]).abs().max() < 1e-4
    assert (got[1, :21] - full[1, :21]).abs().max() < 1e-4


def test_the_cache_holds_the_normalised_latent_and_the_rotated_shared_key():
    config = preset_shape("tiny")
    model = randomized(config, seed=3)
    pool = pool_for(config, block_size=8)
    assert pool.width == config.kv_lora_rank + config.qk_rope_head_dim  # not per-head keys and values
    [block] = pool.allocate(1)
    x = torch.randint(0, config.vocab_size, (1, 5))
    with torch.inference_mode():
        model(x, PagedBatch.build(pool, [[block]], [0], [5]))
        attn = model.layers[1].self_attn
        h = model.layers[0](model.embed_tokens(x), *model.rotary(torch.arange(5)[None]))
        c_kv, k_rope = attn.kv_a_proj_with_mqa(model.layers[1].input_layernorm(h)).split([attn.kv_rank, attn.rope], -1)
    stored = pool.kv[1][block * 8:block * 8 + 5]
    assert (stored[:, :attn.kv_rank] - attn.kv_a_layernorm(c_kv)[0]).abs().max() < 1e-5
    assert (stored[:, :attn.kv_rank] - c_kv[0]).abs().max() > 1e-2                         # normalised
    cos, sin = model.rotary(torch.arange(5)[None])
    rotated = apply_rope(k_rope.unsqueeze(2), cos, sin, attn.interleave)[0, :, 0]
    assert (stored[:, attn.kv_rank:] - rotated).abs().max() < 1e-5                             # the rotated key
    assert (stored[1:, attn.kv_rank:] - k_rope[0, 1:]).abs().max() > 1e-2
