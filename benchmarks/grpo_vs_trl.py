"""Time per GRPO step: nanoseek's `grpo` stage against TRL's `GRPOTrainer`, on this CPU, same work.

Same for both: the model (a nanoseek checkpoint, exported in Hugging Face's DeepseekV3 format for TRL), the prompts
(the chat template over the same train-split problems, in the same order, 8 per step), the reward
(`RewardSet.parse("accuracy=1,format=0.5")` on the decoded completion, special tokens kept), group size G = 8, at
most 64 new tokens at temperature 1, β = 0.04 (both keep a reference model), μ = 1, ε = 0.2, the per-sequence loss
of DeepSeekMath (TRL: loss_type="grpo"), advantages scaled by the group's std, learning rate 2e-4, float32, torch's
threads. After one warm-up step, each side runs `--steps` steps per round; rounds alternate the two so both see
the same machine load, and the median step is reported (nanoseek's steps that took no update left out).

Split: "generation" is sampling the 64 completions (nanoseek: the engine's batch; TRL: its `_generate`, HF
generate); "update" is everything else in the step: scoring, the reference model's log-probabilities, forward,
backward and the optimizer.

Usage: python benchmarks/grpo_vs_trl.py [--init CHECKPOINT] [--steps 3] [--rounds 2]
(`pip install trl`, the `dev` extra, provides the reference). Give --init a trained model such as runs/r1/sft: the
default, a fresh tiny model, earns no reward, and nanoseek skips the update of a step whose groups all scored the
same (TRL does not), so the table then compares generation alone; the script warns when that happened.

Measured on 2 AMD EPYC cores (torch 2.13, transformers 5.24, TRL 1.16) with `nanoseek run`'s SFT model: nanoseek
1.08 s a step (generation 0.54, update 0.55), TRL 2.30 s (1.23, 1.06): 2.1x.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

from nanoseek.threads import spin_briefly  # noqa: E402  (no torch import)

spin_briefly()  # as the nanoseek command does, before torch loads

import torch  # noqa: E402

from nanoseek.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from nanoseek.config import ModelConfig  # noqa: E402
from nanoseek.data.problem import Problem  # noqa: E402
from nanoseek.data.tasks import stream_mix  # noqa: E402
from nanoseek.model import Transformer  # noqa: E402
from nanoseek.tokenizer import Tokenizer  # noqa: E402
from nanoseek.data.sources import DIFFICULTY  # noqa: E402
from nanoseek.train.default_tokenizer import default_tokenizer  # noqa: E402
from nanoseek.data.prompts import prompt_ids  # noqa: E402
from nanoseek.train.grpo import DEFAULT_TRAIN, GRPOConfig  # noqa: E402
from nanoseek.train.rl import grpo  # noqa: E402
from nanoseek.train.rollouts import PROMPT_SEED  # noqa: E402
from nanoseek.train.metrics import read_metrics  # noqa: E402
from nanoseek.train.rewards import RewardSet  # noqa: E402

G, QUESTIONS, NEW_TOKENS, REWARDS, BETA, LR = 8, 8, 64, "accuracy=1,format=0.5", 0.04, 2e-4


def checkpoint(init: str | None, folder: Path) -> Path:
    """The model both sides train, in our layout (`nanoseek`) and in Hugging Face's (`hf`), tokenizer beside."""
    torch.manual_seed(0)
    model = load_checkpoint(init) if init else Transformer(ModelConfig.from_preset("tiny"))
    tokenizer = Tokenizer.from_dir(init) if init and (Path(init) / "tokenizer.json").is_file() else default_tokenizer()
    for name, fmt in (("nanoseek", "nanoseek"), ("hf", "hf")):
        save_checkpoint(model, folder / name, format=fmt)
        tokenizer.save(folder / name)
    return folder


def ours(folder: Path, steps: int, seed: int) -> list[dict]:
    """`steps` + 1 GRPO steps of the nanoseek stage; per step: seconds, generation seconds, completion length."""
    out = folder / f"nanoseek-run-{seed}"
    config = GRPOConfig(init=str(folder / "nanoseek"), rewards=REWARDS, group_size=G, prompts_per_step=QUESTIONS,
                        max_new_tokens=NEW_TOKENS, beta=BETA, heldout=0)  # TRL evaluates nothing either
    train = dataclasses.replace(DEFAULT_TRAIN, max_steps=steps + 1, lr=LR, warmup_steps=0, save_every=10_000,
                                seed=seed)
    grpo(config, train, out)
    records = read_metrics(out / "metrics.jsonl")
    times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(records, records[1:])]
    return [{"step_s": t, "generation_s": r["generation_s"], "length": r["completion_len"],
             "no_update": r["zero_var_groups"] == r["groups"]} for t, r in zip(times, records[1:])]


