"""What every training stage does around the loop: check its inputs before writing anything, keep its settings in
`OUT/run.json` so that `--resume OUT` continues with exactly them, build or load the model, and write the final
model (`model.safetensors`, `config.json`, the tokenizer files) with a `report.md` beside `metrics.jsonl`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from nanoseek import distributed
from nanoseek.atomic import write_atomic
from nanoseek.checkpoint import load_checkpoint, save_checkpoint
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError, ConfigError
from nanoseek.model import Transformer
from nanoseek.out_folder import check_new_folder
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.loop import TrainResult
from nanoseek.train.metrics import METRICS
from nanoseek.train.state import CHECKPOINTS, latest_checkpoint

RUN = "run.json"
REPORT = "report.md"


def check_out(out: Path, resume: bool) -> None:
    """A new run needs an empty or new folder; a resumed one its run.json and a checkpoint."""
    out = Path(out)
    if resume:
        if not (out / RUN).is_file():
            raise CheckpointError(f"cannot resume {out}: no {RUN} there (is it a training run's --out folder?)")
        latest_checkpoint(out)
    else:
        check_new_folder(out, f"continue that run with --resume {out} or choose another --out")
    distributed.barrier()  # under torchrun, every rank looks before rank 0 writes


def save_run(out: Path, settings: dict) -> None:
    """Write run.json atomically (the stage's settings, as plain JSON); under torchrun, rank 0 does."""
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / RUN, json.dumps(settings, indent=1) + "\n")


def load_run(out: Path) -> dict:
    try:
        return json.loads((Path(out) / RUN).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {Path(out) / RUN}: {e}") from None


def from_dict(cls, d: dict):
    """A frozen config dataclass from its JSON form (lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


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
        for field in dataclasses.fields(ModelConfig):
            if field.name == "initializer_range":  # how fresh weights are drawn, not the shape
                continue
            have, want = getattr(model.config, field.name), getattr(expected, field.name)
            if have != want:
                raise CheckpointError(f"--init {init} has {field.name} {have}, but preset {preset!r} has {want}: "
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


def finish(model: Transformer, tokenizer: Tokenizer, out: Path, title: str, result: TrainResult,
           extra: dict[str, str]) -> None:
    """Write the final model, the tokenizer and report.md into `out`; under torchrun, rank 0 writes the model
    consolidated from the run's last distributed checkpoint."""
    if distributed.active():
        if not distributed.is_main():
            return
        from nanoseek.train.dist_checkpoint import consolidate
        model = consolidate(result.checkpoint)
    save_checkpoint(model.cpu(), out)
    tokenizer.save(out)
    rows = {
        "optimizer steps": f"{result.step}",
        "final loss": f"{result.loss:.4f}",
        "tokens": f"{result.tokens:,}",
        "training time": f"{result.elapsed_s / 60:.1f} min",
        "throughput": f"{result.tokens_per_s:,.0f} tokens/s",
        "MFU": (f"{result.mfu:.1%} of the measured matmul peak ({result.peak_flops / 1e9:.1f} GFLOP/s)"
                if result.mfu is not None else "not measured on this device"),
        **extra,
    }
    lines = [f"# {title}", "", "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows.items()), "",
             f"Per-step figures: `{METRICS}`; plots: `nanoseek plot {out}`; training checkpoints: `{CHECKPOINTS}/`.", ""]
    write_atomic(out / REPORT, "\n".join(lines))
