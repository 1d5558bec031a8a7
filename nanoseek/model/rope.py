"""Rotary position embedding (RoPE) with YaRN context extension (V2 report §2.1.3 and Appendix B; V3 §4.3).

Only the decoupled `qk_rope_head_dim` part of each query and the single shared rotary key are rotated (MLA).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nanoseek.config import ModelConfig, yarn_mscale


def yarn_inv_freq(dim: int, base: float, scaling: dict) -> tuple[torch.Tensor, float]:
    """YaRN: keep high-frequency dimensions, interpolate low-frequency ones by `factor`, ramp in between.
    Returns the inverse frequencies and the factor that scales cos/sin (mscale / mscale_all_dim)."""
    factor = scaling["factor"]
    original = scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times over `original`
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = math.floor(correction_dim(beta_fast)), math.ceil(correction_dim(beta_slow))
    low, high = max(low, 0), min(high, dim - 1)
    ramp = (torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)
    extrapolate = 1 - ramp.clamp(0, 1)  # 1: keep the original frequency, 0: divide it by `factor`
    base_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv_freq = base_freq / factor * (1 - extrapolate) + base_freq * extrapolate
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)
    return inv_freq, attention_factor


class RotaryEmbedding(nn.Module):
    """Gives (cos, sin) of shape (batch, seq, rope_dim // 2) for integer positions of shape (batch, seq)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.rope_dim
        if config.rope_scaling:
            inv_freq, self.attention_factor = yarn_inv_freq(dim, config.rope_theta, config.rope_scaling)
        else:
            inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
            self.attention_factor = 1.0
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.unsqueeze(-1).float() * self.inv_freq
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate x (batch, seq, heads, rope_dim) by angles (batch, seq, rope_dim // 2).

    Interleaved (DeepSeek's layout): pair (x[2i], x[2i+1]) turns by angle i. The rotated pairs come out as
    [all first halves; all second halves]; queries and keys get the same order, so their dot products are
    those of the interleaved rotation. Not interleaved: pair (x[i], x[i + dim/2]) turns by angle i."""
    cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
