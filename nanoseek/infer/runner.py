"""The inference forward: a Transformer's own weights run over the paged latent cache, for prefill chunks, decode
steps and MTP drafts.

The maths is the model's (model/attention.py, model/moe.py, model/mtp.py) and the tests hold the two equal; this
file only spends fewer tensor operations per layer, because a small model decoding a few tokens is bound by the
cost of launching operations, not by arithmetic:
  * MLA runs absorbed (V2 §2.1.2): W_uk folds into the query and W_uv into the output, so attention reads the
    cached c_kv and k_rope directly. The cache row of a token is [c_kv ; k_rope] and the query [q_nope W_uk ;
    q_rope], so both score terms come out of one batched product and one bias carries the mask.
  * RoPE for the queries and the shared key is one batched product with each token's rotation matrix, built
    once per forward for every layer.
  * The routed experts run through the model's own `Experts`; a lone token (batch-1 decoding) reads its experts'
    matrices in place instead, with no sorting and no gathering.
  * A forward over few tokens runs on one CPU thread (`threads_for`).
The runner holds no weights of its own: it reads the model's modules at every call, so a model that keeps
training (GRPO rollouts) is always run with its current weights. GQA students go through their own module, with
the batch as its cache.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.infer.kv_cache import PagedBatch
from nanoseek.model import Transformer
from nanoseek.model.attention import MLA
from nanoseek.model.moe import MoE, swiglu
from nanoseek.model.norm import rms_norm


# Forwards over fewer tokens than this run on one CPU thread (see `threads_for`).
PARALLEL_TOKENS = 128


@contextlib.contextmanager
def threads_for(tokens: int):
    """Run a forward over few tokens on one CPU thread: its matrix products are too small to repay waking a second
    one. Measured on 2 AMD EPYC cores: (8 x 256) @ (256 x 512) takes 2x as long on two threads as on one, and over
    100x when the cores are shared with other work; from a few hundred rows on, the second thread helps."""
    threads = torch.get_num_threads()
    if tokens >= PARALLEL_TOKENS or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A projection: a plain nn.Linear straight through F.linear, any other (the int8 / int4 layers of quant.py)
    through its own forward."""
    return F.linear(x, module.weight) if type(module) is nn.Linear else module(x)


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    """The model's MLP (model/moe.py), through `_linear`."""
    return _linear(mlp.down_proj, swiglu(_linear(mlp.gate_proj, x), _linear(mlp.up_proj, x)))


def _moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """DeepSeekMoE (V3 §2.1.2) over flat tokens (N, hidden): shared experts on every token plus the gated top-k
    routed experts."""
    weights, indices, _ = moe.gate(x)
    out = _mlp(moe.shared_experts, x)
    if x.shape[0] <= 2:
        # batch-1 decoding (two tokens with speculation): each token's k experts run on it, their matrices read in
        # place, where Experts would copy them to gather them (slower on a CPU, docs/moe.md)
        for i, (experts, gates) in enumerate(zip(indices.tolist(), weights.tolist())):
            for e, g in zip(experts, gates):
                out[i:i + 1].add_(moe.experts.ffn(x[i:i + 1], *moe.experts.matrices(e)), alpha=g)
        return out
    return out + moe.experts(x, weights, indices)


