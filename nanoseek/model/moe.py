"""DeepSeekMoE with auxiliary-loss-free load balancing (V3 report §2.1.2; DeepSeekMoE, arXiv 2401.06066).

Fine-grained routed experts plus always-on shared experts. V3 scores experts with a sigmoid; a per-expert bias
b_i steers which experts are chosen but never the gate weights, and is nudged after each training step towards
balanced load. A tiny sequence-wise balance loss (§2.3, Eq. 17-20) guards against extreme imbalance inside
one sequence. The routed experts' matrices are stacked (`Experts`): a few tokens gather their experts' matrices by
index, many tokens are sorted by expert so that each expert runs once, on its own tokens only (a grouped matrix
product where torch has one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig

# Up to this many (token, expert) pairs, Experts gathers each pair's matrices rather than sorting the pairs by
# expert: eagerly, and inside a compiled step, where the gather fuses into the products (docs/moe.md).
GATHER_MAX = 4
GATHER_MAX_COMPILED = 32


@torch.library.custom_op("nanoseek::grouped_mm", mutates_args=())
def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """F.grouped_mm as one opaque operation for torch.compile (torch 2.13's compile-time shape rule for it accepts
    bf16 only; its CPU kernel any float). a (M, K) rows sorted by group, b (G, K, N) -> (M, N): rows
    offs[g-1]:offs[g] of a times b[g]; or a (K, M), b (M, N) -> (G, K, N): the groups split M."""
    return F.grouped_mm(a, b, offs=offs)


@grouped_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if b.dim() == 3:
        return a.new_empty(a.shape[0], b.shape[-1])
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[1])


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx, grad: torch.Tensor):
    """Of (M, K) @ (G, K, N) by groups of rows: d a = grad @ b[g]^T per group, d b[g] = a_g^T grad_g."""
    a, b, offs = ctx.saved_tensors
    return grouped_mm(grad, b.mT, offs), grouped_mm(a.t(), grad, offs), None


grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_save_inputs)


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x (M, K) rows sorted by group, w (G, K, N), offs (G,) the end of each group's rows -> (M, N), in the dtype
    of `compute_dtype` (autocast does not know the grouped product)."""
    dtype = compute_dtype(x)
    x, w = x.to(dtype), w.to(dtype)
    return grouped_mm(x, w, offs) if torch.compiler.is_compiling() else F.grouped_mm(x, w, offs=offs)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product of x runs in: autocast's, when it is on."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def can_group(x: torch.Tensor, hidden: int, intermediate: int) -> bool:
    """Whether torch's grouped product takes these tokens: on the CPU, in 32- or 16-bit floats, rows of 16-byte
    multiples."""
    dtype = compute_dtype(x)
    size = dtype.itemsize
    return (x.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16, torch.float16)
            and (hidden * size) % 16 == 0 and (intermediate * size) % 16 == 0)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The SwiGLU gating of every FFN here: silu(x W_gate^T) * (x W_up^T), from the two projections of x."""
    return F.silu(gate) * up


class MLP(nn.Module):
    """SwiGLU feed-forward: the dense layers and the shared experts."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def expert_weight_name(experts: str, e: int, projection: str) -> str:
    """DeepSeek's name for one routed expert's matrix, `<experts>.<e>.<projection>.weight`: checkpoints store each
    expert's matrices under these names, and GPTQ's Hessians are keyed by them."""
    return f"{experts}.{e}.{projection}.weight"


