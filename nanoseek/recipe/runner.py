"""`nanoseek run`: the R1 recipe (recipe/stages.py) run end to end into one folder.

Every stage writes a checkpoint folder OUT/<stage>/ (loads in the engine, the server and the HF export) and is then
evaluated on the same held-out problems, greedily. OUT/report.md and OUT/report.json (report.py) gather the records.
OUT/<stage>/stage.json marks a stage done, so running the command again skips what is finished and resumes a stage
that was interrupted. What a stage does follows from the type of its config (KINDS).
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
from nanoseek.data.prompts import save_prompt_format
from nanoseek.data.sources import DIFFICULTY, eval_problems
from nanoseek.data.tasks import generate_mix
from nanoseek.errors import ConfigError
from nanoseek.gptq import CALIBRATION_PROBLEMS, calibration_sequences, hessians
from nanoseek.recipe.estimate import progress_line
from nanoseek.recipe.report import write_report
from nanoseek.recipe.stages import REJECTION_SEED, Quantize, Recipe, RejectionSFT, Stage, recipe
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.distill import DISTILL, DistillConfig, student_model, teacher_traces
from nanoseek.train.evaluate import EvalConfig, evaluate
from nanoseek.train.grpo import GRPOConfig
from nanoseek.train.loop import matmul_peak
from nanoseek.train.metrics import read_metrics
from nanoseek.train.plot import plot_run
from nanoseek.train.pretrain import PRETRAIN, PretrainConfig
from nanoseek.train.rejection import sample_into
from nanoseek.train.rl import GRPO
from nanoseek.train.run_folder import (CHECKPOINTS, DISTILL_TRACES, METRICS, RECIPE, REJECTION, RUN, SAMPLES, STAGE,
                                       TRAIN_ROWS, TRACES, TRAINED, check_writable, checkpoint_dirs)
from nanoseek.train.sft import SFT, SFTConfig
from nanoseek.train.stage import device_of, run_stage


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
    saved = out / RECIPE
    if saved.exists() and json.loads(saved.read_text())["size"] != size:
        raise ConfigError(f"{out} holds a {json.loads(saved.read_text())['size']!r} run; finish it with the same "
                          f"setting or choose another --out")
    write_atomic(saved, json.dumps({"size": size}) + "\n")
    device = device_of(None)  # where every stage trains
    ctx = Context(out, plan, matmul_peak(device),
                  torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU")
    for k, stage in enumerate(plan.stages, 1):
        print(progress_line(plan, ctx.records, k), flush=True)
        ctx.records[stage.name] = stage_record(ctx, stage)
        write_report(ctx.out, ctx.recipe, ctx.records, ctx.peak, ctx.device)
    return [ctx.records[s.name] for s in plan.stages]


def stage_record(ctx: Context, stage: Stage) -> dict:
    """A stage's record: read back when the stage is done, else trained (or resumed), evaluated and saved."""
    folder = ctx.out / stage.name
    if (folder / STAGE).is_file():
        print(f"== {stage.name}: done already ({folder / STAGE})", flush=True)
        return json.loads((folder / STAGE).read_text())
    if (folder / TRAINED).is_file():
        trained = json.loads((folder / TRAINED).read_text())
    else:
        print(f"== {stage.name}: {stage.about}", flush=True)
        trained = KINDS[type(stage.config)](ctx, stage, folder)
        write_atomic(folder / TRAINED, json.dumps(trained, indent=1) + "\n")
    save_prompt_format(folder, stage.few_shot, stage.template)  # what `nanoseek generate` prompts it with
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
              "mfu": flops / trained["seconds"] / ctx.peak, "peak_flops": ctx.peak,
              "device_hours": trained["seconds"] / 3600,
              "checkpoint": str(folder), **{k: v for k, v in trained.items() if k not in RECORD_KEYS}}
    write_atomic(folder / STAGE, json.dumps(record, indent=1) + "\n")
    print(f"== {stage.name}: accuracy {record['accuracy']:.1%}, format rate {record['format_rate']:.1%}, "
          f"{record['seconds'] / 60:.1f} min", flush=True)
    return record


RECORD_KEYS = ("seconds", "tokens", "generated_tokens", "flops")


def _train(stage: Stage, folder: Path, config) -> dict:
    """Train `config`'s stage into `folder`, resuming it when an earlier session left a checkpoint there; the loop's
    own counts (its FLOPs include GRPO's generation, its time every session's) make the record, as they make the
    stage's report.md."""
    resume = (folder / RUN).is_file() and bool(checkpoint_dirs(folder))
    if folder.exists() and not resume:
        shutil.rmtree(folder)  # an attempt that died before its first checkpoint: start it again
    result = run_stage(TRAINING[type(config)], config, stage.train, folder, resume=resume)
    if result.interrupted:
        raise KeyboardInterrupt
    return {"seconds": result.elapsed_s, "tokens": result.tokens + result.generated_tokens, "flops": result.flops,
            "steps": result.step, "generated_tokens": result.generated_tokens}


def _init(ctx: Context, stage: Stage) -> str:
    return str(ctx.out / stage.init)


def run_pretrain(ctx: Context, stage: Stage, folder: Path) -> dict:
    return _train(stage, folder, stage.config)


def run_sft(ctx: Context, stage: Stage, folder: Path) -> dict:
    return _train(stage, folder, dataclasses.replace(stage.config, init=_init(ctx, stage)))


