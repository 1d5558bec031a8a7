"""Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300, §4.1; used by DeepSeek-R1 §2.2.1).

For each prompt, G completions are sampled from the old policy; each completion's advantage is its reward
relative to its group, so no value network is needed. The objective per token is PPO's clipped surrogate
minus β times an unbiased estimate of KL(π_θ || π_ref):

    J = mean_i  mean_t [ min(ρ Â_i, clip(ρ, 1-ε, 1+ε) Â_i) - β KL_t ],  ρ = π_θ / π_old,
    KL_t = π_ref/π_θ - log(π_ref/π_θ) - 1.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, scale: str = "std", eps: float = 1e-4) -> torch.Tensor:
    """Â_i = (r_i - mean(r)) / std(r) within each group (DeepSeekMath Eq. 3 with outcome supervision);
    scale="none" keeps only the centring (Dr. GRPO). rewards: (groups, G) -> advantages (groups, G).
    std is the sample standard deviation over the group."""
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale == "none":
        return centred
    if scale != "std":
        raise ValueError(f"advantage scale must be 'std' or 'none', got {scale!r}")
    return centred / (rewards.std(dim=-1, keepdim=True) + eps)


def zero_variance_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Groups whose G rewards are all equal carry no learning signal (every advantage is 0): (groups,) bool."""
    return (rewards == rewards[:, :1]).all(dim=-1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Unbiased, always non-negative estimator of KL(π_θ || π_ref) per token (DeepSeekMath Eq. 4)."""
    log_ratio = ref_logp - logp
    return log_ratio.exp() - log_ratio - 1


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, min(ρ Â, clip(ρ, 1-ε, 1+ε) Â), and whether each token was clipped.
    logp, old_logp: (batch, T); advantages: (batch,) or (batch, T)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = (logp - old_logp).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    return torch.minimum(unclipped, clipped), clipped < unclipped


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str = "sequence") -> torch.Tensor:
    """Reduce a per-token quantity to a scalar: "sequence" averages over each completion's tokens, then over
    completions (DeepSeekMath Eq. 3); "token" averages over all tokens of the batch (DAPO; Dr. GRPO), so long
    completions are not down-weighted per token."""
    mask = mask.to(per_token.dtype)
    if how == "sequence":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if how == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    raise ValueError(f"loss aggregation must be 'sequence' or 'token', got {how!r}")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps: float = 0.2, beta: float = 0.04,
              how: str = "sequence") -> tuple[torch.Tensor, dict]:
    """The GRPO loss (the negative objective) and its parts for logging. ref_logp may be None when β = 0."""
    surrogate, was_clipped = clipped_objective(logp, old_logp, advantages, clip_eps)
    per_token = -surrogate
    kl = kl_estimate(logp, ref_logp) if ref_logp is not None and beta else torch.zeros_like(logp)
    per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, how)
    with torch.no_grad():
        stats = {"kl": aggregate(kl, mask, "token").item(), "clip_frac": aggregate(was_clipped.float(), mask, "token").item()}
    return loss, stats
