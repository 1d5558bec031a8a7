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

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from nanoseek import distributed
from nanoseek.data.problem import Problem
from nanoseek.data.styles import has_correction, has_self_check
from nanoseek.data.tasks import TASKS, stream, stream_mix
from nanoseek.errors import ConfigError
from nanoseek.infer import Engine, EngineConfig, SamplingParams, cache_mb
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.data import DIFFICULTY, eval_problems
from nanoseek.train.evaluate import (PROMPTS, EvalConfig, check_template, evaluate, few_shot_examples, load_problems,
                                     prompt_ids)
from nanoseek.train.loop import LossFn, StepLoss, TrainConfig, TrainResult, train
from nanoseek.train.rewards import RewardSet, accuracy_reward, format_reward
from nanoseek.train.stage import (check_out, device_of, finish, from_dict, initial_model, load_run, parallelize,
                                  save_run, stage_tokenizer)


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


def next_level(level: int, pass_rate: float, band: tuple[float, float], levels: tuple[int, int]) -> int:
    """The curriculum's rule: one level up when the running pass rate is above the band, one down when below it,
    within levels (lowest, highest); else the same level. Keeping questions where the policy sometimes succeeds is
    where RL helps (arXiv 2512.07783: pass@k rises only at the edge of competence; DAPO §3.2: groups all right or
    all wrong carry no gradient)."""
    low, high = band
    if pass_rate > high and level < levels[1]:
        return level + 1
    if pass_rate < low and level > levels[0]:
        return level - 1
    return level


