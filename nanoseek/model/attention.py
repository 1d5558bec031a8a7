"""Multi-head latent attention (MLA), DeepSeek-V2 report §2.1, used unchanged by V3 (§2.1.1).

Keys and values are compressed jointly into a latent c_kv of rank `kv_lora_rank`; positions ride on one extra
rotary key k_rope of `qk_rope_head_dim` values shared by all heads (the "decoupled RoPE" of V2 §2.1.3). The cache
(infer/kv_cache.py `PagedBatch`) holds only [c_kv ; k_rope], kv_lora_rank + qk_rope_head_dim numbers per token and
layer (V2 §2.1.4). Two paths over the same weights:
  * decompressed: [k_nope ; v] = W_ukv c_kv for every key, then ordinary attention. Training (causal over the
    sequence itself) and prefill (over everything the cache holds for the sequence): many queries share each
    decompressed key, so decompressing is the cheaper side.
  * absorbed (V2 §2.1.2): W_uk folds into the query and W_uv into the output, so attention runs against the cached
    latents directly. Decoding: one or two queries per sequence, and decompressing every cached key per step
    would cost more than the attention itself.
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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None) -> torch.Tensor:
        """x: (batch, seq, hidden); cos/sin: (batch, seq, rope // 2). Without a cache, causal attention over x
        itself; with one (a PagedBatch), the new tokens' latents are stored and attention runs over the cache."""
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
        mask = None
        if cache is not None:
            cached = cache.store(self.layer_idx, torch.cat([c_kv, k_rope], dim=-1))    # (B, S, kv_rank + rope)
            if cache.absorbed:
                return self.o_proj(self._absorbed(q_nope, q_rope, cached, cache.mask))
            c_kv, k_rope, mask = cached[..., :self.kv_rank], cached[..., self.kv_rank:], cache.mask
        out = self._decompressed(q_nope, q_rope, c_kv, k_rope, mask)
        return self.o_proj(out.reshape(B, T, self.n_heads * self.v_dim))

    def _decompressed(self, q_nope, q_rope, c_kv, k_rope, mask):
        """Attention with keys and values decompressed per head, [k_nope; v] = W_ukv c_kv, for the S keys of
        c_kv (B, S, kv_rank) and k_rope (B, S, rope); causal when mask is None, else mask (B, T, S), True =
        visible. Returns (B, T, nh, v_dim)."""
        B, T, nh, _ = q_nope.shape
        S = c_kv.shape[1]
        # kv_b_proj is used as a matrix here as in `_absorbed`, so that a quantized one (quant.py) is the same
        # matrix in both paths
        kv = F.linear(c_kv, self.kv_b_proj.weight).view(B, S, nh, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)                      # (B, nh, T, qk)
        k = torch.cat([k_nope, k_rope.unsqueeze(2).expand(B, S, nh, self.rope)], dim=-1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), scale=self.scale, is_causal=mask is None,
                                             attn_mask=None if mask is None else mask.unsqueeze(1))
        return out.transpose(1, 2)

    def _absorbed(self, q_nope, q_rope, cached, mask):
        """Attention in the latent space: score = (q_nope W_uk) . c_kv + q_rope . k_rope, out = (p c_kv) W_uv.
        The query [q_nope W_uk ; q_rope] meets the cache rows [c_kv ; k_rope] (B, S, kv_rank + rope) in one
        product; mask (B, T, S), True = visible. Returns (B, T, nh * v_dim)."""
        B, T, nh, _ = q_nope.shape
        w = self.kv_b_proj.weight.view(nh, self.nope + self.v_dim, self.kv_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope:]                               # (nh, nope|v, kv_rank)
        q_latent = torch.einsum("bthd,hdr->bthr", q_nope, w_uk)                         # (B, T, nh, kv_rank)
        query = torch.cat([q_latent, q_rope], dim=-1).view(B, T * nh, -1)
        scores = (query @ cached.transpose(1, 2)).view(B, T, nh, -1) * self.scale       # (B, T, nh, S)
        scores = scores.masked_fill(~mask.unsqueeze(2), float("-inf"))
        p = scores.softmax(dim=-1, dtype=torch.float32).to(cached.dtype)
        out_latent = p.view(B, T * nh, -1) @ cached[..., :self.kv_rank]                # (B, T*nh, kv_rank)
        out = torch.einsum("bthr,hdr->bthd", out_latent.view(B, T, nh, self.kv_rank), w_uv)
        return out.reshape(B, T, nh * self.v_dim)
