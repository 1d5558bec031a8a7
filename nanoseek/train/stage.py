"""The stage template: what every training stage (pretrain, sft, grpo, distill) does around the loop.

A stage supplies only what differs, as a `Stage`: its config dataclass and a `plan` function that checks its inputs
and builds the model, the tokenizer, the batches, the loss, the evaluations and the report's rows. `run_stage` owns
the common sequence: check the output folder, take the saved settings when resuming, plan, save the settings in
`OUT/run.json` (so that `--resume OUT` continues with exactly them), shard under torchrun, train, and write the final
model (`model.safetensors`, `config.json`, the tokenizer files) with a `report.md` beside `metrics.jsonl`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from nanoseek import distributed
from nanoseek.atomic import write_atomic
from nanoseek.checkpoint import load_checkpoint, save_checkpoint
from nanoseek.config import ModelConfig
from nanoseek.cost import utilisation
from nanoseek.data.prompts import save_prompt_format
from nanoseek.errors import CheckpointError, ConfigError
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.dist_checkpoint import consolidate
from nanoseek.train.loop import BatchSource, LossFn, TrainConfig, TrainResult, train
from nanoseek.train.run_folder import CHECKPOINTS, METRICS, REPORT, RUN, check_out, load_run, save_run

Evaluation = Callable[[Transformer], dict[str, float]]


@dataclass
class Plan:
    """What a stage hands the loop: the model to train (plain: `run_stage` shards it in place under torchrun) and
    its tokenizer, the batches, the loss, the evaluations (see `loop.train`) and the rows of its report.md."""
    model: Transformer
    tokenizer: Tokenizer
    batches: BatchSource
    loss: LossFn
    evaluate: Evaluation | None = None
    evaluate_ends: Evaluation | None = None
    postfix: Callable[[dict], dict[str, str]] | None = None
    train: TrainConfig | None = None     # the stage's own TrainConfig when it changes the given one (GRPO's batch)
    report: dict[str, str] = field(default_factory=dict)
    prompt: tuple[int, str] = (0, "chat")  # (few_shot, template): the prompt the model is trained for (prompt.json)


@dataclass(frozen=True)
class Stage:
    name: str                                           # run.json's key, the progress bar's label
    title: str                                          # report.md's heading
    config: type                                        # the stage's config dataclass
    plan: Callable[[Any, TrainConfig, Path], Plan]      # (config, train config, out folder) -> Plan


def run_stage(stage: Stage, config, train_config: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    """Train `stage` into `out`; with `resume`, continue the run in `out` with the settings saved there. Every input
    is checked (by the stage's plan) before anything but the stage's own samples is written."""
    out = Path(out)
    check_out(out, resume)
    if resume:
        settings = load_run(out)
        config, train_config = from_dict(stage.config, settings[stage.name]), from_dict(TrainConfig, settings["train"])
    plan = stage.plan(config, train_config, out)
    train_config = plan.train or train_config
    if not resume:
        save_run(out, {"stage": stage.name, stage.name: dataclasses.asdict(config),
                       "train": dataclasses.asdict(train_config)})
    model = parallelize(plan.model, train_config.expert_parallel)
    result = train(model, plan.batches, plan.loss, train_config, out, evaluate=plan.evaluate, resume=resume,
                   desc=stage.name, postfix=plan.postfix, evaluate_ends=plan.evaluate_ends)
    if not result.interrupted:
        finish(model, plan.tokenizer, out, stage.title, result, plan.report)
        if distributed.is_main():
            save_prompt_format(out, *plan.prompt)
    return result


def from_dict(cls, d: dict):
    """A frozen config dataclass from its JSON form (lists back to tuples; a field's old name, the class's OLD_NAMES,
    read as its new one)."""
    old = getattr(cls, "OLD_NAMES", {})
    return cls(**{old.get(k, k): tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def device_of(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: expected cpu, cuda or cuda:N") from None


def initial_model(preset: str | None, init: str | None, seed: int, device: torch.device) -> Transformer:
    """A fresh model of `preset` seeded with `seed`, or the weights of checkpoint `init`, which must then have the
    preset's shape when a preset is named."""
    torch.manual_seed(seed)
    if init is None:
        return Transformer(ModelConfig.from_preset(preset or "tiny")).to(device)
    model = load_checkpoint(init, device=device)
    if preset is not None:
        expected = ModelConfig.from_preset(preset)
        for name in (f.name for f in dataclasses.fields(ModelConfig)):
            if name == "initializer_range":  # how fresh weights are drawn, not the shape
                continue
            have, want = getattr(model.config, name), getattr(expected, name)
            if have != want:
                raise CheckpointError(f"--init {init} has {name} {have}, but preset {preset!r} has {want}: "
                                      f"a checkpoint of another shape")
    return model.train()


def parallelize(model: Transformer, expert_parallel: bool) -> Transformer:
    """Under torchrun, shard the model with FSDP2 (and its experts across ranks); as it is in one process (a run
    saved with expert parallelism resumes in one process too)."""
    return distributed.shard(model, expert_parallel) if distributed.active() else model


def stage_tokenizer(init: str | None, config: ModelConfig) -> Tokenizer:
    """The tokenizer beside the init checkpoint, else the shipped default; it must fit the model's vocabulary."""
    tokenizer = Tokenizer.from_dir(init) if init and (Path(init) / "tokenizer.json").is_file() else default_tokenizer()
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                          f"{config.vocab_size}")
    return tokenizer


def run_tokenizer(path: str | Path, config: ModelConfig) -> Tokenizer:
    """The tokenizer of the run that wrote checkpoint folder (or run folder) `path`: the run's own when it finished,
    else the one its stage started from (run.json's init), else the shipped default."""
    path = Path(path)
    run = path if (path / CHECKPOINTS).is_dir() else path.parent.parent
    if (run / "tokenizer.json").is_file():
        return Tokenizer.from_dir(run)
    init = None
    if (run / RUN).is_file():
        settings = json.loads((run / RUN).read_text())
        init = settings.get(settings.get("stage", ""), {}).get("init")
    return stage_tokenizer(init, config)


def finish(model: Transformer, tokenizer: Tokenizer, out: Path, title: str, result: TrainResult,
           extra: dict[str, str]) -> None:
    """Write the final model, the tokenizer and report.md into `out`; under torchrun, rank 0 writes the model
    consolidated from the run's last distributed checkpoint."""
    if distributed.active():
        if not distributed.is_main():
            return
        model = consolidate(result.checkpoint)
    save_checkpoint(model.cpu(), out)
    tokenizer.save(out)
    rows = {
        "optimizer steps": f"{result.step}",
        "final loss": f"{result.loss:.4f}",
        "tokens": (f"{result.tokens + result.generated_tokens:,} processed: {result.tokens:,} trained, "
                   f"{result.generated_tokens:,} generated" if result.generated_tokens else f"{result.tokens:,}"),
        "training time": f"{result.elapsed_s / 60:.1f} min",
        "throughput": f"{result.tokens_per_s:,.0f} tokens/s",
        "MFU": (f"{utilisation(result.mfu)} of the measured matmul peak ({result.peak_flops / 1e9:.1f} GFLOP/s)"
                if result.mfu is not None else "not measured on this device"),
        **extra,
    }
    lines = [f"# {title}", "", "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows.items()), "",
             f"Per-step figures: `{METRICS}`; plots: `nanoseek plot {out}`; training checkpoints: `{CHECKPOINTS}/`.", ""]
    write_atomic(out / REPORT, "\n".join(lines))
