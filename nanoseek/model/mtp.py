"""Multi-token prediction (V3 report §2.2, Eq. 21-25).

Module k (k = 1..D) keeps the causal chain: at position i it combines the previous depth's representation
h_i^{k-1} with the embedding of token t_{i+k}, runs one Transformer block, and predicts t_{i+k+1} through the
main model's shared output head. Embedding and head are shared with the main model; each module has its own
block, projection M_k and norms. At inference module 1 drafts the token after next (speculative decoding).
"""
from __future__ import annotations

import torch
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.block import Block
from nanoseek.model.norm import RMSNorm


class MTPModule(Block):
    """One MTP depth: h' = M_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h^{k-1}_i)], h^k = Block(h').

    The concatenation order (embedding first) is that of DeepSeek's released weights (`eh_proj`)."""

    def __init__(self, config: ModelConfig, depth: int):
        super().__init__(config, layer_idx=config.num_hidden_layers + depth)
        H = config.hidden_size
        self.enorm = RMSNorm(H, eps=config.rms_norm_eps)
        self.hnorm = RMSNorm(H, eps=config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.norm = RMSNorm(H, eps=config.rms_norm_eps)  # applied before the shared head ("shared_head.norm")

    def forward(self, h_prev: torch.Tensor, emb_next: torch.Tensor, cos, sin, cache=None):
        h = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))
        return super().forward(h, cos, sin, cache)


def mtp_inputs(tokens: torch.Tensor, depth: int) -> torch.Tensor:
    """Module k at position i reads t_{i+k}: the input tokens shifted left by k (the last k positions drop)."""
    return tokens[:, depth:]


def mtp_targets(labels: torch.Tensor, depth: int) -> torch.Tensor:
    """Module k at position i predicts t_{i+k+1}; labels[i] = t_{i+1}, so its targets are labels shifted by k."""
    return labels[:, depth:]
