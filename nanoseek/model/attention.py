"""Multi-head latent attention (MLA), DeepSeek-V2 report §2.1, used unchanged by V3 (§2.1.1).

Keys and values are compressed jointly into a latent c_kv of rank `kv_lora_rank`; positions ride on one extra
rotary key k_rope of `qk_rope_head_dim` values shared by all heads (the "decoupled RoPE" of V2 §2.1.3).
Two paths over the same weights:
  * `forward(..., cache=None)`: decompress c_kv into per-head keys and values and attend (training, prefill).
  * `forward(..., cache=cache)`: absorb W_uk into the query and W_uv into the output (V2 §2.1.2), so attention
    runs against the cache directly; the cache holds only c_kv and k_rope, kv_lora_rank + qk_rope_head_dim
    numbers per token per layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig, yarn_mscale
from nanoseek.model.norm import RMSNorm
from nanoseek.model.rope import apply_rope


class MLA(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.nope, self.rope, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.kv_rank = config.kv_lora_rank
        self.interleave = config.rope_interleave
        H, nh, qk = config.hidden_size, config.num_attention_heads, config.qk_head_dim
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(H, nh * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(H, config.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, eps=config.rms_norm_eps)
            self.q_b_proj = nn.Linear(config.q_lora_rank, nh * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, self.kv_rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, eps=config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_rank, nh * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(nh * self.v_dim, H, bias=False)
        # softmax scale 1/sqrt(d_h + d_h^R), times mscale^2 under YaRN (V2 Appendix B)
        self.scale = qk ** -0.5
        if config.rope_scaling and config.rope_scaling.get("mscale_all_dim"):
            self.scale *= yarn_mscale(config.rope_scaling["factor"], config.rope_scaling["mscale_all_dim"]) ** 2

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None, positions=None):
        """x: (batch, seq, hidden); cos/sin: (batch, seq, rope // 2). With a cache, `positions` (batch, seq) says
        where each new token goes and which cached tokens it may see."""
        B, T, _ = x.shape
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, self.n_heads, self.nope + self.rope)
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin, self.interleave)
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)                                             # (B, T, kv_rank)
        k_rope = apply_rope(k_rope.unsqueeze(2), cos, sin, self.interleave).squeeze(2)  # (B, T, rope): one head
        if cache is None:
            out = self._decompressed(q_nope, q_rope, c_kv, k_rope)
        else:
            c_kv, k_rope, mask = cache.update(self.layer_idx, c_kv, k_rope, positions)
            out = self._absorbed(q_nope, q_rope, c_kv, k_rope, mask)
        return self.o_proj(out.reshape(B, T, self.n_heads * self.v_dim))

    def _decompressed(self, q_nope, q_rope, c_kv, k_rope):
        """Causal attention with keys and values decompressed per head: [k_nope; v] = W_ukv c_kv."""
        B, T, nh, _ = q_nope.shape
        kv = self.kv_b_proj(c_kv).view(B, T, nh, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)                      # (B, nh, T, qk)
        k = torch.cat([k_nope, k_rope.unsqueeze(2).expand(B, T, nh, self.rope)], dim=-1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True, scale=self.scale)
        return out.transpose(1, 2)                                                     # (B, T, nh, v_dim)

    def _absorbed(self, q_nope, q_rope, c_kv, k_rope, mask):
        """Attention in the latent space: score = (q_nope W_uk) . c_kv + q_rope . k_rope, out = (p c_kv) W_uv.
        c_kv: (B, S, kv_rank) and k_rope: (B, S, rope) for all S cached tokens; mask: (B, T, S), True = visible."""
        B, T, nh, _ = q_nope.shape
        w = self.kv_b_proj.weight.view(nh, self.nope + self.v_dim, self.kv_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope:]                               # (nh, nope|v, kv_rank)
        q_latent = torch.einsum("bthd,hdr->bthr", q_nope, w_uk)                         # (B, T, nh, kv_rank)
        scores = q_latent.reshape(B, T * nh, self.kv_rank) @ c_kv.transpose(1, 2)
        scores = scores + q_rope.reshape(B, T * nh, self.rope) @ k_rope.transpose(1, 2)  # (B, T*nh, S)
        scores = scores.view(B, T, nh, -1) * self.scale
        scores = scores.masked_fill(~mask.unsqueeze(2), float("-inf"))
        p = scores.float().softmax(dim=-1).to(c_kv.dtype)
        out_latent = p.view(B, T * nh, -1) @ c_kv                                       # (B, T*nh, kv_rank)
        return torch.einsum("bthr,hdr->bthd", out_latent.view(B, T, nh, self.kv_rank), w_uv)
