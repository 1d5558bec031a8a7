"""The cost model: FLOPs per token from the config (training and inference), and from them device-hours and
dollars. Matmul FLOPs are 2 per multiply-add per token forward, 3x that for forward + backward."""
from __future__ import annotations

from nanoseek.config import ModelConfig


def matmul_params_per_token(config: ModelConfig, mtp: bool = True) -> int:
    """Weights every token multiplies with: the active parameters less the embedding lookup and the norms (no
    matmul there), plus for each MTP depth its block, projection and the shared output head once more."""
    H = config.hidden_size
    counts = config.param_counts()
    n = counts["active"] - config.vocab_size * H * (0 if config.tie_word_embeddings else 1)
    L = config.num_hidden_layers
    n -= H * (1 + 2 * L) + _latent_norms(config) * L
    if mtp and config.num_nextn_predict_layers:
        D = config.num_nextn_predict_layers
        per_depth = counts["mtp"] // D - H * 5 - _latent_norms(config)
        if config.is_moe_layer(L):  # the MTP block is an MoE block: only top-k of its experts are active
            per_depth -= (config.n_routed_experts - config.num_experts_per_tok) * 3 * H * config.moe_intermediate_size
        n += D * (per_depth + config.vocab_size * H)
    return n


def _latent_norms(config: ModelConfig) -> int:
    return config.kv_lora_rank + (config.q_lora_rank or 0)


def attention_flops_per_token(config: ModelConfig, seq_len: int, mtp: bool = True) -> float:
    """Forward FLOPs of the score and value products, q.k over qk_head_dim and p.v over v_head_dim, per head
    and layer, against the (seq_len + 1) / 2 earlier tokens a causal token sees on average."""
    layers = config.num_hidden_layers + (config.num_nextn_predict_layers if mtp else 0)
    per_key = 2 * config.num_attention_heads * (config.qk_head_dim + config.v_head_dim)
    return layers * per_key * (seq_len + 1) / 2


def flops_per_token(config: ModelConfig, seq_len: int, training: bool = True, mtp: bool = True) -> float:
    """FLOPs per token: 2 N + attention forward, times 3 for training (the backward costs twice the forward)."""
    forward = 2 * matmul_params_per_token(config, mtp) + attention_flops_per_token(config, seq_len, mtp)
    return 3 * forward if training else forward
