"""The Hugging Face / DeepSeek DeepseekV3 layout: our names with the `model.` prefix, MTP module k stored as decoder
layer `num_hidden_layers + k` (V3 §2.2) with its final norm as `shared_head.norm` and copies of the shared embedding
and head as `embed_tokens` and `shared_head.head`; config.json as DeepSeek released it."""
from __future__ import annotations

import re

import torch

from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError


def hf_name(name: str, config: ModelConfig) -> str:
    """Our name -> the Hugging Face / DeepSeek name. MTP module k becomes decoder layer num_hidden_layers + k."""
    if name == "lm_head.weight":
        return name
    mtp = re.fullmatch(r"mtp\.(\d+)\.(.+)", name)
    if mtp is None:
        return "model." + name
    layer, rest = config.num_hidden_layers + int(mtp[1]), mtp[2]
    return f"model.layers.{layer}." + ("shared_head.norm.weight" if rest == "norm.weight" else rest)


def nanoseek_name(name: str, config: ModelConfig) -> str | None:
    """The Hugging Face / DeepSeek name -> ours; None for the MTP layers' copies of the shared embedding and head.
    A name outside the layout comes back unchanged, for the caller to report."""
    layer = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if layer is None or int(layer[1]) < config.num_hidden_layers:
        return name.removeprefix("model.")
    k, rest = int(layer[1]) - config.num_hidden_layers, layer[2]
    if rest in ("embed_tokens.weight", "shared_head.head.weight"):
        return None
    return f"mtp.{k}." + ("norm.weight" if rest == "shared_head.norm.weight" else rest)


def hf_layout(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our names -> DeepSeek's, plus the copies of the embedding and head that their release keeps in each MTP layer."""
    out = {hf_name(name, config): t for name, t in tensors.items()}
    embed = tensors["embed_tokens.weight"]
    head = tensors.get("lm_head.weight", embed)
    for k in range(config.num_nextn_predict_layers):
        layer = f"model.layers.{config.num_hidden_layers + k}"
        out[f"{layer}.embed_tokens.weight"] = embed.detach().clone()
        out[f"{layer}.shared_head.head.weight"] = head.detach().clone()
    return out


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json as DeepSeek released it (rope_theta + rope_scaling), which transformers also reads."""
    if config.scoring_func != "sigmoid" or (config.n_routed_experts == 0
                                            and config.first_k_dense_replace < config.num_hidden_layers):
        raise CheckpointError(f"DeepseekV3 routes with sigmoid scores over routed experts; this model has "
                              f"scoring_func={config.scoring_func!r}, n_routed_experts={config.n_routed_experts}")
    if config.attention_type != "mla":
        raise CheckpointError(f"DeepseekV3 attends with MLA; this model has attention_type={config.attention_type!r}")
    d = config.to_dict()
    if d["rope_scaling"] is None:
        del d["rope_scaling"]
    # head_dim: transformers' DeepseekV3 sizes its rotary embedding by it, the rope part of a head (ours is None)
    d.update(num_key_value_heads=config.num_attention_heads, head_dim=config.qk_rope_head_dim, hidden_act="silu",
             attention_bias=False, torch_dtype=str(dtype).removeprefix("torch."))
    return d
