"""Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300, §4.1; used by DeepSeek-R1 §2.2.1).

For each prompt, G completions are sampled from the old policy; each completion's advantage is its reward
relative to its group, so no value network is needed. The objective per token is PPO's clipped surrogate
minus β times an unbiased estimate of KL(π_θ || π_ref):

    J = mean_i  mean_t [ min(ρ Â_i, clip(ρ, 1-ε, 1+ε) Â_i) - β KL_t ],  ρ = π_θ / π_old,
    KL_t = π_ref/π_θ - log(π_ref/π_θ) - 1.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Iterator

import torch

from nanoseek import distributed
from nanoseek.data.problem import Problem
from nanoseek.data.tasks import stream_mix
from nanoseek.errors import ConfigError
from nanoseek.infer import Engine, EngineConfig, SamplingParams, cache_mb
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.data import DIFFICULTY
from nanoseek.train.evaluate import EvalConfig, few_shot_examples, load_problems, prompt_ids
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
    few_shot: int = 0                     # worked examples before each question (a base model's prompt); 0: chat
    rewards: str = "accuracy=1,format=0.5"
    group_size: int = 8                   # G, completions per question
    prompts_per_step: int = 8             # questions per rollout
    mu: int = 1                           # μ, policy updates per rollout
    beta: float = 0.04                    # β, weight of KL(π_θ || π_ref); 0 keeps no reference model
    clip_eps: float = 0.2                 # ε of the clipped ratio
    loss_agg: str = "sequence"            # "sequence" (DeepSeekMath Eq. 3) or "token" (DAPO, Dr. GRPO)
    adv_scale: str = "std"                # "std" (Â = (r - mean) / std) or "none" (Dr. GRPO: r - mean)
    mask_truncated: bool = False          # completions cut at max_new_tokens take no loss (DAPO's overlong filter)
    max_new_tokens: int = 160
    temperature: float = 1.0              # of sampling, and of the log-probabilities in the ratio
    device: str | None = None

    def __post_init__(self):
        for name, low in (("group_size", 2), ("prompts_per_step", 1), ("mu", 1), ("max_new_tokens", 1),
                          ("few_shot", 0)):
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
                                config.loss_agg)
        stats["entropy"] = aggregate(entropy, mask, "token").item()
        count = int(mask.sum()) if config.loss_agg == "token" else mask.shape[0]
        return StepLoss(loss, count, stats)

    return loss_fn


class Rollouts:
    """The GRPO batch source (DeepSeekMath §4.1, Algorithm 1): a rollout takes the next `prompts_per_step`
    questions, samples G completions of each with the current policy (the inference engine runs the model's own
    weights, so each rollout sees the latest update), scores them, and turns rewards into group-relative
    advantages; that batch then serves μ policy updates. Groups whose rewards are all equal carry no signal and
    leave the batch; a rollout left with none is a step without an update.

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
        self.engine = Engine(self.sampler, EngineConfig(cache_mb=cache_mb(model, n, model.config.max_position_embeddings),
                                                        max_seqs=n, prefix_cache=False))
        self.params = SamplingParams(temperature=config.temperature, max_tokens=config.max_new_tokens,
                                     n=config.group_size, stop_token_ids=(tokenizer.eos_id,))
        self.file = load_problems(EvalConfig(data=config.prompts)) if config.prompts else None
        self.figures: dict = {}
        self.load_state_dict({"rollouts": 0, "uses": 0, "figures": {}, "batch": None})

    def _problems(self, start: int) -> Iterator[Problem]:
        if self.file is not None:
            return islice(cycle(self.file), start, None)
        return islice(stream_mix(PROMPT_SEED + self.seed, "train", self.config.difficulty), start, None)

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

    def _rollout(self) -> tuple[dict[str, torch.Tensor], dict]:
        c, tok = self.config, self.tokenizer
        problems = list(islice(self.problems, c.prompts_per_step))
        prompts = [prompt_ids(tok, p, few_shot_examples(p.task, c.few_shot, c.difficulty)) for p in problems]
        start = time.perf_counter()
        if self.sharded:
            completions = self._sample_sharded(prompts)
        else:
            completions = self._sample(prompts)
        generation_s = time.perf_counter() - start
        rows, scores = [], []
        for j, ids in enumerate(completions):
            problem = problems[j // c.group_size]
            finished = bool(ids) and ids[-1] == tok.eos_id
            text = tok.decode(ids[:-1] if finished else ids)
            scores.append(self.rewards.score(text, problem) | {"acc": accuracy_reward(text, problem),
                                                                "fmt": format_reward(text)})
            rows.append((prompts[j // c.group_size], ids, finished))
        total = torch.tensor([s["total"] for s in scores]).view(c.prompts_per_step, c.group_size)
        advantages = group_advantages(total, c.adv_scale).flatten()
        flat = zero_variance_groups(total).repeat_interleave(c.group_size)
        keep = [i for i, (_, _, finished) in enumerate(rows)
                if not flat[i] and (finished or not c.mask_truncated)]
        if self.sharded:
            keep, ghost = distributed.block(keep)
        batch = self._tensors([rows[i] for i in keep], advantages[keep])
        if self.sharded and ghost:  # no row here, rows elsewhere: one row that only joins the collectives
            batch["ghost"] = torch.ones(len(keep))
        figures = {"rollout": self.rollouts + 1, "reward": total.mean().item(), "reward_std": total.std().item()}
        for name in self.rewards.weights:
            values = torch.tensor([s[name] for s in scores])
            figures[f"reward_{name}"], figures[f"reward_{name}_std"] = values.mean().item(), values.std().item()
        generated = sum(len(ids) for ids in completions)
        figures.update({
            "accuracy": sum(s["acc"] for s in scores) / len(scores),
            "format_rate": sum(s["fmt"] for s in scores) / len(scores),
            "completion_len": generated / len(completions),
            "truncated": sum(not finished for *_, finished in rows) / len(rows),
            "zero_var_groups": int(zero_variance_groups(total).sum()),
            "groups": c.prompts_per_step,
            "prompt_tokens": sum(map(len, prompts)),
            "gen_tokens": generated,
            "gen_tokens_per_s": generated / generation_s,
            "generation_s": generation_s,
        })
        if self.rewards.errors:
            figures["reward_errors"] = sum(self.rewards.errors.values())
        return batch, {k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}

    def _sample_sharded(self, prompts: list[list[int]]) -> list[list[int]]:
        """`_sample` with this rank's block of the questions, on the policy's current weights; every rank gets
        all the completions."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        self.sampler.load_state_dict(full)
        mine, ghost = distributed.block(list(range(len(prompts))))
        completions = [] if ghost else self._sample([prompts[j] for j in mine], offset=mine[0])
        return [c for part in distributed.all_gather(completions) for c in part]

    def _sample(self, prompts: list[list[int]], offset: int = 0) -> list[list[int]]:
        """G completions of each prompt, all in one engine batch: question 0's samples, then question 1's, ...
        Each question has its own seeds (one seed for all would draw every group from the same random numbers),
        fixed by the rollout's index, so a resumed run samples as an uninterrupted one. `offset`: the index of
        prompts[0] among the rollout's questions."""
        G = self.config.group_size
        first = (self.seed * 100_003 + self.rollouts) * self.config.prompts_per_step + offset
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
        return {"rollouts": self.rollouts, "uses": self.uses, "figures": self.figures,
                "batch": {k: v.tolist() for k, v in self.batch.items()} if pending else None}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts, self.uses = state["rollouts"], state["uses"]
        self.figures = state["figures"]
        self.problems = self._problems(self.rollouts * self.config.prompts_per_step)
        self.batch = None
        if state["batch"] is not None:
            self.batch = {k: torch.tensor(v, dtype=torch.long if k in ("input_ids", "labels") else torch.float32)
                          for k, v in state["batch"].items()}


def progress(record: dict) -> dict[str, str]:
    """The progress bar's figures for a GRPO step."""
    figures = {"reward": "reward", "acc": "accuracy", "fmt": "format_rate", "len": "completion_len", "kl": "kl",
               "ent": "entropy", "zv": "zero_var_groups", "gen_tok_s": "gen_tokens_per_s",
               "upd_tok_s": "update_tokens_per_s"}
    return {short: (f"{record[key]:.3g}" if isinstance(record[key], float) else f"{record[key]}")
            for short, key in figures.items() if record.get(key) is not None}


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
    if not resume:
        save_run(out, {"stage": "grpo", "grpo": dataclasses.asdict(config), "train": dataclasses.asdict(train_config)})
    result = train(model, rollouts, grpo_loss_fn(config), train_config, out, resume=resume, desc="grpo",
                   postfix=progress)
    if not result.interrupted:
        finish(model, tokenizer, out, "GRPO", result, {
            "policy init": config.init,
            "prompts": config.prompts or f"generated train-split problems (difficulty {config.difficulty})",
            "rewards": config.rewards,
            "rollout": f"{config.prompts_per_step} questions x G = {config.group_size} completions of up to "
                       f"{config.max_new_tokens} tokens at temperature {config.temperature:g}",
            "objective": f"clip ε {config.clip_eps:g}, β {config.beta:g}, μ {config.mu}, {config.loss_agg} "
                         f"aggregation, advantages scaled by {config.adv_scale}"
                         + (", truncated completions masked" if config.mask_truncated else ""),
        })
    return result