def sort_by_expert(indices: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (token, expert) pairs of indices (N, top_k) sorted by expert: their positions in indices.flatten(), the
    token of each, and the number of pairs per expert (n_experts,)."""
    flat = indices.flatten()
    order = flat.argsort(stable=True)
    return order, order // indices.shape[1], expert_counts(flat, n_experts)


def expert_counts(flat: torch.Tensor, n_experts: int) -> torch.Tensor:
    """How many of the expert ids `flat` name each expert, (n_experts,): bincount with a shape known in advance, so
    that a compiled graph need not break around it."""
    return torch.zeros(n_experts, dtype=flat.dtype, device=flat.device).index_add_(0, flat, torch.ones_like(flat))


def combine(x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor, order: torch.Tensor,
            token_of: torch.Tensor) -> torch.Tensor:
    """Expert outputs of the sorted pairs (pairs, hidden) -> each token's gate-weighted sum (N, hidden), like x."""
    out = out * weights.flatten()[order].unsqueeze(1).to(out.dtype)
    return torch.zeros_like(x).index_add_(0, token_of, out.to(x.dtype))


class Experts(nn.Module):
    """The routed experts (V3 §2.1.2): E SwiGLU FFNs with their matrices stacked, gate_proj and up_proj (E, I, H),
    down_proj (E, H, I), so that experts are picked by index. One entry, `forward`, runs them in one of two ways,
    chosen by shape alone (a compiled step sees no data-dependent branch):
    - few (token, expert) pairs, as in decoding: each pair's matrices are gathered by index and applied in one
      batched product; no sorting and no host synchronisation, at the cost of a copy of the matrices per pair;
    - many pairs, as in training and prefill: the pairs are sorted by expert and each expert runs once on its own
      tokens, reading its matrices once: one grouped product per matrix where torch has one for these tensors (on
      the CPU; no host synchronisation either), else a loop over the experts with tokens. The stack has one
      gradient, zero in the rows of the idle experts.
    Both read the matrices through indexing alone (`matrices`), so a quant.QuantizedStack, which keeps one of them
    int8 / int4 and dequantizes just the experts asked for, can stand in for any of the three."""

    def __init__(self, n_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.n_experts = n_experts
        self.gate_proj = nn.Parameter(torch.empty(n_experts, intermediate, hidden))
        self.up_proj = nn.Parameter(torch.empty(n_experts, intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(n_experts, hidden, intermediate))

    def matrices(self, index=slice(None)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gate, up and down matrices of the experts `index`: an expert id, a tensor of ids, or all of them."""
        return self.gate_proj[index], self.up_proj[index], self.down_proj[index]

    @staticmethod
    def activation(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> the input of down_proj (..., I); GPTQ calibrates down_proj on it."""
        return swiglu(x @ gate.mT, x @ up.mT)

    def ffn(self, x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """x (..., H) through the expert FFN of these matrices (V3 Eq. 13's FFN_i) -> (..., H)."""
        return self.activation(x, gate, up) @ down.mT

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x (N, H) flat tokens, gate weights and expert indices (N, top_k) -> Σ_k g_k expert_k(x) (N, H)."""
        if indices.numel() <= (GATHER_MAX_COMPILED if torch.compiler.is_compiling() else GATHER_MAX):
            y = self.ffn(x[:, None, None], *self.matrices(indices)).squeeze(2)             # (N, top_k, H)
            return (y * weights.unsqueeze(-1).to(y.dtype)).sum(1).to(x.dtype)
        order, token_of, counts = sort_by_expert(indices, self.n_experts)
        xs = x[token_of]                                                                    # (pairs, H), by expert
        gate, up, down = self.matrices()
        if can_group(x, gate.shape[-1], gate.shape[-2]):
            offs = counts.cumsum(0).to(torch.int32)
            h = swiglu(_grouped_mm(xs, gate.mT, offs), _grouped_mm(xs, up.mT, offs))
            return combine(x, _grouped_mm(h, down.mT, offs), weights, order, token_of)
        chunks = xs.split(counts.tolist())
        # all experts' matrices at once, then unbound: the backward stacks the E gradients in one tensor rather than
        # adding E zero-padded full-size ones
        per_expert = zip(*(m.unbind(0) for m in self.matrices()))
        out = torch.cat([self.ffn(chunk, *m) for chunk, m in zip(chunks, per_expert) if len(chunk)])
        return combine(x, out, weights, order, token_of)


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
        self.experts = Experts(config.n_routed_experts, config.hidden_size, config.moe_intermediate_size)
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
            self.tokens_per_expert += expert_counts(indices.flatten(), self.n_experts).float()
        if self.expert_parallel is None:
            routed = self.experts(flat, weights, indices)
        else:
            routed = self.expert_parallel(self.experts, flat, weights, indices)
        return (routed + self.shared_experts(flat)).view(B, T, H)