def trl_run(folder: Path, steps: int, seed: int) -> list[dict]:
    """The same with TRL's GRPOTrainer: step time from its callbacks, generation time around `_generate`."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig as TRLConfig, GRPOTrainer

    tokenizer = Tokenizer.from_dir(folder / "nanoseek")
    rewards = RewardSet.parse(REWARDS)
    problems = list(islice(stream_mix(PROMPT_SEED + seed, "train", DIFFICULTY), QUESTIONS * (steps + 1)))
    rows = [{"prompt": [{"role": "user", "content": p.prompt}], "task": p.task, "answer": p.answer,
             "numbers": list(p.numbers), "target": p.target} for p in problems]

    def reward(prompts, completions, completion_ids, task, answer, numbers, target, **_):
        texts = [tokenizer.decode(ids[:-1] if ids and ids[-1] == tokenizer.eos_id else ids) for ids in completion_ids]
        return [rewards.score(text, Problem(task=t, prompt="", reasoning="", answer=a, numbers=tuple(n), target=g))
                ["total"] for text, t, a, n, g in zip(texts, task, answer, numbers, target)]

    args = TRLConfig(output_dir=str(folder / f"trl-run-{seed}"), per_device_train_batch_size=G * QUESTIONS,
                     gradient_accumulation_steps=1, num_generations=G, max_completion_length=NEW_TOKENS,
                     temperature=1.0, top_p=1.0, top_k=0, beta=BETA, num_iterations=1, epsilon=0.2, loss_type="grpo",
                     scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0,
                     max_steps=steps + 1, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                     bf16=False, shuffle_dataset=False, seed=seed, dataloader_pin_memory=False,
                     model_init_kwargs={"dtype": torch.float32})
    trainer = GRPOTrainer(model=str(folder / "hf"), reward_funcs=[reward], args=args,
                          train_dataset=Dataset.from_list(rows),
                          processing_class=AutoTokenizer.from_pretrained(folder / "hf"))
    timings: list[dict] = []
    generate, tokenize = trainer._generate, trainer._tokenize_prompts

    def timed_generate(*a, **k):
        start = time.perf_counter()
        out = generate(*a, **k)
        timings[-1]["generation_s"] += time.perf_counter() - start
        return out

    def checked_tokenize(prompts):
        ids, *rest = tokenize(prompts)
        expected = prompt_ids(tokenizer, Problem("", prompts[0][0]["content"], "", ""), [])
        assert list(ids[0]) == expected, "TRL's prompt tokens differ from nanoseek's"
        return (ids, *rest)

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            timings.append({"start": time.perf_counter(), "generation_s": 0.0})

        def on_step_end(self, *_, **__):
            timings[-1]["step_s"] = time.perf_counter() - timings[-1].pop("start")

    trainer._generate, trainer._tokenize_prompts = timed_generate, checked_tokenize
    trainer.add_callback(Clock())
    trainer.train()
    lengths = [r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r]
    return [t | {"length": n} for t, n in zip(timings[1:], lengths[1:])]


def median(steps: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", default=None, help="a nanoseek checkpoint (default: the tiny preset, fresh)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per round, after one warm-up")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import transformers
    import trl

    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoint(args.init, Path(tmp))
        results = {"nanoseek": [], "trl": []}
        for r in range(args.rounds):
            results["nanoseek"] += ours(folder, args.steps, seed=r)
            results["trl"] += trl_run(folder, args.steps, seed=r)
    print(f"GRPO step, {QUESTIONS} questions x G = {G}, <= {NEW_TOKENS} new tokens, beta {BETA}, float32, "
          f"{torch.get_num_threads()} threads on {platform.processor() or platform.machine()} "
          f"({os.cpu_count()} cores); torch {torch.__version__}, transformers {transformers.__version__}, "
          f"trl {trl.__version__}; median of {args.rounds} x {args.steps} steps")
    print(f"{'':<10}{'step (s)':>10}{'generation (s)':>16}{'update (s)':>12}{'mean length':>13}")
    rows = {}
    for name, steps in results.items():
        # like for like: TRL takes its passes whatever the advantages, so nanoseek's steps that took no update (every
        # group's rewards equal) are left out of its medians
        steps = [s for s in steps if not s.get("no_update")] or steps
        results[name] = steps
        step, gen = median(steps, "step_s"), median(steps, "generation_s")
        rows[name] = step
        print(f"{name:<10}{step:>10.2f}{gen:>16.2f}{step - gen:>12.2f}{median(steps, 'length'):>13.1f}")
    print(f"speed-up: {rows['trl'] / rows['nanoseek']:.1f}x per step")
    skipped = args.rounds * args.steps - len(results["nanoseek"])
    if skipped:
        print(f"{skipped} of nanoseek's {args.rounds * args.steps} steps took no update (every group's rewards equal) "
              f"and are left out of its medians; with a fresh model most are: pass --init with a trained checkpoint "
              f"(e.g. runs/r1/sft)")
    print(json.dumps({k: {"step_s": median(v, "step_s"), "generation_s": median(v, "generation_s")}
                      for k, v in results.items()}))


if __name__ == "__main__":
    main()
