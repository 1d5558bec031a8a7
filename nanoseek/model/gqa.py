"""Grouped-query attention (Ainslie et al., 2023), the attention of the dense Llama- and Qwen-shaped students
that DeepSeek-R1 distils its reasoning into (R1 §2.4). Groups of query heads share one key-value head; RoPE turns
each whole head (rotate-half layout, as Llama). Keeps MLA's interface: with a cache (a PagedBatch), the keys and
values of the key-value heads are what each token stores, side by side."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.rope import apply_rope


class GQA(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.kv_heads, config.attention_head_dim
        self.interleave = config.rope_interleave
        H = config.hidden_size
        self.q_proj = nn.Linear(H, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(H, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(H, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, H, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None):
        B, T, _ = x.shape
        q = apply_rope(self.q_proj(x).view(B, T, self.n_heads, self.head_dim), cos, sin, self.interleave)
        k = apply_rope(self.k_proj(x).view(B, T, self.n_kv, self.head_dim), cos, sin, self.interleave)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)
        if cache is None:
            mask, causal = None, True
        else:
            cached = cache.store(self.layer_idx, torch.cat([k.flatten(2), v.flatten(2)], dim=-1))  # (B, S, 2 kv)
            k, v = cached.view(B, -1, 2, self.n_kv, self.head_dim).unbind(2)
            mask, causal = cache.mask.unsqueeze(1), False
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, is_causal=causal, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
