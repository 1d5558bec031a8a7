"""DeepSeekMoE with auxiliary-loss-free load balancing (V3 report §2.1.2; DeepSeekMoE, arXiv 2401.06066).

Fine-grained routed experts plus always-on shared experts. V3 scores experts with a sigmoid; a per-expert bias
b_i steers which experts are chosen but never the gate weights, and is nudged after each training step towards
balanced load. A tiny sequence-wise balance loss (§2.3, Eq. 17-20) guards against extreme imbalance inside
one sequence. Each expert runs only on the tokens routed to it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig


class MLP(nn.Module):
    """SwiGLU feed-forward: the dense layers, each routed expert and the shared experts."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def route(scores: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_group: int, topk_group: int) -> torch.Tensor:
    """Group-limited top-k selection (V3 §2.1.2, "node-limited routing" in miniature): experts form n_group
    groups, a group scores the sum of its two best (s_i + b_i), the best topk_group groups stay, and the top_k
    experts are chosen inside them. scores: (tokens, experts) -> indices (tokens, top_k)."""
    choice = scores if bias is None else scores + bias
    if n_group > 1:
        N, E = choice.shape
        grouped = choice.view(N, n_group, E // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)                     # (N, n_group)
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(topk_group, dim=-1).indices, True)
        choice = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(N, E)
    return choice.topk(top_k, dim=-1).indices


class Gate(nn.Module):
    """Router: affinities s = sigmoid(u . e_i) in float32, selection by s + b, gates from s alone."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k, self.n_group, self.topk_group = config.num_experts_per_tok, config.n_group, config.topk_group
        self.scoring, self.norm_topk, self.scaling = config.scoring_func, config.norm_topk_prob, config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (tokens, hidden) -> gate weights (tokens, top_k), expert indices (tokens, top_k), scores (tokens, E)."""
        logits = F.linear(x.float(), self.weight.float())
        if self.scoring == "sigmoid":
            scores, bias = logits.sigmoid(), self.e_score_correction_bias
        else:  # V2: softmax affinities, no balancing bias
            scores, bias = logits.softmax(dim=-1), None
        indices = route(scores.detach(), bias, self.top_k, self.n_group, self.topk_group)
        # V3 §2.1.2: the bias only chooses experts; gate weights use the raw scores, normalised over the top-k
        weights = scores.gather(1, indices)
        if self.norm_topk:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scaling, indices, scores


def balance_loss(scores: torch.Tensor, indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Sequence-wise balance loss without α (V3 §2.3, Eq. 17-20): sum_i f_i P_i per sequence, averaged.
    scores: (batch, seq, E) affinities; indices: (batch, seq, top_k) chosen experts.
    f_i = E / (K T) * #tokens choosing i;  P_i = mean over tokens of s_i / sum_j s_j."""
    B, T, K = indices.shape
    chosen = torch.zeros(B, T, n_experts, device=scores.device).scatter_(2, indices, 1.0)
    f = chosen.sum(1) * n_experts / (K * T)                                         # (B, E)
    p = (scores / scores.sum(-1, keepdim=True)).mean(1)                              # (B, E)
    return (f * p).sum(-1).mean()


def update_bias(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """Auxiliary-loss-free balancing (V3 §2.1.2): b_i <- b_i + γ sign(mean load - load_i)."""
    return bias + gamma * torch.sign(load.float().mean() - load.float())


class MoE(nn.Module):
    """Shared experts on every token plus the top-k routed experts, weighted by the gate (V3 Eq. 12-16)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_experts = config.n_routed_experts
        self.gate = Gate(config)
        self.experts = nn.ModuleList(MLP(config.hidden_size, config.moe_intermediate_size)
                                     for _ in range(config.n_routed_experts))
        self.shared_experts = MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
        # Tokens each expert received since the last bias update; the training loop reads and resets it.
        self.register_buffer("tokens_per_expert", torch.zeros(config.n_routed_experts), persistent=False)
        self.aux_loss = None  # the sequence-wise balance term of the last training forward
        self.expert_parallel = None  # set by model.expert_parallel.distribute_experts: experts spread over ranks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        flat = x.reshape(-1, H)
        weights, indices, scores = self.gate(flat)
        if self.training:
            self.aux_loss = balance_loss(scores.view(B, T, -1), indices.view(B, T, -1), self.n_experts)
            self.tokens_per_expert += torch.bincount(indices.flatten(), minlength=self.n_experts).float()
        routed = self._run_experts(flat, weights, indices)
        return (routed + self.shared_experts(flat)).view(B, T, H)

    def _run_experts(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Sort the (token, expert) pairs by expert and run each expert once, on its own tokens only."""
        if self.expert_parallel is not None:
            return self.expert_parallel(self.experts, x, weights, indices)
        k = indices.shape[1]
        flat_idx = indices.flatten()
        order = flat_idx.argsort(stable=True)
        counts = torch.bincount(flat_idx, minlength=self.n_experts).tolist()
        token_of = order // k
        chunks = x[token_of].split(counts)
        # every expert runs, an idle one on no rows: its gradient is then zero rather than absent, as with expert
        # parallelism, where ranks must agree on which gradients exist
        out = torch.cat([self.experts[e](chunk) for e, chunk in enumerate(chunks)])
        out = out * weights.flatten()[order].unsqueeze(1).to(out.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, out.to(x.dtype))