class Curriculum:
    """A level per task, moved by `next_level` on the running pass rate: the mean accuracy reward of the last
    `window` completions sampled at the task's current level, judged after every rollout once the window is full.
    A change of level empties the window, so the next judgement sees the new level only."""

    def __init__(self, tasks: Sequence[str], start: int, band: tuple[float, float], levels: tuple[int, int],
                 window: int):
        self.band, self.levels, self.window = band, levels, window
        self.level = dict.fromkeys(tasks, start)
        self.outcomes: dict[str, list[float]] = {task: [] for task in tasks}

    def record(self, task: str, level: int, outcomes: Sequence[float]) -> None:
        """The accuracy rewards of completions of a `task` question drawn at `level`."""
        if level != self.level[task]:
            return  # drawn before the level changed
        kept = (self.outcomes[task] + list(outcomes))[-self.window:]
        self.outcomes[task] = kept
        if len(kept) == self.window:
            new = next_level(level, sum(kept) / len(kept), self.band, self.levels)
            if new != level:
                self.level[task], self.outcomes[task] = new, []

    def pass_rate(self, task: str) -> float | None:
        kept = self.outcomes[task]
        return sum(kept) / len(kept) if kept else None

    def state_dict(self) -> dict:
        return {"level": dict(self.level), "outcomes": {k: list(v) for k, v in self.outcomes.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.level, self.outcomes = dict(state["level"]), {k: list(v) for k, v in state["outcomes"].items()}


# ---- the stage: rollouts by the inference engine, updates by the shared training loop ----------------------------

@dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings. The papers' values (DeepSeekMath §4.1 and §5.1: G = 64 outputs per question, KL weight 0.04,
    one policy update per exploration stage; PPO's ε = 0.2) scaled to a few-million-parameter model on a CPU:
    8 questions x 8 outputs per step, completions a little longer than the tasks' worked traces."""
    init: str = "runs/sft"                # the policy's starting point (and the reference model, when β > 0)
    preset: str | None = None             # when given, --init must have this shape
    prompts: str | None = None            # JSONL of problems; None: generated train-split problems
    difficulty: int | None = DIFFICULTY   # of the generated problems
    few_shot: int = 0                     # worked examples before each question (a base model's prompt); 0: template
    template: str = "chat"                # the prompt without examples: "chat" or "r1-zero" (R1 §2.2.1, Table 1)
    rewards: str = "accuracy=1,format=0.5"
    group_size: int = 8                   # G, completions per question
    prompts_per_step: int = 8             # questions per rollout
    mu: int = 1                           # μ, policy updates per rollout
    beta: float = 0.04                    # β, weight of KL(π_θ || π_ref); 0 keeps no reference model
    clip_eps: float = 0.2                 # ε of the clipped ratio (ε_low with clip_eps_high)
    clip_eps_high: float | None = None    # ε_high of clip-higher (DAPO §3.1: 0.28); None: ε_low
    loss_agg: str = "sequence"            # "sequence" (DeepSeekMath Eq. 3) or "token" (DAPO, Dr. GRPO)
    adv_scale: str = "std"                # "std" (Â = (r - mean) / std) or "none" (Dr. GRPO: r - mean)
    mask_truncated: bool = False          # completions cut at max_new_tokens take no loss (DAPO's overlong filter)
    dynamic_sampling: int = 0             # > 1: groups all right or all wrong refilled by new questions, at most
                                          # this many sampling rounds a step (DAPO §3.2); 0 or 1: off
    curriculum: tuple[float, float] | None = None  # pass-rate band (low, high) of the level curriculum; None: off
    curriculum_levels: tuple[int, int] = (1, 5)    # the levels it moves between; it starts at `difficulty`
    curriculum_window: int = 64           # completions of a task's running pass rate
    heldout: int = 100                    # held-out problems, evaluated greedily every TrainConfig.eval_every steps
                                          # and at the end, and by pass@k at the start and the end; 0: none
    pass_k: int = 8                       # k of the held-out pass@k (samples at `temperature`); 0: none
    max_new_tokens: int = 160
    temperature: float = 1.0              # of sampling, and of the log-probabilities in the ratio
    device: str | None = None

    def __post_init__(self):
        for name, low in (("group_size", 2), ("prompts_per_step", 1), ("mu", 1), ("max_new_tokens", 1),
                          ("few_shot", 0), ("dynamic_sampling", 0), ("curriculum_window", 1), ("heldout", 0),
                          ("pass_k", 0)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ConfigError(f"{name} {getattr(self, name)!r}: expected an int >= {low}")
        for name, ok, expected in (("beta", self.beta >= 0, ">= 0"), ("clip_eps", self.clip_eps > 0, "> 0"),
                                   ("temperature", self.temperature > 0, "> 0")):
            if not (isinstance(getattr(self, name), (int, float)) and math.isfinite(getattr(self, name)) and ok):
                raise ConfigError(f"{name} {getattr(self, name)!r}: expected a number {expected}")
        if self.loss_agg not in AGGREGATIONS:
            raise ConfigError(f"loss aggregation {self.loss_agg!r}: expected one of {AGGREGATIONS}")
        if self.adv_scale not in ADVANTAGE_SCALES:
            raise ConfigError(f"advantage scale {self.adv_scale!r}: expected one of {ADVANTAGE_SCALES}")
        high = self.clip_eps_high
        if high is not None and not (isinstance(high, (int, float)) and math.isfinite(high) and high >= self.clip_eps):
            raise ConfigError(f"clip_eps_high {high!r}: expected a number >= clip_eps ({self.clip_eps:g})")
        if self.curriculum is not None:
            band = tuple(self.curriculum)
            if len(band) != 2 or not all(isinstance(v, (int, float)) for v in band) or not 0 <= band[0] < band[1] <= 1:
                raise ConfigError(f"curriculum band {self.curriculum!r}: expected (low, high), "
                                  f"0 <= low < high <= 1")
            lo, hi = self.curriculum_levels
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 5):
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
GENERATION_FIGURES = ("prompt_tokens", "gen_tokens", "gen_tokens_per_s", "generation_s")
PROMPT_SEED = 7919  # generated RL questions come from their own stream, not the one SFT's first epoch read

# The calibrated default budget (see `nanoseek run`): a few minutes on 2 CPU cores. RL trains no MTP module (λ = 0).
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


class Rollouts:
    """The GRPO batch source (DeepSeekMath §4.1, Algorithm 1): a rollout takes the next `prompts_per_step`
    questions, samples G completions of each with the current policy (the inference engine runs the model's own
    weights, so each rollout sees the latest update), scores them, and turns rewards into group-relative
    advantages; that batch then serves μ policy updates. Groups whose rewards are all equal carry no signal and
    leave the batch; with dynamic sampling (DAPO §3.2) the groups kept are those whose answers are neither all right
    nor all wrong (the accuracy reward, as DAPO filters; a format reward alone would keep groups that teach only the
    format), and new questions are sampled in place of the others, a round of `prompts_per_step` at a time, until the
    batch has its groups or the rounds run out; a rollout left with none is a step without an update. With a
    curriculum each task's questions come at that task's current level.

    Under torchrun each rank samples its own block of the questions with a plain copy of the policy (`sampler`,
    refreshed from the sharded policy before every rollout), the completions are gathered on every rank, and each
    rank trains on its own block of the kept rows (`sharded`: the loop does not split this source's batches)."""

    def __init__(self, model: Transformer, ref: Transformer | None, tokenizer: Tokenizer, config: GRPOConfig,
                 seed: int, sampler: Transformer | None = None):
        self.model, self.ref, self.tokenizer, self.config, self.seed = model, ref, tokenizer, config, seed
        self.sampler = sampler or model  # the weights the engine samples with
        self.sharded = sampler is not None
        self.rewards = RewardSet.parse(config.rewards)
        # room for every completion of a rollout at the model's full context, so no request waits for the cache
        n = config.prompts_per_step * config.group_size
        room = cache_mb(model, n, model.config.max_position_embeddings)
        self.engine = Engine(self.sampler, EngineConfig(cache_mb=room, max_seqs=n, prefix_cache=False))
        self.params = SamplingParams(temperature=config.temperature, max_tokens=config.max_new_tokens,
                                     n=config.group_size, stop_token_ids=(tokenizer.eos_id,))
        self.file = load_problems(EvalConfig(data=config.prompts)) if config.prompts else None
        self.curriculum = None
        if config.curriculum is not None:
            start = config.difficulty if config.difficulty is not None else config.curriculum_levels[0]
            self.curriculum = Curriculum(list(TASKS), start, tuple(config.curriculum), config.curriculum_levels,
                                         config.curriculum_window)
        self.figures: dict = {}
        self.load_state_dict({"rollouts": 0, "uses": 0, "figures": {}, "batch": None})

    def _problems(self, start: int) -> Iterator[Problem]:
        if self.file is not None:
            return islice(cycle(self.file), start, None)
        return islice(stream_mix(PROMPT_SEED + self.seed, "train", self.config.difficulty), start, None)

    def _draw(self, n: int) -> list[tuple[Problem, int | None]]:
        """The next n questions and the level each was drawn at (None without a curriculum)."""
        if self.curriculum is None:
            self.questions += n
            return [(p, None) for p in islice(self.problems, n)]
        drawn = []
        for _ in range(n):  # the tasks in turn, as stream_mix has them; each task's stream at its level
            task = list(TASKS)[self.questions % len(TASKS)]
            level = self.curriculum.level[task]
            key = f"{task}/{level}"
            if key not in self.streams:
                self.streams[key] = islice(stream(task, PROMPT_SEED + self.seed, "train", level),
                                           self.drawn.get(key, 0), None)
            drawn.append((next(self.streams[key]), level))
            self.drawn[key] = self.drawn.get(key, 0) + 1
            self.questions += 1
        return drawn

    def __iter__(self) -> Rollouts:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.batch is None or self.uses == self.config.mu:
            self.batch, self.figures = self._rollout()
            self.rollouts += 1
            self.uses = 0
        self.uses += 1
        return self.batch

    def logs(self) -> dict:
        """The figures of the rollout being trained on; its generation's only with its first update."""
        if self.uses == 1:
            return self.figures
        return {k: v for k, v in self.figures.items() if k not in GENERATION_FIGURES}

    def _round(self) -> list[dict]:
        """One sampling round: prompts_per_step questions, G completions of each, scored; a dict per group."""
        c, tok = self.config, self.tokenizer
        first = self.questions
        drawn = self._draw(c.prompts_per_step)
        prompts = [prompt_ids(tok, p, few_shot_examples(p.task, c.few_shot, c.difficulty), c.template)
                   for p, _ in drawn]
        completions = self._sample_sharded(prompts, first) if self.sharded else self._sample(prompts, first)
        groups = []
        for j, (problem, level) in enumerate(drawn):
            rows, scores = [], []
            for ids in completions[j * c.group_size:(j + 1) * c.group_size]:
                finished = bool(ids) and ids[-1] == tok.eos_id
                text = tok.decode(ids[:-1] if finished else ids)
                scores.append(self.rewards.score(text, problem) | {
                    "acc": accuracy_reward(text, problem), "fmt": format_reward(text),
                    "check": float(has_self_check(text)), "fix": float(has_correction(text))})
                rows.append((prompts[j], ids, finished))
            groups.append({"problem": problem, "level": level, "rows": rows, "scores": scores,
                           "total": torch.tensor([sc["total"] for sc in scores])})
        return groups

    def _rollout(self) -> tuple[dict[str, torch.Tensor], dict]:
        c = self.config
        start = time.perf_counter()
        sampled, kept, rounds = [], [], 0
        training = self.sampler.training
        self.sampler.eval()  # one switch for the rollout, not one per engine step
        while True:
            groups = self._round()
            rounds += 1
            sampled += groups
            if c.dynamic_sampling <= 1:
                kept = [g for g in groups if not zero_variance_groups(g["total"].unsqueeze(0))[0]]
                break
            accuracy = torch.tensor([[sc["acc"] for sc in g["scores"]] for g in groups])
            kept += [groups[i] for i in groups_with_signal(accuracy, c.prompts_per_step - len(kept))]
            if len(kept) == c.prompts_per_step or rounds == c.dynamic_sampling:
                break
        self.sampler.train(training)
        generation_s = time.perf_counter() - start
        if self.curriculum is not None:
            for g in sampled:
                self.curriculum.record(g["problem"].task, g["level"], [sc["acc"] for sc in g["scores"]])
        rows = [row for g in kept for row in g["rows"]]
        advantages = (group_advantages(torch.stack([g["total"] for g in kept]), c.adv_scale).flatten() if kept
                      else torch.zeros(0))
        keep = [i for i, (_, _, finished) in enumerate(rows) if finished or not c.mask_truncated]
        if self.sharded:
            keep, ghost = distributed.block(keep)
        batch = self._tensors([rows[i] for i in keep], advantages[keep])
        if self.sharded and ghost:  # no row here, rows elsewhere: one row that only joins the collectives
            batch["ghost"] = torch.ones(len(keep))
        return batch, self._figures(sampled, kept, rounds, generation_s)

    def _figures(self, sampled: list[dict], kept: list[dict], rounds: int, generation_s: float) -> dict:
        """The rollout's figures, over every completion sampled (the policy as it is), not only the kept groups."""
        scores = [sc for g in sampled for sc in g["scores"]]
        rows = [row for g in sampled for row in g["rows"]]
        total = torch.tensor([sc["total"] for sc in scores])
        figures = {"rollout": self.rollouts + 1, "reward": total.mean().item(), "reward_std": total.std().item()}
        for name in self.rewards.weights:
            values = torch.tensor([sc[name] for sc in scores])
            figures[f"reward_{name}"], figures[f"reward_{name}_std"] = values.mean().item(), values.std().item()
        generated = sum(len(ids) for _, ids, _ in rows)
        figures.update({
            "accuracy": sum(sc["acc"] for sc in scores) / len(scores),
            "format_rate": sum(sc["fmt"] for sc in scores) / len(scores),
            "self_check": sum(sc["check"] for sc in scores) / len(scores),
            "correction": sum(sc["fix"] for sc in scores) / len(scores),
            "completion_len": generated / len(rows),
            "truncated": sum(not finished for *_, finished in rows) / len(rows),
            "zero_var_groups": sum(bool(zero_variance_groups(g["total"].unsqueeze(0))[0]) for g in sampled),
            "groups": len(kept),
            "sampling_rounds": rounds,
            "prompt_tokens": sum(len(g["rows"][0][0]) for g in sampled),
            "gen_tokens": generated,
            "gen_tokens_per_s": generated / generation_s,
            "generation_s": generation_s,
        })
        if self.curriculum is not None:
            levels = [g["level"] for g in sampled]
            figures["level_mix"] = {str(v): levels.count(v) / len(levels) for v in sorted(set(levels))}
            figures["levels"] = dict(self.curriculum.level)
            figures["pass_rate"] = {t: self.curriculum.pass_rate(t) for t in self.curriculum.level}
        if self.rewards.errors:
            figures["reward_errors"] = sum(self.rewards.errors.values())
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}

    def refresh_sampler(self) -> Transformer:
        """Under torchrun: the plain copy of the policy with the sharded policy's current weights (a collective:
        every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self.sampler.load_state_dict(get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True)))
        return self.sampler

    def _sample_sharded(self, prompts: list[list[int]], first: int) -> list[list[int]]:
        """`_sample` with this rank's block of the questions, on the policy's current weights; every rank gets
        all the completions."""
        self.refresh_sampler()
        mine, ghost = distributed.block(list(range(len(prompts))))
        completions = [] if ghost else self._sample([prompts[j] for j in mine], first + mine[0])
        return [c for part in distributed.all_gather(completions) for c in part]

    def _sample(self, prompts: list[list[int]], question: int) -> list[list[int]]:
        """G completions of each prompt, all in one engine batch: question 0's samples, then question 1's, ...
        Each question has its own seeds (one seed for all would draw every group from the same random numbers),
        fixed by its index among the run's questions (`question`: prompts[0]'s), so a resumed run samples as an
        uninterrupted one."""
        G = self.config.group_size
        first = self.seed * 100_003 * self.config.prompts_per_step + question
        ids = [self.engine.add_request(p, dataclasses.replace(self.params, seed=(first + j) * G))
               for j, p in enumerate(prompts)]
        done = {}
        for update in self.engine.stream(ids):
            if update.finish_reason is not None:
                done[update.request_id, update.index] = update.sequence.output_ids
        return [done[r, i] for r in ids for i in range(G)]

    def _tensors(self, rows: list[tuple[list[int], list[int], bool]],
                 advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prompt + completion per row, right-padded, labels only on the completion; rows sorted by length so that
        micro-batches pad little. Adds ref_logp (β > 0) and old_logp (μ > 1), computed once for the μ updates."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        T = max((len(p) + len(c) - 1 for p, c, _ in rows), default=1)
        input_ids = torch.full((len(rows), T), self.tokenizer.eos_id)
        labels = torch.full((len(rows), T), -100)
        for r, i in enumerate(order):
            prompt, completion, _ = rows[i]
            ids = torch.tensor(prompt + completion)
            input_ids[r, :len(ids) - 1] = ids[:-1]
            labels[r, len(prompt) - 1:len(ids) - 1] = ids[len(prompt):]
        batch = {"input_ids": input_ids, "labels": labels, "advantages": advantages[order].float()}
        device = next(self.model.parameters()).device
        for name, model in (("ref_logp", self.ref if self.config.beta else None),
                            ("old_logp", self.sampler if self.config.mu > 1 else None)):
            if model is not None and len(rows):
                batch[name] = self._logprobs(model, input_ids.to(device), labels.to(device))
        return batch

    @torch.no_grad()
    def _logprobs(self, model: Transformer, input_ids: torch.Tensor, labels: torch.Tensor,
                  chunk: int = 16) -> torch.Tensor:
        """`model`'s log-probabilities of the labels, (batch, T), a chunk of rows at a time."""
        was_training = model.training
        model.eval()  # no routing statistics from this forward
        out = torch.zeros(labels.shape)
        for i in range(0, len(labels), chunk):
            S, T = completion_window(labels[i:i + chunk])
            out[i:i + chunk, S:T] = token_logprobs(model, input_ids[i:i + chunk, :T], labels[i:i + chunk, S:T],
                                                   self.config.temperature, S)[0].cpu()
        model.train(was_training)
        return out

    def state_dict(self) -> dict:
        """Rollouts drawn and updates taken from the last; with μ > 1, that rollout itself (its old log-probs came
        from weights that are gone)."""
        # under torchrun each rank holds its own rows, which trainer.json (rank 0's) cannot keep: a resumed run
        # samples that rollout again
        pending = self.batch is not None and self.uses < self.config.mu and not self.sharded
        return {"rollouts": self.rollouts, "uses": self.uses, "figures": self.figures, "questions": self.questions,
                "drawn": dict(self.drawn), "curriculum": self.curriculum.state_dict() if self.curriculum else None,
                "batch": {k: v.tolist() for k, v in self.batch.items()} if pending else None}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts, self.uses = state["rollouts"], state["uses"]
        self.figures = state["figures"]
        # questions drawn so far (a run saved before dynamic sampling drew prompts_per_step a rollout)
        self.questions = state.get("questions", self.rollouts * self.config.prompts_per_step)
        self.drawn, self.streams = dict(state.get("drawn", {})), {}   # with a curriculum: by task and level
        if self.curriculum is not None and state.get("curriculum"):
            self.curriculum.load_state_dict(state["curriculum"])
        self.problems = self._problems(self.questions)
        self.batch = None
        if state["batch"] is not None:
            self.batch = {k: torch.tensor(v, dtype=torch.long if k in ("input_ids", "labels") else torch.float32)
                          for k, v in state["batch"].items()}


