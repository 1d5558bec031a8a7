"""How long `nanoseek run` has left, from the rates it has measured on this machine so far.

Each stage's work is planned from its budget: FLOPs of its training steps at full sequences and of its sampling at
full completions (`nanoseek.cost`). Both are upper bounds, and the stages of one kind miss them alike (GRPO's
completions are shorter than max_new_tokens in the same way at each RL stage), so the rate that predicts is measured
per kind: the seconds a finished stage of that kind took per planned FLOP. A kind not yet run takes the rate of all
finished stages together, and the estimate says so. Evaluation takes each finished stage's mean.
"""
from __future__ import annotations

from nanoseek.config import ModelConfig
from nanoseek.cost import flops_per_token
from nanoseek.gptq import CALIBRATION_PROBLEMS
from nanoseek.recipe.stages import Quantize, Recipe, RejectionSFT, Stage
from nanoseek.train.distill import DistillConfig
from nanoseek.train.grpo import GRPOConfig
from nanoseek.train.pretrain import PretrainConfig

PROMPT_TOKENS = 64      # a question, roughly, in the chat or R1-Zero template (planning only)
CALIBRATION_TOKENS = 128


def kind(stage: Stage) -> str:
    """Stages that spend their time alike: teacher-forced training, RL (generation-bound), sampling then SFT."""
    config = stage.config
    if isinstance(config, GRPOConfig):
        return "RL"
    if isinstance(config, (RejectionSFT, DistillConfig)):
        return "sampling"
    return "quantization" if isinstance(config, Quantize) else "training"


def model_of(plan: Recipe, name: str) -> ModelConfig:
    """The shape of stage `name`'s model: that of the pretraining its init chain starts from."""
    stages = {s.name: s for s in plan.stages}
    stage = stages[name]
    while not isinstance(stage.config, PretrainConfig):
        stage = stages[stage.init]
    return ModelConfig.from_preset(stage.config.preset or "tiny")


def planned_flops(plan: Recipe, stage: Stage) -> float:
    """The FLOPs of `stage` at its budget, every sequence and completion at full length."""
    config, train = stage.config, stage.train
    if isinstance(config, DistillConfig):   # the teacher samples, the student (its own base's shape) trains
        teacher, model = model_of(plan, stage.init), model_of(plan, config.student)
    else:
        teacher = model = model_of(plan, stage.name)
    if isinstance(config, Quantize):
        return CALIBRATION_PROBLEMS * CALIBRATION_TOKENS * flops_per_token(teacher, CALIBRATION_TOKENS, training=False)
    if isinstance(config, GRPOConfig):
        completions = train.max_steps * config.prompts_per_step * config.group_size * max(1, config.dynamic_sampling)
        length = PROMPT_TOKENS + config.max_new_tokens
        return completions * length * (flops_per_token(model, length, mtp=False) * config.mu
                                       + flops_per_token(model, length, training=False, mtp=False))
    if isinstance(config, RejectionSFT):
        sampled, new_tokens, seq_len = (config.questions * (config.sampling.k + 1), config.sampling.max_new_tokens,
                                        config.sft.seq_len)
    elif isinstance(config, DistillConfig):
        sampled, new_tokens, seq_len = config.questions * config.k, config.max_new_tokens, config.seq_len
    else:
        sampled, new_tokens, seq_len = 0, 0, config.seq_len
    length = PROMPT_TOKENS + new_tokens
    return (sampled * length * flops_per_token(teacher, length, training=False, mtp=False)
            + train.max_steps * train.batch_size * seq_len * flops_per_token(model, seq_len, mtp=train.mtp_weight > 0))


def remaining_seconds(plan: Recipe, records: dict[str, dict]) -> tuple[float, list[str]] | None:
    """Seconds the stages without a record will take (evaluations included) at the rates measured by the finished
    ones (`records`), and the kinds estimated without a rate of their own; None before any stage has finished."""
    done = [s for s in plan.stages if s.name in records]
    if not done:
        return None
    work = {s.name: planned_flops(plan, s) for s in plan.stages}

    def rate(stages: list[Stage]) -> float:   # seconds per planned FLOP
        return sum(records[s.name]["seconds"] for s in stages) / max(sum(work[s.name] for s in stages), 1.0)

    overall = rate(done)
    left = [s for s in plan.stages if s.name not in records]
    unmeasured = sorted({kind(s) for s in left} - {kind(s) for s in done})
    evaluation = sum(records[s.name].get("eval_seconds", 0.0) for s in done) / len(done)
    seconds = sum(work[s.name] * (rate([d for d in done if kind(d) == kind(s)]) if kind(s) not in unmeasured
                                  else overall) + evaluation for s in left)
    return seconds, unmeasured


def progress_line(plan: Recipe, records: dict[str, dict], k: int) -> str:
    """What `nanoseek run` prints before its k-th stage (from 1): where it is, and the estimate for the whole run."""
    line = f"== stage {k}/{len(plan.stages)}: {plan.stages[k - 1].name}"
    estimate = remaining_seconds(plan, records)
    if estimate is None:
        return line + "; an estimate for the whole run follows the first stage"
    left, unmeasured = estimate
    spent = sum(r["seconds"] + r.get("eval_seconds", 0.0) for r in records.values())
    line += (f"; {len(records)} done in {spent / 60:.1f} min, about {left / 60:.0f} min to go, "
             f"{(spent + left) / 60:.0f} min in all (at the rates measured so far")
    if unmeasured:
        kinds = " and ".join([", ".join(unmeasured[:-1]), unmeasured[-1]] if len(unmeasured) > 1 else unmeasured)
        line += f"; {kinds} estimated at the finished stages' rate until one has run"
    return line + ")"
