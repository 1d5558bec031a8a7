"""Parity with the Hugging Face implementation through checkpoints, both ways: transformers' DeepseekV3ForCausalLM
saves and nanoseek loads, nanoseek saves (format="hf") and transformers loads; full-sequence logits must agree."""
import pytest
import torch

from nanoseek.checkpoint import load_checkpoint, save_checkpoint
from nanoseek.config import ModelConfig
from nanoseek.model import Transformer

transformers = pytest.importorskip("transformers")

TOL = 1e-4
YARN = dict(factor=4.0, original_max_position_embeddings=32, beta_fast=32, beta_slow=1, mscale=0.8,
            mscale_all_dim=0.6)
BASE = dict(vocab_size=97, hidden_size=48, intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=3,
            num_attention_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
            v_head_dim=12, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
            n_group=1, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True, num_nextn_predict_layers=1,
            rope_theta=10000.0, max_position_embeddings=128)
CONFIGS = {
    "q_lora": dict(n_group=4, topk_group=2, num_experts_per_tok=3),
    "no_q_lora_yarn": dict(q_lora_rank=None, rope_scaling=dict(type="yarn", **YARN), rope_theta=500.0),
    "yarn_groups_tied": dict(n_group=2, topk_group=1, rope_scaling=dict(type="yarn", **YARN), tie_word_embeddings=True,
                             n_shared_experts=2, norm_topk_prob=False, routed_scaling_factor=1.5),
    "not_interleaved_all_moe": dict(rope_interleave=False, first_k_dense_replace=0, q_lora_rank=None, n_group=2,
                                    topk_group=2, num_experts_per_tok=4),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-scale activations, norms around 1, and a routing bias large enough to change choices."""
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


def hf_config(kwargs: dict):
    """The same shape as a transformers v5 config: YaRN as `rope_parameters`."""
    kwargs = dict(BASE, **kwargs)
    rope = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta")}
    if "rope_scaling" in kwargs:
        rope.update({k: v for k, v in kwargs.pop("rope_scaling").items() if k != "type"}, rope_type="yarn")
    return transformers.DeepseekV3Config(**kwargs, rope_parameters=rope, attn_implementation="eager",
                                         num_key_value_heads=kwargs["num_attention_heads"])


def logits_without_bias(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    saved = [m.gate.e_score_correction_bias.clone() for m in model.moe_layers()]
    for m in model.moe_layers():
        m.gate.e_score_correction_bias.zero_()
    out = model(ids)
    for m, b in zip(model.moe_layers(), saved):
        m.gate.e_score_correction_bias.copy_(b)
    return out


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_transformers_checkpoint_loads_with_same_logits(name, tmp_path, capsys):
    torch.manual_seed(0)
    hf = transformers.DeepseekV3ForCausalLM(hf_config(CONFIGS[name])).eval()
    randomize(hf, seed=1)
    hf.save_pretrained(tmp_path)
    capsys.readouterr()
    ours = load_checkpoint(tmp_path)
    # its config says one MTP layer (DeepSeek's), but transformers saves none
    assert len(ours.mtp) == 0 and "no MTP weights" in capsys.readouterr().err
    ids = torch.randint(0, BASE["vocab_size"], (2, 24))
    expected = hf(ids).logits
    got = ours(ids)
    assert expected.std() > 0.3  # not a degenerate comparison
    assert (got - expected).abs().max() <= TOL
    assert (logits_without_bias(ours, ids) - expected).abs().max() > 1e-2  # the routing bias came across and matters


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_hf_export_loads_in_transformers_with_same_logits(name, tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(**dict(BASE, **CONFIGS[name]))
    ours = Transformer(config).eval()
    randomize(ours, seed=2)
    save_checkpoint(ours, tmp_path, format="hf")
    # our export carries DeepSeek's MTP layer, which transformers does not model: it skips those keys
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager",
                                                            dtype=torch.float32).eval()
    ids = torch.randint(0, config.vocab_size, (2, 24))
    expected = ours(ids)
    assert expected.std() > 0.3
    assert (hf(ids).logits - expected).abs().max() <= TOL
    assert (logits_without_bias(ours, ids) - expected).abs().max() > 1e-2
