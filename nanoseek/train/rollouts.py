"""GRPO's batch source: questions drawn (by level, with a curriculum), G completions of each sampled by the inference
engine, scored by the rule-based rewards and turned into group-relative advantages (DeepSeekMath §4.1)."""
from __future__ import annotations

import dataclasses
import time
from itertools import cycle, islice
from typing import Iterator

import torch

from nanoseek import distributed
from nanoseek.cost import flops_per_token
from nanoseek.data.problem import Problem
from nanoseek.data.prompts import few_shot_examples, prompt_ids
from nanoseek.data.styles import has_correction, has_self_check
from nanoseek.data.tasks import TASKS, stream, stream_mix
from nanoseek.infer import Engine, EngineConfig, SamplingParams, cache_mb
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.curriculum import Curriculum
from nanoseek.train.evaluate import EvalConfig, load_problems
from nanoseek.train.grpo import (GRPOConfig, completion_window, group_advantages, groups_with_signal, token_logprobs,
                                 zero_variance_groups)
from nanoseek.train.rewards import RewardSet, accuracy_reward, format_reward

PROMPT_SEED = 7919  # generated RL questions come from their own stream, not the one SFT's first epoch read
# figures of a rollout's generation, logged (and counted) with its first update only
GENERATION_FIGURES = ("prompt_tokens", "gen_tokens", "gen_tokens_per_s", "generation_s", "generation_flops")


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
        prompt_tokens = sum(len(g["rows"][0][0]) for g in sampled)
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
            "prompt_tokens": prompt_tokens,
            "gen_tokens": generated,
            "generation_flops": self._generation_flops(prompt_tokens, generated, len(sampled)),
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

    def _generation_flops(self, prompt_tokens: int, generated: int, questions: int) -> float:
        """The prompts' prefill once per question, then one decode step per new token (no MTP drafting), each at the
        mean length of a question's sequences."""
        context = (prompt_tokens + generated / self.config.group_size) / questions
        return flops_per_token(self.model.config, int(context), training=False, mtp=False) * (prompt_tokens + generated)

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