def run_grpo(ctx: Context, stage: Stage, folder: Path) -> dict:
    """Train, then summarise the run's curves: its reward and rollout figures at the two ends of training, the
    held-out figures at its first and last step, the curriculum's last levels."""
    trained = _train(stage, folder, dataclasses.replace(stage.config, init=_init(ctx, stage)))
    rollouts = [r for r in read_metrics(folder / METRICS) if "reward" in r and "gen_tokens" in r]
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
    data = ctx.out / REJECTION
    counts = sample_into(data, rejection_prompts(stage.config),
                         dataclasses.replace(stage.config.sampling, checkpoint=_init(ctx, stage)))
    generated, sampling_flops = counts["generated_tokens"], counts["flops"]
    if counts["kept"] == 0:
        print(f"warning: {stage.name}: rejection sampling kept no completion; nothing to fine-tune on, so the "
              f"checkpoint is {stage.init}'s", flush=True)
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(ctx.out / stage.init, folder, ignore=shutil.ignore_patterns(CHECKPOINTS, STAGE, TRAINED))
        return {"seconds": counts["seconds"], "tokens": generated, "flops": sampling_flops,
                "generated_tokens": generated, "rows": 0, "rejection": counts}
    rows = with_replay(data / SAMPLES, stage.config.replay, data / TRAIN_ROWS)
    steps = min(stage.train.max_steps, max(1, round(2 * rows / stage.train.batch_size)))
    sub = dataclasses.replace(stage, train=dataclasses.replace(stage.train, max_steps=steps,
                                                               save_every=min(stage.train.save_every, steps)))
    settings = dataclasses.replace(stage.config.sft, init=_init(ctx, stage), data=(str(data / TRAIN_ROWS),))
    trained = _train(sub, folder, settings)
    return {"seconds": trained["seconds"] + counts["seconds"], "tokens": trained["tokens"] + generated,
            "flops": trained["flops"] + sampling_flops, "steps": trained["steps"], "generated_tokens": generated,
            "rows": counts["kept"], "replayed": rows - counts["kept"], "rejection": counts}


def rejection_prompts(settings: RejectionSFT) -> list:
    """The rejection-sampling questions: train-split problems of the all-task mix, settings.questions of them, the
    levels in turn."""
    per_level = -(-settings.questions // len(settings.levels))
    mixes = [generate_mix(per_level, REJECTION_SEED, "train", level) for level in settings.levels]
    return [p for row in zip(*mixes) for p in row][:settings.questions]


REPLAY_SEED = 27183       # the replayed cold-start problems of rejection-sft


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
    settings = dataclasses.replace(stage.config, teacher=_init(ctx, stage),
                                   student=str(ctx.out / stage.config.student))
    data = ctx.out / DISTILL_TRACES
    counts = teacher_traces(settings, data, stage.train.seed)
    teacher = ModelConfig.load(_init(ctx, stage))
    generated, sampling_flops = counts["generated_tokens"], counts["flops"]
    sizes = {"student": stage.config.student,
             "parameters": ModelConfig.load(settings.student).param_counts()["total"],
             "teacher_parameters": teacher.param_counts()["total"], "rows": counts["kept"], "rejection": counts}
    if counts["kept"] == 0:
        print(f"warning: {stage.name}: {stage.init} kept no answer; nothing to distil, so the checkpoint is "
              f"{stage.config.student}'s", flush=True)
        save_checkpoint(student_model(settings.student, teacher, stage.train.seed, torch.device("cpu")), folder)
        Tokenizer.from_dir(ctx.out / stage.init).save(folder)
        return {"seconds": counts["seconds"], "tokens": generated, "flops": sampling_flops,
                "generated_tokens": generated, **sizes}
    trained = _train(stage, folder, dataclasses.replace(settings, traces=str(data / TRACES)))
    return {"seconds": trained["seconds"] + counts["seconds"], "tokens": trained["tokens"] + generated,
            "flops": trained["flops"] + sampling_flops, "steps": trained["steps"], "generated_tokens": generated,
            **sizes}


def run_quantize(ctx: Context, stage: Stage, folder: Path) -> dict:
    """The init checkpoint's weights in format stage.config.format (`save_quantized`), rounded by GPTQ on
    CALIBRATION_PROBLEMS worked training problems, its tokenizer beside them."""
    start = time.perf_counter()
    source = ctx.out / stage.init
    tokenizer = tuple(p for p in source.iterdir() if p.name.startswith("tokenizer"))
    model = load_checkpoint(source)
    fitted = hessians(model, calibration_sequences(Tokenizer.from_dir(source), CALIBRATION_PROBLEMS))
    save_quantized(model, folder, stage.config.format, extra_files=tokenizer, hessians=fitted)
    weight_bytes = {name: sum(f.stat().st_size for f in path.glob("*.safetensors"))
                    for name, path in (("weight_bytes", folder), ("init_weight_bytes", source))}
    return {"seconds": time.perf_counter() - start, "tokens": 0, "flops": 0.0, "steps": 0,
            "calibration": CALIBRATION_PROBLEMS, **weight_bytes}


# what each stage does, by the type of its config
KINDS: dict[type, Callable[[Context, Stage, Path], dict]] = {
    PretrainConfig: run_pretrain, SFTConfig: run_sft, GRPOConfig: run_grpo, RejectionSFT: run_rejection_sft,
    DistillConfig: run_distill, Quantize: run_quantize}
TRAINING = {PretrainConfig: PRETRAIN, SFTConfig: SFT, GRPOConfig: GRPO, DistillConfig: DISTILL}


