"""A dense grouped-query student (R1 §2.4 releases its distilled models in Llama's and Qwen's shapes) exports as
transformers' LlamaForCausalLM: Llama's tensor names are ours with the `model.` prefix, and any Llama runtime loads
it; `load_checkpoint` reads such a checkpoint back (ModelConfig.from_dict reads its config)."""
from __future__ import annotations

import torch

from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError


def llama_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json of transformers' LlamaForCausalLM for a dense grouped-query model."""
    moe_layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    if moe_layers or config.num_nextn_predict_layers:
        raise CheckpointError(f"LlamaForCausalLM is dense without MTP; this model has {moe_layers} MoE layer(s) and "
                              f"num_nextn_predict_layers={config.num_nextn_predict_layers}")
    if config.rope_interleave or config.rope_scaling:
        raise CheckpointError(f"LlamaForCausalLM rotates the two halves of each head, without YaRN; this model has "
                              f"rope_interleave={config.rope_interleave}, rope_scaling={config.rope_scaling!r}")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.kv_heads, "head_dim": config.attention_head_dim, "hidden_act": "silu",
            "rope_theta": config.rope_theta, "rms_norm_eps": config.rms_norm_eps,
            "max_position_embeddings": config.max_position_embeddings, "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": config.tie_word_embeddings, "initializer_range": config.initializer_range,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "torch_dtype": str(dtype).removeprefix("torch.")}
