"""`nanoseek info`: the figures that describe a model before anyone trains or serves it."""
from __future__ import annotations

import json
from pathlib import Path

from nanoseek.config import PRESETS, ModelConfig
from nanoseek.cost import flops_per_token
from nanoseek.errors import ConfigError


def resolve_config(preset_or_path: str) -> ModelConfig:
    if preset_or_path in PRESETS:
        return ModelConfig.from_preset(preset_or_path)
    if not Path(preset_or_path).exists():
        raise ConfigError(f"{preset_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    from nanoseek.checkpoint.files import check_folder

    return ModelConfig.load(check_folder(preset_or_path))


def trained_seq_len(preset_or_path: str) -> int | None:
    """The sequence length the checkpoint was trained at, from the run.json beside it (None: a preset, or no record)."""
    from nanoseek.train.run_folder import RUN

    file = Path(preset_or_path) / RUN
    if preset_or_path in PRESETS or not file.is_file():
        return None
    try:
        settings = json.loads(file.read_text())
        return int(settings[settings["stage"]]["seq_len"])
    except (ValueError, KeyError, TypeError):
        return None


def _n(x: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.2f}{unit}"
    return f"{x:.0f}"


def describe(preset_or_path: str, bytes_per_value: int = 2) -> str:
    c = resolve_config(preset_or_path)
    p = c.param_counts()
    kv = c.kv_cache_values_per_token()
    trained = trained_seq_len(preset_or_path)
    seq = trained or min(4096, c.max_position_embeddings)
    at = f"sequence length {seq}" + (" (its training run's, run.json)" if trained else "")
    moe = (f"{c.n_routed_experts} routed ({c.num_experts_per_tok} active, {c.n_group} groups / {c.topk_group} kept)"
           f" + {c.n_shared_experts} shared, first {c.first_k_dense_replace} dense" if c.n_routed_experts else "dense")
    rows = [
        ("model", preset_or_path),
        ("shape", f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, "
                  f"vocab {c.vocab_size}"),
        ("experts", moe),
        ("total parameters", f"{_n(p['total'])} ({p['total']:,}; main model, MTP excluded)"),
        ("MTP parameters", f"{_n(p['mtp'])} ({c.num_nextn_predict_layers} module(s); embedding and head shared)"),
        ("active per token", f"{_n(p['active'])} ({p['active'] / p['total']:.1%} of total)"),
        ("KV cache per token", f"{c.attention_type.upper()} {kv['cached']:,} values = "
                               f"{_n(kv['cached'] * bytes_per_value)}B in bf16, MHA would need {kv['mha']:,} = "
                               f"{_n(kv['mha'] * bytes_per_value)}B ({kv['mha'] / kv['cached']:.1f}x more)"),
        ("training FLOPs/token", f"{_n(flops_per_token(c, seq))} at {at} (MTP included)"),
        ("inference FLOPs/token", f"{_n(flops_per_token(c, seq, training=False, mtp=False))} forward"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
