"""The latent KV cache of MLA: per layer and token it holds only c_kv (kv_lora_rank) and the shared rotary key
(qk_rope_head_dim) — V2 report §2.1.4 — never per-head keys or values."""
from __future__ import annotations

import torch

from nanoseek.config import ModelConfig


class LatentCache:
    """A contiguous cache for `batch` sequences of up to `max_len` tokens, over the main layers and the MTP
    modules. Each row writes at its own positions, so rows of different lengths share one batched forward."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, dtype=torch.float32, device=None):
        layers = config.num_hidden_layers + config.num_nextn_predict_layers
        latent, rope = config.cache_widths()  # GQA students cache their key and value heads here instead
        self.c_kv = torch.zeros(layers, batch, max_len, latent, dtype=dtype, device=device)
        self.k_rope = torch.zeros(layers, batch, max_len, rope, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, layer: int, c_kv: torch.Tensor, k_rope: torch.Tensor, positions: torch.Tensor):
        """Store new latents (batch, T, .) at positions (batch, T); return the cached latents up to the furthest
        position and the mask (batch, T, S) of keys each new token may see (its own and earlier positions)."""
        rows = torch.arange(c_kv.shape[0], device=c_kv.device).unsqueeze(1)
        self.c_kv[layer, rows, positions] = c_kv.to(self.c_kv.dtype)
        self.k_rope[layer, rows, positions] = k_rope.to(self.k_rope.dtype)
        S = int(positions.max()) + 1
        mask = torch.arange(S, device=positions.device) <= positions.unsqueeze(-1)
        return self.c_kv[layer, : c_kv.shape[0], :S], self.k_rope[layer, : c_kv.shape[0], :S], mask
