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
    if config.attention_type == "gqa":
        return 0
    return config.kv_lora_rank + (config.q_lora_rank or 0)


def attention_flops_per_token(config: ModelConfig, seq_len: int, mtp: bool = True) -> float:
    """Forward FLOPs of the score and value products, q.k over qk_head_dim and p.v over v_head_dim, per head
    and layer, against the (seq_len + 1) / 2 earlier tokens a causal token sees on average."""
    layers = config.num_hidden_layers + (config.num_nextn_predict_layers if mtp else 0)
    per_key = 2 * config.num_attention_heads * sum(config.score_dims())
    return layers * per_key * (seq_len + 1) / 2


def flops_per_token(config: ModelConfig, seq_len: int, training: bool = True, mtp: bool = True) -> float:
    """FLOPs per token: 2 N + attention forward, times 3 for training (the backward costs twice the forward)."""
    forward = 2 * matmul_params_per_token(config, mtp) + attention_flops_per_token(config, seq_len, mtp)
    return 3 * forward if training else forward


# ---- hardware and prices ------------------------------------------------------------------------------------------
# Dense (no sparsity) tensor-core peaks in FLOP/s from the vendors' datasheets. The H800 is the export variant of
# the H100 SXM with the same compute and a narrower NVLink (V3 report §3.1).
GPUS = {
    "h800": {"bf16": 989e12, "fp8": 1979e12},
    "h100": {"bf16": 989e12, "fp8": 1979e12},
    "a100": {"bf16": 312e12},
}


def measure_matmul_peak(dtype=None, device=None, repeats: int = 5) -> float:
    """A device's matmul FLOP/s: the best of a few square matmuls (1024 on a CPU with torch's current thread count,
    8192 on a GPU, whose peak a small product does not reach). Its random operands come from a forked RNG, so a
    training run's random stream is untouched."""
    import time

    import torch

    device = torch.device(device or "cpu")
    n = 1024 if device.type == "cpu" else 8192
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        a = torch.randn(n, n, dtype=dtype or torch.float32, device=device)
        b = torch.randn(n, n, dtype=dtype or torch.float32, device=device)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def utilisation(mfu: float) -> str:
    """An MFU as reports show it. The peak is the best of a few matmuls measured once; on a machine busy with other
    work it comes out low, and a run that later has the machine to itself can exceed it. That is no utilisation
    above 100%, and is said as it is."""
    return f"{mfu:.1%}" if mfu <= 1 else "above the measured peak (busy machine)"


def parse_amount(text: str) -> float:
    """'14.8T', '2.788M', '5e9', '1,000' -> a float; K, M, B/G and T suffixes."""
    from nanoseek.errors import ConfigError

    units = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    s = text.strip().replace(",", "").replace("_", "")
    scale = units.get(s[-1:].upper(), 1.0)
    try:
        value = float(s[:-1] if scale != 1.0 else s) * scale
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a number (examples: 14.8T, 2.788M, 5e9)") from None
    if value <= 0:
        raise ConfigError(f"expected a positive amount, got {text!r}")
    return value


def training_cost(config: ModelConfig, tokens: float, seq_len: int, peak: float, mfu: float | None = None,
                  hours: float | None = None, price: float = 2.0) -> dict:
    """Device-hours and dollars to train on `tokens`: total FLOPs / (peak x MFU). Give the MFU, or the
    device-hours actually spent and the MFU is solved for."""
    total = flops_per_token(config, seq_len) * tokens
    if hours is not None:
        mfu = total / (hours * 3600 * peak)
    hours = total / (peak * mfu) / 3600
    return {"flops_per_token": total / tokens, "total_flops": total, "peak": peak, "mfu": mfu,
            "device_hours": hours, "dollars": hours * price}


def serving_price_per_million(tokens_per_s: float, price_per_hour: float) -> float:
    """Dollars per million generated tokens for a device costing `price_per_hour` that sustains `tokens_per_s`."""
    return price_per_hour / (tokens_per_s * 3600) * 1e6