class Progress:
    """The progress bar's figures for a GRPO step; the last held-out accuracy stays on it between evaluations."""

    FIGURES = {"reward": "reward", "acc": "accuracy", "heldout": "heldout_accuracy", "fmt": "format_rate",
               "len": "completion_len", "check": "self_check", "fix": "correction", "kl": "kl", "ent": "entropy",
               "zv": "zero_var_groups", "gen_tok_s": "gen_tokens_per_s", "upd_tok_s": "update_tokens_per_s"}

    def __init__(self):
        self.last: dict = {}

    def __call__(self, record: dict) -> dict[str, str]:
        if record.get("heldout_accuracy") is not None:
            self.last["heldout_accuracy"] = record["heldout_accuracy"]
        record = {**self.last, **record}
        shown = {short: (f"{record[key]:.3g}" if isinstance(record[key], float) else f"{record[key]}")
                 for short, key in self.FIGURES.items() if record.get(key) is not None}
        if record.get("levels"):
            shown["lvl"] = "/".join(str(v) for v in record["levels"].values())
        return shown


def heldout_figures(tokenizer: Tokenizer, config: GRPOConfig, samples: int,
                    rollouts: Rollouts) -> Callable[[Transformer], dict]:
    """The held-out evaluation of a GRPO run: config.heldout eval-split problems at config.difficulty in the run's
    prompt, greedily (samples = 1: accuracy, format rate, length, self-check and correction shares) or by `samples`
    completions at the sampling temperature (pass@1 as the mean accuracy of the samples, pass@k). Under torchrun
    rank 0 alone evaluates, on the rollouts' plain copy of the policy (the other ranks only help gather it)."""
    problems = eval_problems(config.heldout, config.difficulty)
    settings = EvalConfig(n=config.heldout, difficulty=config.difficulty, samples=samples,
                          temperature=config.temperature if samples > 1 else 0.0, max_new_tokens=config.max_new_tokens,
                          few_shot=config.few_shot, template=config.template, batch_size=100, mtp_sequences=0,
                          seed=PROMPT_SEED)

    def figures(model: Transformer) -> dict:
        if rollouts.sharded:
            model = rollouts.refresh_sampler()
            if not distributed.is_main():
                return {}
        found = evaluate(model, tokenizer, problems, settings)
        if samples > 1:
            return {"heldout_pass@1": found["accuracy"], f"heldout_pass@{samples}": found[f"pass@{samples}"]}
        return {"heldout_accuracy": found["accuracy"], "heldout_format_rate": found["format_rate"],
                "heldout_length": found["mean_response_tokens"], "heldout_self_check": found["self_check_rate"],
                "heldout_correction": found["correction_rate"]}

    return figures