class Runner:
    """`hidden(ids, batch)` runs the main layers, `logits(h)` the final norm and head, `mtp(h, next_ids, batch)`
    the first MTP module; every forward writes its tokens' cache rows and reads the rows its batch names."""

    def __init__(self, model: Transformer):
        self.model = model
        c = model.config
        self.rope_dim = r = c.rope_dim
        device = model.embed_tokens.weight.device
        # apply_rope turns pairs (x1_j, x2_j) = (x[2j], x[2j+1]) (interleaved) or (x[j], x[j + r/2]) by angle j and
        # returns [x1 cos - x2 sin ; x2 cos + x1 sin]: that is x @ M with M[x1_j, j] = cos, M[x2_j, j] = -sin,
        # M[x2_j, r/2 + j] = cos, M[x1_j, r/2 + j] = sin. Flat indices of those four entries into M (r x r):
        j = torch.arange(r // 2, device=device)
        x1, x2 = (2 * j, 2 * j + 1) if c.rope_interleave else (j, j + r // 2)
        self._rotation_index = torch.cat([x1 * r + j, x2 * r + j, x2 * r + r // 2 + j, x1 * r + r // 2 + j])
        self._angles: torch.Tensor | None = None

    def _rope_tables(self, batch: PagedBatch, dtype: torch.dtype):
        """cos and sin as the model computes them (B, T, rope_dim / 2), and each token's rotation as a matrix
        (B * T, rope_dim, rope_dim), built once per forward for every layer. The model's cos and sin of every
        position so far are kept, in the layout the rotation matrices take: [cos, -sin, cos, sin]."""
        end = batch.read.shape[1]  # one past the furthest position
        if self._angles is None or self._angles.shape[0] < end or self._angles.dtype != dtype:
            n = max(end, 2 * (0 if self._angles is None else self._angles.shape[0]), 256)
            cos, sin = self.model.rotary(torch.arange(n, device=self._rotation_index.device).unsqueeze(0))
            self._angles = torch.cat([cos, -sin, cos, sin], dim=-1)[0].to(dtype)      # (n, 2 * rope_dim)
        angles = self._angles[batch.positions.flatten()]                                  # (N, 2 * rope_dim)
        N, r = angles.shape[0], self.rope_dim
        rotation = torch.zeros(N, r * r, dtype=dtype, device=angles.device).index_copy_(1, self._rotation_index, angles)
        half = angles.view(batch.B, batch.T, 4, r // 2)
        return half[:, :, 0], half[:, :, 3], rotation.view(N, r, r)

    def _mla(self, attn: MLA, x: torch.Tensor, batch: PagedBatch, table: torch.Tensor) -> torch.Tensor:
        """Absorbed MLA over flat tokens x (N, hidden), N = B * T (V2 §2.1.2; the model's MLA._absorbed)."""
        N, nh, nope, R = x.shape[0], attn.n_heads, attn.nope, attn.kv_rank
        if hasattr(attn, "q_proj"):
            q = _linear(attn.q_proj, x)
        else:
            q = _linear(attn.q_b_proj, rms_norm(_linear(attn.q_a_proj, x), attn.q_a_layernorm))
        q = q.view(N, nh, nope + attn.rope)
        kv = _linear(attn.kv_a_proj_with_mqa, x)
        c_kv = rms_norm(kv[:, :R], attn.kv_a_layernorm)
        rotated = torch.bmm(torch.cat([q[..., nope:], kv[:, None, R:]], dim=1), table)      # (N, nh + 1, rope)
        cached = batch.store(attn.layer_idx, torch.cat([c_kv, rotated[:, nh]], dim=-1))     # (B, S, R + rope)
        w = attn.kv_b_proj.weight.view(nh, nope + attn.v_dim, R)
        q_latent = torch.bmm(q[..., :nope].transpose(0, 1), w[:, :nope])                  # (nh, N, R)
        query = torch.cat([q_latent.transpose(0, 1), rotated[:, :nh]], dim=-1).view(batch.B, -1, R + attn.rope)
        bias = batch.bias(nh, query.dtype)
        if bias is None:  # every row sees every cached token
            scores = torch.bmm(query, cached.transpose(1, 2)).mul_(attn.scale)
        else:
            scores = torch.baddbmm(bias, query, cached.transpose(1, 2), alpha=attn.scale)
        p = scores.softmax(dim=-1, dtype=torch.float32)                                    # (B, T * nh, S)
        if p.dtype != cached.dtype:
            p = p.to(cached.dtype)
        out_latent = torch.bmm(p, cached[..., :R]).view(N, nh, R).transpose(0, 1)          # (nh, N, R)
        out = torch.bmm(out_latent, w[:, nope:].transpose(1, 2))                           # (nh, N, v)
        return _linear(attn.o_proj, out.transpose(0, 1).reshape(N, nh * attn.v_dim))

    def _block(self, block, x: torch.Tensor, batch: PagedBatch, rope) -> torch.Tensor:
        h = rms_norm(x, block.input_layernorm)
        if isinstance(block.self_attn, MLA):
            x = x + self._mla(block.self_attn, h, batch, rope[2])
        else:  # GQA students: the module itself, with the batch as its cache
            h = block.self_attn(h.view(batch.B, batch.T, -1), rope[0], rope[1], batch, batch.positions)
            x = x + h.flatten(0, 1)
        h = rms_norm(x, block.post_attention_layernorm)
        return x + (_moe(block.mlp, h) if isinstance(block.mlp, MoE) else _mlp(block.mlp, h))

    def hidden(self, ids: torch.Tensor, batch: PagedBatch) -> torch.Tensor:
        """Token ids (B, T) -> the last block's output (B * T, hidden), before the final norm."""
        x = self.model.embed_tokens(ids.flatten())
        rope = self._rope_tables(batch, x.dtype)
        for block in self.model.layers:
            x = self._block(block, x, batch, rope)
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return _linear(self.model.lm_head, rms_norm(h, self.model.norm)).float()

    def mtp(self, h_prev: torch.Tensor, next_ids: torch.Tensor, batch: PagedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """MTP module 1 (V3 §2.2) at the batch's positions: h_prev (B * T, hidden) from the main model, next_ids
        (B, T) the tokens one ahead -> its hidden state and the logits of the token two ahead."""
        module = self.model.mtp[0]
        emb = self.model.embed_tokens(next_ids.flatten())
        x = _linear(module.eh_proj, torch.cat([rms_norm(emb, module.enorm), rms_norm(h_prev, module.hnorm)], dim=-1))
        h = self._block(module, x, batch, self._rope_tables(batch, x.dtype))
        return h, _linear(self.model.lm_head, rms_norm(h, module.norm)).float()
