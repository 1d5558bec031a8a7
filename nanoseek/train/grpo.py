"""Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300, §4.1; used by DeepSeek-R1 §2.2.1).

For each prompt, G completions are sampled from the old policy; each completion's advantage is its reward
relative to its group, so no value network is needed. The objective per token is PPO's clipped surrogate
minus β times an unbiased estimate of KL(π_θ || π_ref):

    J = mean_i  mean_t [ min(ρ Â_i, clip(ρ, 1-ε, 1+ε) Â_i) - β KL_t ],  ρ = π_θ / π_old,
    KL_t = π_ref/π_θ - log(π_ref/π_θ) - 1.

What the R1-Zero follow-ups found works, each an option: advantages without the std and the loss averaged over all
tokens (Dr. GRPO, arXiv 2503.20783; DAPO, arXiv 2503.14476 §3.3), β = 0, clip-higher (ε_low < ε_high, DAPO §3.1),
dynamic sampling (groups whose rewards are all equal are replaced by new questions, DAPO §3.2), overlong filtering
(truncated completions take no loss, DAPO §3.4), and a curriculum that keeps each task's level at the edge of the
policy's competence (arXiv 2512.07783: RL lifts pass@k only there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nanoseek.checks import check_fields
from nanoseek.data.prompts import check_template
from nanoseek.data.sources import DIFFICULTY
from nanoseek.errors import ConfigError
from nanoseek.model import Transformer
from nanoseek.train.config import TrainConfig
from nanoseek.train.loop import LossFn, StepLoss
from nanoseek.train.rewards import RewardSet


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


def groups_with_signal(accuracy: torch.Tensor, wanted: int) -> list[int]:
    """DAPO §3.2 dynamic sampling: the first `wanted` groups (rows of accuracy rewards (groups, G)) that are neither
    all right nor all wrong, the groups kept from an over-sampled rollout."""
    return (~zero_variance_groups(accuracy)).nonzero().flatten()[:max(wanted, 0)].tolist()


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_eps: float,
                      clip_eps_high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, min(ρ Â, clip(ρ, 1-ε_low, 1+ε_high) Â), and whether each token was
    clipped; ε_high = ε_low unless given (DAPO §3.1 clip-higher: a larger ε_high leaves room for unlikely tokens to
    rise, against entropy collapse). logp, old_logp: (batch, T); advantages: (batch,) or (batch, T)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = (logp - old_logp).exp()
    unclipped = ratio * advantages
    high = clip_eps if clip_eps_high is None else clip_eps_high
    clipped = ratio.clamp(1 - clip_eps, 1 + high) * advantages
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
              how: str = "sequence", clip_eps_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """The GRPO loss (the negative objective) and its parts for logging. ref_logp may be None when β = 0."""
    surrogate, was_clipped = clipped_objective(logp, old_logp, advantages, clip_eps, clip_eps_high)
    per_token = -surrogate
    kl = kl_estimate(logp, ref_logp) if ref_logp is not None and beta else torch.zeros_like(logp)
    per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, how)
    with torch.no_grad():
        stats = {"kl": aggregate(kl, mask, "token").item(), "clip_frac": aggregate(was_clipped.float(), mask, "token").item()}
    return loss, stats




@dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings. The papers' values (DeepSeekMath §4.1 and §5.1: G = 64 outputs per question, KL weight 0.04,
    one policy update per exploration stage; PPO's ε = 0.2) scaled to a few-million-parameter model on a CPU:
    8 questions x 8 outputs per step, completions a little longer than the tasks' worked traces."""
    init: str = "runs/sft"                # the policy's starting point (and the reference model, when β > 0)
    preset: str | None = None             # when given, --init must have this shape
    prompts: str | None = None            # JSONL of problems (`nanoseek data`); none: generated train-split problems
    difficulty: int | None = DIFFICULTY   # of the generated problems
    few_shot: int = 0                     # worked examples before each question (a base model's prompt); 0: template
    template: str = "chat"                # the prompt without examples: "chat" or "r1-zero" (R1 §2.2.1, Table 1)
    rewards: str = "accuracy=1,format=0.5"  # weighted rewards from accuracy, format, language, length
    group_size: int = 8                   # G, completions per question
    prompts_per_step: int = 8             # questions per rollout
    mu: int = 1                           # μ, policy updates per rollout
    beta: float = 0.04                    # β, weight of KL(π_θ || π_ref); 0 keeps no reference model
    clip_eps: float = 0.2                 # ε of the clipped ratio (ε_low with clip_eps_high)
    clip_eps_high: float | None = None    # ε_high of clip-higher (DAPO §3.1: 0.28); none: ε_low
    loss_agg: str = "sequence"            # "sequence" (DeepSeekMath Eq. 3) or "token" (DAPO, Dr. GRPO)
    adv_scale: str = "std"                # "std" (Â = (r - mean) / std) or "none" (Dr. GRPO: r - mean)
    mask_truncated: bool = False          # completions cut at max_new_tokens take no loss (DAPO's overlong filter)
    dynamic_sampling: int = 0             # > 1: groups all right or all wrong refilled by new questions, at most
                                          # this many sampling rounds a step (DAPO §3.2); 0 or 1: off
    curriculum: tuple[float, float] | None = None  # pass-rate band LOW,HIGH of the level curriculum (a task's
                                                   # level moves up above HIGH, down below LOW); none: off
    curriculum_levels: tuple[int, int] = (1, 5)    # the levels it moves between; it starts at the difficulty
    curriculum_window: int = 64           # completions of a task's running pass rate
    heldout: int = 100                    # held-out problems, evaluated greedily every eval_every steps
                                          # and at the end, and by pass@k at the start and the end; 0: none
    pass_k: int = 8                       # k of the held-out pass@k (samples at the temperature); 0: none
    max_new_tokens: int = 160             # longest completion
    temperature: float = 1.0              # of sampling, and of the log-probabilities in the ratio
    device: str | None = None             # cpu, cuda or cuda:N; none: cuda when available, else cpu

    def __post_init__(self):
        check_fields(self, {"group_size": ">= 2", "clip_eps": "> 0", "temperature": "> 0", "difficulty": "in [1, 5]",
                            "loss_agg": AGGREGATIONS, "adv_scale": ADVANTAGE_SCALES,
                            **dict.fromkeys(("prompts_per_step", "mu", "max_new_tokens", "curriculum_window"), ">= 1")},
                     default=">= 0")
        if self.clip_eps_high is not None and self.clip_eps_high < self.clip_eps:
            raise ConfigError(f"clip_eps_high {self.clip_eps_high!r}: expected a number >= clip_eps ({self.clip_eps:g})")
        if self.curriculum is not None:
            band = self.curriculum
            if not 0 <= band[0] < band[1] <= 1:
                raise ConfigError(f"curriculum band {self.curriculum!r}: expected (low, high), "
                                  f"0 <= low < high <= 1")
            lo, hi = self.curriculum_levels
            if not 1 <= lo <= hi <= 5:
                raise ConfigError(f"curriculum levels {self.curriculum_levels!r}: expected (lowest, highest) in 1..5")
            if self.prompts is not None:
                raise ConfigError("the curriculum draws generated problems by level; it cannot use a prompts file "
                                  f"({self.prompts})")
            if self.difficulty is not None and not lo <= self.difficulty <= hi:
                raise ConfigError(f"difficulty {self.difficulty} is outside the curriculum's levels {lo}..{hi}")
        check_template(self.template, self.few_shot)
        RewardSet.parse(self.rewards)