def grpo(config: GRPOConfig, train_config: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    """Train config.init by GRPO into `out`; with `resume`, continue the run in `out` with the settings saved there.
    Every input is checked before anything is written."""
    out = Path(out)
    check_out(out, resume)
    if resume:
        settings = load_run(out)
        config, train_config = from_dict(GRPOConfig, settings["grpo"]), from_dict(TrainConfig, settings["train"])
    model = initial_model(config.preset, config.init, train_config.seed, device_of(config.device))
    tokenizer = stage_tokenizer(config.init, model.config)
    # the reference is the starting policy, frozen; a resumed run loads its weights into `model` only later
    ref = copy.deepcopy(model).eval().requires_grad_(False) if config.beta else None
    train_config = dataclasses.replace(train_config, batch_size=config.prompts_per_step * config.group_size)
    sampler = copy.deepcopy(model).requires_grad_(False) if distributed.active() else None
    model = parallelize(model, expert_parallel=False)
    rollouts = Rollouts(model, ref, tokenizer, config, train_config.seed, sampler)
    greedy = heldout_figures(tokenizer, config, 1, rollouts) if config.heldout else None   # too many problems fail
    ends = heldout_figures(tokenizer, config, config.pass_k, rollouts) if config.heldout and config.pass_k > 1 else None
    if not resume:
        save_run(out, {"stage": "grpo", "grpo": dataclasses.asdict(config), "train": dataclasses.asdict(train_config)})
    result = train(model, rollouts, grpo_loss_fn(config), train_config, out, evaluate=greedy, resume=resume,
                   desc="grpo", postfix=Progress(), evaluate_ends=ends)
    if not result.interrupted:
        finish(model, tokenizer, out, "GRPO", result, {
            "policy init": config.init,
            "prompts": config.prompts or f"generated train-split problems (difficulty {config.difficulty})",
            "rewards": config.rewards,
            "rollout": f"{config.prompts_per_step} questions x G = {config.group_size} completions of up to "
                       f"{config.max_new_tokens} tokens at temperature {config.temperature:g}",
            "objective": f"clip ε {config.clip_eps:g}"
                         + (f" / {config.clip_eps_high:g}" if config.clip_eps_high is not None else "")
                         + f", β {config.beta:g}, μ {config.mu}, {config.loss_agg} "
                         f"aggregation, advantages scaled by {config.adv_scale}"
                         + (", truncated completions masked" if config.mask_truncated else "")
                         + (f", dynamic sampling ({config.dynamic_sampling} rounds at most)"
                            if config.dynamic_sampling > 1 else ""),
            "prompt": f"{config.few_shot}-shot" if config.few_shot else PROMPTS[config.template],
            **({"curriculum": f"levels {config.curriculum_levels[0]}..{config.curriculum_levels[1]}, pass-rate band "
                              f"{config.curriculum[0]:g}-{config.curriculum[1]:g} over {config.curriculum_window} "
                              f"completions"} if config.curriculum is not None else {}),
        })
    return result
