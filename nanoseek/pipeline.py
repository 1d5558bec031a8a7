"""`nanoseek run`: the DeepSeek-R1 recipe (arXiv 2501.12948) end to end, in miniature, on the built-in data.

    pretrain ──> r1-zero        GRPO straight from the base (§2.2), a branch kept for comparison
        └──────> sft            cold start on worked reasoning traces (§2.3.1)
                 └─> grpo       reasoning RL, with the language-consistency reward (§2.3.2)
                     └─> rejection-sft   rejection sampling from grpo, then SFT on what was kept (§2.3.3)
                         └─> grpo-final  a last RL stage (§2.3.4)
                             ├─> distill         pretrain-student fine-tuned on its verified answers (§2.4)
                             └─> quantize-int8, quantize-int4   its weights, int8 and int4 (`nanoseek quantize`)
    pretrain-student    the dense student's base, pretrained like the teacher on the same mix

Every stage writes a checkpoint folder OUT/<stage>/ (loads in the engine, the server and the HF export) and is then
evaluated on the same held-out problems, greedily. OUT/report.md (a table, the plots) and OUT/report.json gather the
results. OUT/<stage>/stage.json marks a stage done, so running the command again skips what is finished and
resumes a stage that was interrupted. The stages are a list.

Departures from the paper: R1 §2.3.3 fine-tunes the base model again on the rejection-sampled data; at this scale
and budget we continue from the RL checkpoint (rejection-sampling fine-tuning), which the final RL stage then
refines. The reasoning RL stages drop GRPO's KL term, std scaling and length normalisation (Dr. GRPO), which
learned faster here (see `recipe`); R1-Zero adds DAPO's clip-higher, dynamic sampling and overlong filtering and a
curriculum over the tasks' levels. Rejection sampling keeps the questions at the edge of the policy's competence
(greedy answer wrong, a sample right) and replays cold-start data beside them.

Every RL stage measures R1's phenomena on held-out problems as it trains (accuracy, response length, the shares of
self-checks and corrections, pass@1 and pass@8 at its start and end); report.md shows R1-Zero's curves (R1 Fig. 2 and
Fig. 3) and compares the RL stages on the same problems (R1 Table 2).
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from nanoseek.atomic import write_atomic
from nanoseek.checkpoint import load_checkpoint, save_checkpoint, save_quantized
from nanoseek.config import ModelConfig
from nanoseek.cost import flops_per_token, measure_matmul_peak
from nanoseek.data.tasks import generate_mix, save_jsonl
from nanoseek.errors import ConfigError
from nanoseek.gptq import CALIBRATION_PROBLEMS, calibration_sequences, hessians
from nanoseek.out_folder import check_writable
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.data import DIFFICULTY, eval_problems
from nanoseek.train.distill import (DEFAULT_TRAIN as DISTILL_TRAIN, TRACES, DistillConfig, distill, student_model,
                                    teacher_traces)
from nanoseek.train.evaluate import EvalConfig, evaluate
from nanoseek.train.grpo import DEFAULT_TRAIN as GRPO_TRAIN, GRPOConfig, grpo
from nanoseek.train.loop import TrainConfig, TrainResult
from nanoseek.train.metrics import METRICS, read_metrics
from nanoseek.train.plot import plot_run
from nanoseek.train.pretrain import DEFAULT_TRAIN as PRETRAIN_TRAIN, PretrainConfig, pretrain
from nanoseek.train.rejection import RejectionConfig, rejected, rejection_sample
from nanoseek.train.sft import DEFAULT_TRAIN as SFT_TRAIN, SFTConfig, sft
from nanoseek.train.stage import device_of
from nanoseek.train.state import TRAINER, checkpoint_dirs, latest_checkpoint

STAGE = "stage.json"      # a stage's record: written last, so its presence means the stage is done
TRAINED = "trained.json"  # a stage's training figures, written before its evaluation
REJECTION_SEED = 31337    # rejection sampling's questions: train-split problems none of the other stages drew
REPLAY_SEED = 27183       # the replayed cold-start problems of rejection-sft


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str                       # "pretrain", "sft", "grpo", "rejection-sft", "distill" or "quantize"
    init: str | None                # the stage whose checkpoint this one starts from
    settings: object                # the stage's config (PretrainConfig, SFTConfig, GRPOConfig, RejectionSFT,
                                    # DistillConfig) or, to quantize, the format
    train: TrainConfig | None       # None: a stage that does not train (quantize)
    few_shot: int = 0               # the evaluation prompt, the one the stage was trained with: worked examples,
    template: str = "chat"          # or without them "chat" or "r1-zero"
    about: str = ""


@dataclass(frozen=True)
class RejectionSFT:
    """The rejection-sft stage's settings: how many train-split questions to sample, at which levels (in turn), how
    (sampling.edge: only questions at the edge of competence), the replay of cold-start data (worked problems at the
    pipeline's level, `replay` rows per kept row, shuffled in) and the SFT after."""
    questions: int
    sampling: RejectionConfig
    sft: SFTConfig
    levels: tuple[int, ...] = (DIFFICULTY,)
    replay: float = 0.0


@dataclass(frozen=True)
class Recipe:
    stages: tuple[Stage, ...]
    eval_problems: int = 200        # held-out problems, the same for every stage
    eval_max_new_tokens: int = 192  # the worked traces take up to ~120 tokens


def recipe(size: str = "default") -> Recipe:
    """The stages and budgets of `nanoseek run` ("default", "quick" or the CI's "smoke")."""
    if size not in RECIPE_SIZES:
        raise ConfigError(f"recipe {size!r}: expected one of {RECIPE_SIZES}")
    # The base pretrains longer than `nanoseek pretrain`'s default, on twice its share of worked problems: R1-Zero
    # amplifies only what the base can already do, and a base of 420 steps on 30% had not learned the tasks
    # (docs/recipe.md). The SFT budget is `nanoseek sft`'s.
    steps = {"default": dict(pretrain=1000, sft=SFT_TRAIN.max_steps, zero=100, grpo=234, rft=40,
                             final=30, questions=384, evals=200),
             "quick": dict(pretrain=90, sft=60, zero=8, grpo=16, rft=12, final=8, questions=96, evals=100),
             "smoke": dict(pretrain=2, sft=2, zero=2, grpo=2, rft=2, final=2, questions=4, evals=4)}[size]
    smoke = size == "smoke"
    worked = 0.6  # worked problems' share of the pretraining text (data/mix.py's default: 0.3)
    grpo_base = GRPOConfig(prompts_per_step=2, group_size=4, max_new_tokens=16) if smoke else GRPOConfig()
    short = dict(batch_size=4, save_every=1) if smoke else {}

    def budget(base: TrainConfig, steps: int, **changes) -> TrainConfig:
        changes = {"max_steps": steps, "warmup_steps": min(base.warmup_steps, steps // 5),
                   "save_every": max(1, steps // 2), **changes, **short}
        return dataclasses.replace(base, **changes)

    def rl_budget(steps: int, **changes) -> TrainConfig:
        return budget(GRPO_TRAIN, steps, eval_every=max(1, steps // 10), **changes)

    rl_rewards = "accuracy=1,format=0.5,language=0.1"
    # every RL stage measures itself on the held-out problems: greedily every tenth of its steps, pass@k at its ends
    heldout = {"default": dict(heldout=100, pass_k=8), "quick": dict(heldout=40, pass_k=4),
               "smoke": dict(heldout=4, pass_k=2)}[size]
    grpo_base = dataclasses.replace(grpo_base, **heldout)
    # Reasoning RL: 16 questions per step (twice GRPOConfig's 8: more groups with a signal per update), the routing
    # bias left where SFT put it (γ = 0), so expert selection moves only by the reward's gradient, and GRPO without
    # its two biases (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783): advantages r - mean without the std, and no
    # per-completion length normalisation (the loss averaged over all the batch's tokens, as DAPO does); no KL term
    # (β = 0, as both). Measured from the default SFT model (39.1% on the 440 held-out problems), 104 steps:
    # DeepSeekMath's settings (β 0.04, per sequence, std) +2.0 and +4.3 (two seeds), Dr. GRPO +3.6 and +5.4 (two
    # CPUs), accuracy reward alone +5.2, lr 5e-5 +4.1; at lr 3e-4 every objective lost 5-8 points and at 1e-3
    # collapsed to 2% (short, well-formed, wrong answers). Dr. GRPO for longer: 208 steps +5.4, 312 +7.3, 416 +10.2,
    # 520 +10.4 (rollout accuracy 32% -> 46%), at 1.2-1.6 s a step on 2 AMD EPYC cores. From the stronger SFT model
    # of the 1,000-step base (64.5% on 200), held-out accuracy on 100 rose 68% -> 74-76% by step 138-230 and no
    # further by 468 (73%): 234 steps.
    reasoning_rl = dataclasses.replace(grpo_base, rewards=rl_rewards, prompts_per_step=2 if smoke else 16, beta=0.0,
                                       loss_agg="token", adv_scale="none")
    # R1-Zero (R1 §2.2): from the base, R1's plain-text template, accuracy and format rewards only, with what the
    # follow-ups found works: Dr. GRPO's objective (no std, token-level mean), no KL, DAPO's clip-higher (ε 0.2 /
    # 0.28, §3.1), dynamic sampling (§3.2) and overlong filtering (§3.4), and questions at the edge of competence
    # (each task's level moved to keep its pass rate in 10-90%, arXiv 2512.07783).
    zero_rl = dataclasses.replace(grpo_base, template="r1-zero", beta=0.0, loss_agg="token", adv_scale="none",
                                  clip_eps_high=0.28, dynamic_sampling=4, mask_truncated=True, curriculum=(0.1, 0.9))
    # the final RL stage trains where the policy's competence now ends: the same curriculum, from level 1
    final_rl = dataclasses.replace(reasoning_rl, curriculum=(0.1, 0.9))
    # R1 §2.4 distils into pretrained bases (Qwen2.5, Llama 3), so the student is first pretrained like the teacher,
    # on the same mix for as many steps. The teacher answers these train-split questions 4 times each, and the
    # student takes these SFT steps on the verified answers (distill.DEFAULT_TRAIN's). Measured with a 37.0% teacher,
    # 400 steps at lr 3e-3 (the default is now 6e-3, which takes the student further in as many steps): a fresh student
    # on 522 answers (of 1024 questions) reached 7.5%, the pretrained one 18.0%; on 1000 answers 26.0% (500 steps),
    # on 1930 (of 4096 questions) 38.0% (17.0% after 200 steps, 43.5% after 600). One answer to each of 4096
    # questions kept 1034, but the student learned less from 1813 such answers (28.0%) than from 1930 of four each.
    student = {"default": dict(questions=4096, steps=DISTILL_TRAIN.max_steps), "quick": dict(questions=256, steps=60),
               "smoke": dict(questions=4, steps=2)}[size]
    stages = (
        Stage("pretrain", "pretrain", None, PretrainConfig(seq_len=64 if smoke else 256, synthetic_fraction=worked),
              budget(PRETRAIN_TRAIN, steps["pretrain"]), few_shot=1,
              about="next-token + MTP pretraining on text and worked problems"),
        Stage("r1-zero", "grpo", "pretrain", zero_rl, rl_budget(steps["zero"]), template="r1-zero",
              about="GRPO from the base, R1's plain-text template; accuracy + format rewards"),
        Stage("sft", "sft", "pretrain", SFTConfig(seq_len=64 if smoke else 256), budget(SFT_TRAIN, steps["sft"]),
              about="cold start on worked reasoning traces"),
        Stage("grpo", "grpo", "sft", reasoning_rl, rl_budget(steps["grpo"], bias_update_speed=0.0),
              about="reasoning RL; accuracy + format + language-consistency rewards"),
        # expert iteration at the edge of competence (STaR, ReST): questions of levels 1-5 whose greedy answer is
        # wrong but some of 4 samples right, the verified samples kept, replayed with as much cold-start data; a
        # low learning rate, as few samples are kept (docs/recipe.md)
        Stage("rejection-sft", "rejection-sft", "grpo",
              RejectionSFT(steps["questions"], RejectionConfig(checkpoint="", prompts="", k=4, seed=REJECTION_SEED,
                                                               max_new_tokens=16 if smoke else 192, edge=True),
                           SFTConfig(seq_len=64 if smoke else 512), levels=(1, 2, 3, 4, 5), replay=1.0),
              budget(SFT_TRAIN, steps["rft"], lr=1e-4),
              about=f"rejection sampling of {steps['questions']} questions x 4 at levels 1-5, the edge of "
                    f"competence kept, then SFT on it with a replay of cold-start data"),
        Stage("grpo-final", "grpo", "rejection-sft", final_rl, rl_budget(steps["final"], bias_update_speed=0.0),
              about="the last RL stage, its levels moved by the curriculum"),
        Stage("pretrain-student", "pretrain", None, PretrainConfig(preset="tiny-student", seq_len=64 if smoke else 256,
                                                                     synthetic_fraction=worked),
              budget(PRETRAIN_TRAIN, steps["pretrain"]), few_shot=1,
              about="the dense student's own base: next-token pretraining on the same text and worked problems"),
        Stage("distill", "distill", "grpo-final",
              DistillConfig(student="pretrain-student", prompts=student["questions"],
                            max_new_tokens=16 if smoke else 192, seq_len=64 if smoke else 512),
              budget(DISTILL_TRAIN, student["steps"]),
              about=f"pretrain-student fine-tuned on grpo-final's verified answers to {student['questions']} "
                    f"questions x 4"),
        Stage("quantize-int8", "quantize", "grpo-final", "int8", None, about="grpo-final's weights in int8"),
        Stage("quantize-int4", "quantize", "grpo-final", "int4", None, about="grpo-final's weights in int4"),
    )
    return Recipe(stages, eval_problems=steps["evals"], eval_max_new_tokens=16 if smoke else 192)


RECIPE_SIZES = ("default", "quick", "smoke")


@dataclass
class Context:
    out: Path
    recipe: Recipe
    peak: float                     # the device's measured float32 matmul FLOP/s, the MFU's denominator
    device: str                     # which device: "this CPU" or the GPU's name
    records: dict[str, dict] = field(default_factory=dict)


def run(out: str | Path, size: str = "default") -> list[dict]:
    """Run (or finish) the recipe into `out`; returns the stage records also written to OUT/report.json."""
    out = Path(out)
    plan = recipe(size)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder")
    check_writable(out.resolve())
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "recipe.json"
    if saved.exists() and json.loads(saved.read_text())["size"] != size:
        raise ConfigError(f"{out} holds a {json.loads(saved.read_text())['size']!r} run; finish it with the same "
                          f"setting or choose another --out")
    write_atomic(saved, json.dumps({"size": size}) + "\n")
    device = device_of(None)  # where every stage trains
    ctx = Context(out, plan, measure_matmul_peak(device=device),
                  torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU")
    for stage in plan.stages:
        ctx.records[stage.name] = run_stage(ctx, stage)
        write_report(ctx)
    return [ctx.records[s.name] for s in plan.stages]


def run_stage(ctx: Context, stage: Stage) -> dict:
    """A stage's record: read back when the stage is done, else trained (or resumed), evaluated and saved."""
    folder = ctx.out / stage.name
    if (folder / STAGE).is_file():
        print(f"== {stage.name}: done already ({folder / STAGE})", flush=True)
        return json.loads((folder / STAGE).read_text())
    if (folder / TRAINED).is_file():
        trained = json.loads((folder / TRAINED).read_text())
    else:
        print(f"== {stage.name}: {stage.about}", flush=True)
        trained = KINDS[stage.kind](ctx, stage, folder)
        write_atomic(folder / TRAINED, json.dumps(trained, indent=1) + "\n")
    print(f"== {stage.name}: evaluating on {ctx.recipe.eval_problems} held-out problems", flush=True)
    start = time.perf_counter()
    model = load_checkpoint(folder)
    figures = evaluate(model, Tokenizer.from_dir(folder), eval_problems(ctx.recipe.eval_problems),
                       EvalConfig(n=ctx.recipe.eval_problems, max_new_tokens=ctx.recipe.eval_max_new_tokens,
                                  few_shot=stage.few_shot, template=stage.template, batch_size=100, mtp_sequences=0))
    if (folder / METRICS).is_file():
        plot_run(folder)
    flops = trained["flops"]
    record = {"name": stage.name, "init": stage.init, "accuracy": figures["accuracy"],
              "format_rate": figures["format_rate"], "mean_length": figures["mean_response_tokens"],
              "self_check_rate": figures["self_check_rate"], "correction_rate": figures["correction_rate"],
              "accuracy_by_task": figures["accuracy_by_task"], "eval_prompt": figures["prompt"],
              "seconds": trained["seconds"], "eval_seconds": time.perf_counter() - start,
              "tokens": trained["tokens"], "generated_tokens": trained.get("generated_tokens", 0), "flops": flops,
              "mfu": flops / trained["seconds"] / ctx.peak, "device_hours": trained["seconds"] / 3600,
              "checkpoint": str(folder), **{k: v for k, v in trained.items() if k not in RECORD_KEYS}}
    write_atomic(folder / STAGE, json.dumps(record, indent=1) + "\n")
    print(f"== {stage.name}: accuracy {record['accuracy']:.1%}, format rate {record['format_rate']:.1%}, "
          f"{record['seconds'] / 60:.1f} min", flush=True)
    return record


RECORD_KEYS = ("seconds", "tokens", "generated_tokens", "flops")


def _train_stage(ctx: Context, stage: Stage, folder: Path, run_fn: Callable, settings) -> dict:
    """Run a training stage into `folder`, resuming it when an earlier session left a checkpoint there."""
    resume = (folder / "run.json").is_file() and bool(checkpoint_dirs(folder))
    earlier = json.loads((latest_checkpoint(folder) / TRAINER).read_text())["elapsed_s"] if resume else 0.0
    if folder.exists() and not resume:
        shutil.rmtree(folder)  # an attempt that died before its first checkpoint: start it again
    start = time.perf_counter()
    result: TrainResult = run_fn(settings, stage.train, folder, resume=resume)
    if result.interrupted:
        raise KeyboardInterrupt
    seconds = time.perf_counter() - start + earlier
    return {"seconds": seconds, "tokens": result.tokens, "flops": result.flops, "steps": result.step}


def _init(ctx: Context, stage: Stage) -> str:
    return str(ctx.out / stage.init)


def run_pretrain(ctx: Context, stage: Stage, folder: Path) -> dict:
    return _train_stage(ctx, stage, folder, pretrain, stage.settings)


def run_sft(ctx: Context, stage: Stage, folder: Path) -> dict:
    return _train_stage(ctx, stage, folder, sft, dataclasses.replace(stage.settings, init=_init(ctx, stage)))


def run_grpo(ctx: Context, stage: Stage, folder: Path) -> dict:
    trained = _train_stage(ctx, stage, folder, grpo, dataclasses.replace(stage.settings, init=_init(ctx, stage)))
    rollouts = [r for r in read_metrics(folder / METRICS) if "reward" in r and "gen_tokens" in r]
    config = load_checkpoint(folder).config
    prompt, generated = sum(r["prompt_tokens"] for r in rollouts), sum(r["gen_tokens"] for r in rollouts)
    # generation: the prompts' prefill once per question, then one decode step per new token (no MTP drafting)
    context = (prompt / max(len(rollouts), 1) + generated / max(len(rollouts), 1) / stage.settings.group_size)
    trained["flops"] += flops_per_token(config, int(context), training=False, mtp=False) * (prompt + generated)
    trained["tokens"] += generated
    trained["generated_tokens"] = generated
    k = max(1, len(rollouts) // 5)   # the reward curve's two ends: the first and last fifth of the rollouts
    for key in ("reward", "accuracy", "format_rate", "completion_len", "self_check", "correction"):
        trained[f"train_{key}_first"] = sum(r[key] for r in rollouts[:k]) / k if rollouts else None
        trained[f"train_{key}_last"] = sum(r[key] for r in rollouts[-k:]) / k if rollouts else None
    # the held-out figures at the start (step 0) and the end of training, greedy and pass@k (GRPOConfig.heldout)
    heldout = [r for r in read_metrics(folder / METRICS) if "heldout_accuracy" in r]
    if heldout:
        trained["heldout_start"] = {k: v for k, v in heldout[0].items() if k.startswith("heldout_")}
        trained["heldout_end"] = {k: v for k, v in heldout[-1].items() if k.startswith("heldout_")}
    levels = [r["levels"] for r in rollouts if r.get("levels")]
    if levels:
        trained["levels_last"] = levels[-1]
    return trained


def run_rejection_sft(ctx: Context, stage: Stage, folder: Path) -> dict:
    """Rejection sampling from the init checkpoint into OUT/rejection/, then SFT on the kept rows (about two
    epochs, R1 §2.3.3, within the stage's step budget). With no row kept there is nothing to fine-tune on: the
    stage's checkpoint is then its init, and the record says so."""
    data = ctx.out / "rejection"
    start = time.perf_counter()
    if not (data / "counts.json").is_file():
        data.mkdir(parents=True, exist_ok=True)
        save_jsonl(rejection_prompts(stage.settings), data / "prompts.jsonl")
        config = dataclasses.replace(stage.settings.sampling, checkpoint=_init(ctx, stage),
                                     prompts=str(data / "prompts.jsonl"))
        counts = rejection_sample(config, data / "samples.jsonl")
        counts["seconds"] = time.perf_counter() - start
        write_atomic(data / "counts.json", json.dumps(counts, indent=1) + "\n")
    counts = json.loads((data / "counts.json").read_text())
    config = load_checkpoint(ctx.out / stage.init).config
    generated = counts["generated_tokens"]
    sampling_flops = flops_per_token(config, counts["context"], training=False, mtp=False) * generated
    if counts["kept"] == 0:
        print(f"warning: {stage.name}: rejection sampling kept no completion; nothing to fine-tune on, so the "
              f"checkpoint is {stage.init}'s", flush=True)
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(ctx.out / stage.init, folder, ignore=shutil.ignore_patterns("checkpoints", STAGE, TRAINED))
        return {"seconds": counts["seconds"], "tokens": generated, "flops": sampling_flops,
                "generated_tokens": generated, "rows": 0, "rejection": counts}
    rows = with_replay(data / "samples.jsonl", stage.settings.replay, data / "train.jsonl")
    steps = min(stage.train.max_steps, max(1, round(2 * rows / stage.train.batch_size)))
    sub = dataclasses.replace(stage, train=dataclasses.replace(stage.train, max_steps=steps,
                                                               save_every=min(stage.train.save_every, steps)))
    settings = dataclasses.replace(stage.settings.sft, init=_init(ctx, stage), data=(str(data / "train.jsonl"),))
    trained = _train_stage(ctx, sub, folder, sft, settings)
    return {"seconds": trained["seconds"] + counts["seconds"], "tokens": trained["tokens"] + generated,
            "flops": trained["flops"] + sampling_flops, "steps": trained["steps"], "generated_tokens": generated,
            "rows": counts["kept"], "replayed": rows - counts["kept"], "rejection": counts}


def rejection_prompts(settings: RejectionSFT) -> list:
    """The rejection-sampling questions: train-split problems of the all-task mix, settings.questions of them, the
    levels in turn."""
    per_level = -(-settings.questions // len(settings.levels))
    mixes = [generate_mix(per_level, REJECTION_SEED, "train", level) for level in settings.levels]
    return [p for row in zip(*mixes) for p in row][:settings.questions]


def with_replay(kept: Path, replay: float, out: Path) -> int:
    """The kept rows and round(replay x their number) cold-start rows (generated worked problems at the pipeline's
    level, as the sft stage reads them), shuffled together into `out`; returns the rows written."""
    rows = kept.read_text().splitlines()
    fresh = generate_mix(round(replay * len(rows)), REPLAY_SEED, "train", DIFFICULTY)
    rows += [json.dumps(p.to_row()) for p in fresh]
    random.Random(REPLAY_SEED).shuffle(rows)
    write_atomic(out, "".join(row + "\n" for row in rows))
    return len(rows)


def run_distill(ctx: Context, stage: Stage, folder: Path) -> dict:
    """The teacher's verified answers into OUT/distill-traces/, then the student's SFT on them (R1 §2.4). With no
    answer kept there is nothing to distil: the stage's checkpoint is then the student's base, and the record says
    so."""
    # the recipe names the student by its stage (pretrain-student)
    settings = dataclasses.replace(stage.settings, teacher=_init(ctx, stage),
                                   student=str(ctx.out / stage.settings.student))
    data = ctx.out / "distill-traces"
    counts = teacher_traces(settings, data, stage.train.seed)
    teacher = ModelConfig.load(_init(ctx, stage))
    generated = counts["generated_tokens"]
    sampling_flops = flops_per_token(teacher, counts["context"], training=False, mtp=False) * generated
    sizes = {"student": stage.settings.student,
             "parameters": ModelConfig.load(settings.student).param_counts()["total"],
             "teacher_parameters": teacher.param_counts()["total"], "rows": counts["kept"], "rejection": counts}
    if counts["kept"] == 0:
        print(f"warning: {stage.name}: {stage.init} kept no answer; nothing to distil, so the checkpoint is "
              f"{stage.settings.student}'s", flush=True)
        save_checkpoint(student_model(settings.student, teacher, stage.train.seed, torch.device("cpu")), folder)
        Tokenizer.from_dir(ctx.out / stage.init).save(folder)
        return {"seconds": counts["seconds"], "tokens": generated, "flops": sampling_flops,
                "generated_tokens": generated, **sizes}
    trained = _train_stage(ctx, stage, folder, distill, dataclasses.replace(settings, traces=str(data / TRACES)))
    return {"seconds": trained["seconds"] + counts["seconds"], "tokens": trained["tokens"] + generated,
            "flops": trained["flops"] + sampling_flops, "steps": trained["steps"], "generated_tokens": generated,
            **sizes}


def run_quantize(ctx: Context, stage: Stage, folder: Path) -> dict:
    """The init checkpoint's weights in format stage.settings (`save_quantized`), rounded by GPTQ on
    CALIBRATION_PROBLEMS worked training problems, its tokenizer beside them."""
    start = time.perf_counter()
    source = ctx.out / stage.init
    tokenizer = tuple(p for p in source.iterdir() if p.name.startswith("tokenizer"))
    model = load_checkpoint(source)
    fitted = hessians(model, calibration_sequences(Tokenizer.from_dir(source), CALIBRATION_PROBLEMS))
    save_quantized(model, folder, stage.settings, extra_files=tokenizer, hessians=fitted)
    weight_bytes = {name: sum(f.stat().st_size for f in path.glob("*.safetensors"))
                    for name, path in (("weight_bytes", folder), ("init_weight_bytes", source))}
    return {"seconds": time.perf_counter() - start, "tokens": 0, "flops": 0.0, "steps": 0,
            "calibration": CALIBRATION_PROBLEMS, **weight_bytes}


KINDS: dict[str, Callable[[Context, Stage, Path], dict]] = {
    "pretrain": run_pretrain, "sft": run_sft, "grpo": run_grpo, "rejection-sft": run_rejection_sft,
    "distill": run_distill, "quantize": run_quantize}


def write_report(ctx: Context) -> None:
    """OUT/report.json and OUT/report.md from the records so far."""
    records = [ctx.records[s.name] for s in ctx.recipe.stages if s.name in ctx.records]
    write_atomic(ctx.out / "report.json", json.dumps({"stages": records}, indent=1) + "\n")
    total = sum(r["seconds"] + r["eval_seconds"] for r in records)
    lines = ["# The R1 recipe, end to end", "",
             f"Held-out evaluation: the same {ctx.recipe.eval_problems} eval-split problems for every stage, greedy "
             f"decoding, at most {ctx.recipe.eval_max_new_tokens} new tokens. FLOPs: 6 N per trained token and 2 N "
             f"per generated one (`nanoseek.cost`); MFU against {ctx.device}'s measured float32 matmul "
             f"peak ({ctx.peak / 1e9:.1f} GFLOP/s); one device. Prompts: "
             + "; ".join(f"{r['name']} {r['eval_prompt']}" for r in records if r.get("eval_prompt") != "chat template")
             + "; the others the chat template.", "",
             "| stage | from | accuracy | format rate | mean length | wall time | tokens processed | FLOPs | MFU "
             "| device-hours |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['name']} | {r['init'] or '-'} | {r['accuracy']:.1%} | {r['format_rate']:.1%} "
                     f"| {r['mean_length']:.0f} | {r['seconds'] / 60:.1f} min | {r['tokens']:,} "
                     f"| {r['flops']:.2e} | {r['mfu']:.1%} | {r['device_hours']:.3f} |")
    lines += ["", f"Total wall time, evaluations included: {total / 60:.1f} min.", ""]
    for r in records:
        if "train_reward_first" in r and r["train_reward_first"] is not None:
            lines.append(f"- {r['name']}: training reward {r['train_reward_first']:.3f} → "
                         f"{r['train_reward_last']:.3f}, "
                         f"rollout accuracy {r['train_accuracy_first']:.1%} → {r['train_accuracy_last']:.1%} "
                         f"(first and last fifth of the rollouts)")
        if "rejection" in r:
            c = r["rejection"]
            lines.append(f"- {r['name']}: rejection sampling kept {c['kept']} of {c['samples']} completions "
                         f"({c['questions_solved']} of {c['questions']} questions); rejected: {rejected(c)}")
        teacher = ctx.records.get(r["init"])
        if "parameters" in r:
            share = f"; {r['accuracy'] / teacher['accuracy']:.0%} of its accuracy" if teacher["accuracy"] else ""
            lines.append(f"- {r['name']}: a dense student of {r['parameters']:,} parameters (from {r['student']}), "
                         f"{r['parameters'] / r['teacher_parameters']:.2f}x {r['init']}'s {r['teacher_parameters']:,}"
                         f"{share}")
        if "weight_bytes" in r:
            rounding = f"GPTQ on {r['calibration']} training problems, " if "calibration" in r else ""
            lines.append(f"- {r['name']}: {rounding}{r['weight_bytes'] / 2**20:.2f} MiB of weights on disk, "
                         f"{r['weight_bytes'] / r['init_weight_bytes']:.2f}x {r['init']}'s (float32, embeddings and "
                         f"norms included); accuracy {100 * (r['accuracy'] - teacher['accuracy']):+.1f} points")
    lines.append("")
    lines += rl_table(records)
    for r in records:
        folder = Path(r["checkpoint"])
        plots = [p for p in ("heldout.png", "length.png", "behaviour.png", "reward.png", "levels.png", "loss.png")
                 if (folder / p).is_file()]
        if plots:
            lines += [f"## {r['name']}", "", *(f"![{r['name']} {p[:-4]}]({r['name']}/{p})" for p in plots), ""]
    write_atomic(ctx.out / "report.md", "\n".join(lines))


def rl_table(records: list[dict]) -> list[str]:
    """R1 Table 2 and Figs. 2-3 in miniature: each RL stage at the start and the end of its training, on the same
    held-out problems (GRPOConfig.heldout of them, each stage in its own prompt), greedy accuracy, pass@1 and pass@k
    of samples at the rollout temperature, mean response length, format rate and the share of responses with a
    self-check; R1-Zero's curves are its heldout.png and length.png below."""
    rl = [r for r in records if r.get("heldout_start")]
    if not rl:
        return []
    k = next((key.split("@")[1] for key in rl[0]["heldout_start"] if key.startswith("heldout_pass@")
              and key != "heldout_pass@1"), None)
    lines = ["## The RL stages on held-out problems (R1 Table 2, Figs. 2-3)", "",
             "Each RL stage at its first and last step, on the same held-out problems (greedy, and "
             f"{'pass@1 / pass@' + k + ' of samples at the rollout temperature' if k else 'no sampling'}); "
             "R1-Zero's first row is the base model under R1-Zero's template.", "",
             f"| stage | step | accuracy | pass@1 | pass@{k or 'k'} | mean length | format rate | with a self-check "
             f"| with a correction |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cell(figures: dict, key: str, unit: str = "%") -> str:
        value = figures.get(key)
        return "-" if value is None else f"{value:.1%}" if unit == "%" else f"{value:.0f}"

    for r in rl:
        for when, figures in (("start", r["heldout_start"]), ("end", r.get("heldout_end", {}))):
            lines.append(f"| {r['name']} | {when} | {cell(figures, 'heldout_accuracy')} "
                         f"| {cell(figures, 'heldout_pass@1')} | {cell(figures, f'heldout_pass@{k}')} "
                         f"| {cell(figures, 'heldout_length', 'tokens')} | {cell(figures, 'heldout_format_rate')} "
                         f"| {cell(figures, 'heldout_self_check')} | {cell(figures, 'heldout_correction')} |")
    return lines + [""]