AGGREGATIONS = ("sequence", "token")
ADVANTAGE_SCALES = ("std", "none")

# `nanoseek grpo`'s budget: a few minutes on 2 CPU cores. RL trains no MTP module (λ = 0).
DEFAULT_TRAIN = TrainConfig(max_steps=40, batch_size=64, lr=1e-4, warmup_steps=2, min_lr_ratio=1.0, weight_decay=0.0,
                            mtp_weight=0.0, save_every=20)



def completion_window(labels: torch.Tensor) -> tuple[int, int]:
    """The columns [start, end) that hold every label of a batch (labels -100 elsewhere): the completions."""
    columns = (labels != -100).any(0).nonzero()
    return int(columns.min()), int(columns.max()) + 1


def token_logprobs(model: Transformer, input_ids: torch.Tensor, labels: torch.Tensor, temperature: float,
                   start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(label_t | ids_≤t) at positions start.. of input_ids (0 where the label is -100) and the entropy of π
    there, both shaped like labels (batch, T - start); π is the model's distribution at `temperature`. The output
    head runs on those positions only: the prompts' logits are never needed."""
    h = model.hidden_states(input_ids)[:, start:]
    logp_all = (model.lm_head(model.norm(h)).float() / temperature).log_softmax(-1)
    logp = logp_all.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp * (labels != -100), entropy


def grpo_loss_fn(config: GRPOConfig) -> LossFn:
    """The loop's loss function for rollout batches: input_ids and labels (-100 off the completions), advantages
    (batch,), ref_logp when β > 0 and old_logp when μ > 1 (with μ = 1, π_old is the current policy itself)."""

    def loss_fn(model: Transformer, batch: dict[str, torch.Tensor]) -> StepLoss:
        S, T = completion_window(batch["labels"])         # this micro-batch's completions; past T is padding
        labels = batch["labels"][:, S:T]
        mask = labels != -100
        logp, entropy = token_logprobs(model, batch["input_ids"][:, :T], labels, config.temperature, S)
        old = batch["old_logp"][:, S:T] if "old_logp" in batch else logp.detach()
        ref = batch["ref_logp"][:, S:T] if "ref_logp" in batch else None
        loss, stats = grpo_loss(logp, old, ref, batch["advantages"], mask, config.clip_eps, config.beta,
                                config.loss_agg, config.clip_eps_high)
        stats["entropy"] = aggregate(entropy, mask, "token").item()
        count = int(mask.sum()) if config.loss_agg == "token" else mask.shape[0]
        return StepLoss(loss, count, stats)

    return loss_fn

