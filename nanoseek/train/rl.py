"""The RL stage (`nanoseek grpo`, R1 §2.2-2.3): GRPO updates (grpo.py) on the rollouts of the current policy
(rollouts.py), through the one training loop, with the held-out figures R1 reports (accuracy, response length,
self-checks and corrections; pass@1 and pass@k at the two ends)."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable

from nanoseek import distributed
from nanoseek.data.prompts import PROMPTS
from nanoseek.data.sources import eval_problems
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.config import TrainConfig
from nanoseek.train.evaluate import EvalConfig, evaluate
from nanoseek.train.grpo import GRPOConfig, grpo_loss_fn
from nanoseek.train.loop import TrainResult
from nanoseek.train.rollouts import PROMPT_SEED, Rollouts
from nanoseek.train.stage import Plan, Stage, device_of, initial_model, run_stage, stage_tokenizer


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


def plan(config: GRPOConfig, train_config: TrainConfig, out: Path) -> Plan:
    model = initial_model(config.preset, config.init, train_config.seed, device_of(config.device))
    tokenizer = stage_tokenizer(config.init, model.config)
    # the reference is the starting policy, frozen; a resumed run loads its weights into `model` only later
    ref = copy.deepcopy(model).eval().requires_grad_(False) if config.beta else None
    sampler = copy.deepcopy(model).requires_grad_(False) if distributed.active() else None
    rollouts = Rollouts(model, ref, tokenizer, config, train_config.seed, sampler)
    greedy = heldout_figures(tokenizer, config, 1, rollouts) if config.heldout else None
    ends = heldout_figures(tokenizer, config, config.pass_k, rollouts) if config.heldout and config.pass_k > 1 else None
    objective = (f"clip ε {config.clip_eps:g}" + (f" / {config.clip_eps_high:g}" if config.clip_eps_high is not None
                                                 else "")
                 + f", β {config.beta:g}, μ {config.mu}, {config.loss_agg} aggregation, advantages scaled by "
                 f"{config.adv_scale}" + (", truncated completions masked" if config.mask_truncated else "")
                 + (f", dynamic sampling ({config.dynamic_sampling} rounds at most)" if config.dynamic_sampling > 1
                    else ""))
    report = {
        "policy init": config.init,
        "prompts": config.prompts or f"generated train-split problems (difficulty {config.difficulty})",
        "rewards": config.rewards,
        "rollout": f"{config.prompts_per_step} questions x G = {config.group_size} completions of up to "
                   f"{config.max_new_tokens} tokens at temperature {config.temperature:g}",
        "objective": objective,
        "prompt": f"{config.few_shot}-shot" if config.few_shot else PROMPTS[config.template],
    }
    if config.curriculum is not None:
        report["curriculum"] = (f"levels {config.curriculum_levels[0]}..{config.curriculum_levels[1]}, pass-rate band "
                                f"{config.curriculum[0]:g}-{config.curriculum[1]:g} over {config.curriculum_window} "
                                f"completions")
    # a global batch is one rollout's completions; the policy is sharded without expert parallelism
    train_config = dataclasses.replace(train_config, batch_size=config.prompts_per_step * config.group_size,
                                       expert_parallel=False)
    return Plan(model, tokenizer, rollouts, grpo_loss_fn(config), evaluate=greedy, evaluate_ends=ends,
                postfix=Progress(), train=train_config, report=report,
                prompt=(config.few_shot, config.template))


GRPO = Stage("grpo", "GRPO", GRPOConfig, plan)


def grpo(config: GRPOConfig, train_config: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    """Train config.init by GRPO into `out`; with `resume`, continue the run in `out` with the settings saved there."""
    return run_stage(GRPO, config, train_config, out, resume)
