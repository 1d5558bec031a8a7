"""Single-process training checkpoints: everything a run needs to continue exactly where it stopped.

`OUT/checkpoints/step-000123/` holds the model (`model.safetensors` + `config.json`, written by
`nanoseek.save_checkpoint`), the optimizer moments and random-number-generator states (`state.safetensors`) and the
rest as JSON (`trainer.json`: step, data position, counters). Never pickle. A checkpoint is assembled in a
temporary folder and renamed into place, so a run killed at any moment leaves only whole checkpoints; the oldest
are removed beyond the last `keep_last`.
"""
from __future__ import annotations

import json
import random
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nanoseek.atomic import fsync_path
from nanoseek.checkpoint import load_checkpoint, save_checkpoint
from nanoseek.errors import CheckpointError
from nanoseek.model import Transformer
from nanoseek.train.run_folder import STATE, TRAINER, publish, step_dir


def save_training_state(run: Path, step: int, model: Transformer, optimizer: torch.optim.Optimizer,
                        trainer: dict, keep_last: int) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep_last`; returns its folder."""
    final = step_dir(run, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{uuid.uuid4().hex[:12]}"
    try:
        save_checkpoint(model, tmp)
        tensors, groups = _optimizer_tensors(optimizer)
        tensors.update(rng_tensors())
        save_file(tensors, tmp / STATE)
        fsync_path(tmp / STATE)
        payload = dict(trainer, step=step, optimizer_groups=groups, python_random=python_random())
        (tmp / TRAINER).write_text(json.dumps(payload, indent=1) + "\n")
        fsync_path(tmp / TRAINER)
        publish(tmp, final, keep_last)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_training_state(path: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the model weights, optimizer and RNG states from checkpoint folder `path` into the given objects;
    returns trainer.json (step, data position, ...)."""
    path = Path(path)
    try:
        trainer = json.loads((path / TRAINER).read_text())
        tensors = load_file(path / STATE)
    except FileNotFoundError as e:
        raise CheckpointError(f"training checkpoint {path} is incomplete: missing {Path(e.filename).name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as e:
        raise CheckpointError(f"training checkpoint {path} is corrupt: {e}") from None
    saved = load_checkpoint(path)
    if saved.config != model.config:
        raise CheckpointError(f"training checkpoint {path} holds a model of another shape than this run's")
    model.load_state_dict(saved.state_dict())
    try:
        optimizer.load_state_dict(_optimizer_state(tensors, trainer["optimizer_groups"]))
        restore_rng(tensors, trainer["python_random"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"training checkpoint {path} does not match this run: {e}") from None
    return trainer


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {f"optimizer.{i}.{k}": v.detach().contiguous() for i, state in sd["state"].items()
               for k, v in state.items()}
    return tensors, sd["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("optimizer."):
            _, i, k = name.split(".", 2)
            state.setdefault(int(i), {})[k] = t
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def python_random() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def restore_rng(tensors: dict[str, torch.Tensor], python_random: list) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = python_random
    random.setstate((version, tuple(internal), gauss))

