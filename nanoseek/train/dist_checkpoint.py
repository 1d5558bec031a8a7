"""Distributed training checkpoints (`torch.distributed.checkpoint`, DCP): every rank writes its own shards of the
model and optimizer state in parallel, and a checkpoint loads on any number of ranks (DCP reshards on load), in one
process too.

`OUT/checkpoints/step-000123/` of a run under torchrun holds DCP's files (`.metadata`, `__R_0.distcp`, ...) with the
model under `model.` and the optimizer under `optim.`, `config.json` and `trainer.json` (as in state.py), and each
rank's random-number states (`rank-00000.safetensors`, `rank-00000.json`). It is assembled in `.tmp-step-000123`
and renamed by rank 0 once every rank has written, so a run killed at any moment leaves only whole checkpoints.
`consolidate` turns one into a plain model (`nanoseek checkpoint consolidate`).
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from nanoseek import distributed
from nanoseek.atomic import fsync_path
from nanoseek.checkpoint import CONFIG
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError
from nanoseek.model import Transformer
from nanoseek.train.run_folder import (CHECKPOINTS, DCP_METADATA, TRAINER, is_distributed_checkpoint,
                                       latest_checkpoint, publish, step_dir)
from nanoseek.train.state import python_random, restore_rng, rng_tensors


def save_distributed_state(run: Path, step: int, model: Transformer, optimizer: torch.optim.Optimizer,
                           trainer: dict, keep_last: int) -> Path:
    """Write checkpoint `step` from every rank (collective) and keep only the newest `keep_last`."""
    final = step_dir(run, step)
    tmp = final.parent / f".tmp-{final.name}"
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    r = distributed.rank()
    save_file(rng_tensors(), tmp / f"rank-{r:05d}.safetensors")
    (tmp / f"rank-{r:05d}.json").write_text(json.dumps({"python_random": python_random()}))
    if distributed.is_main():
        (tmp / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=1) + "\n")
        (tmp / TRAINER).write_text(json.dumps(dict(trainer, step=step, ranks=distributed.world()), indent=1) + "\n")
    distributed.barrier()
    if distributed.is_main():
        for f in tmp.iterdir():
            fsync_path(f)
        publish(tmp, final, keep_last)
    distributed.barrier()
    return final


def load_distributed_state(path: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> dict:
    """Restore a DCP checkpoint into this run's (sharded or plain) model and optimizer, on any number of ranks;
    returns trainer.json. Random-number states come from the same rank's files (rank 0's for ranks the saving run
    did not have)."""
    path = Path(path)
    if not is_distributed_checkpoint(path):
        raise CheckpointError(f"training checkpoint {path} was written by a single process; resume it without torchrun")
    try:
        trainer = json.loads((path / TRAINER).read_text())
        saved = ModelConfig.load(path / CONFIG)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"distributed checkpoint {path} is incomplete or corrupt: {e}") from None
    if saved != model.config:
        raise CheckpointError(f"training checkpoint {path} holds a model of another shape than this run's")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=path, no_dist=not distributed.active())
    except Exception as e:  # DCP raises CheckpointException and others for missing or damaged shards
        raise CheckpointError(f"distributed checkpoint {path} cannot be read: {str(e).splitlines()[0]}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    r = distributed.rank() if (path / f"rank-{distributed.rank():05d}.json").is_file() else 0
    saved_random = json.loads((path / f"rank-{r:05d}.json").read_text())["python_random"]
    restore_rng(load_file(path / f"rank-{r:05d}.safetensors"), saved_random)
    return trainer


def consolidate(path: str | Path) -> Transformer:
    """The plain model held by a distributed checkpoint folder, or by the newest checkpoint of a run folder."""
    path = Path(path)
    if not is_distributed_checkpoint(path) and (path / CHECKPOINTS).is_dir():
        path = latest_checkpoint(path)
    if not is_distributed_checkpoint(path):
        if (path / "model.safetensors").is_file():
            raise CheckpointError(f"{path} was written by a single process: it already is a plain checkpoint")
        raise CheckpointError(f"{path} is not a distributed checkpoint (no {DCP_METADATA}); expected a "
                              f"{CHECKPOINTS}/step-* folder written under torchrun, or its run folder")
    model = Transformer(ModelConfig.load(path / CONFIG))
    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():  # DCP warns that it loads in a single process, which is the point
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=path, no_dist=True)
    except Exception as e:
        raise CheckpointError(f"distributed checkpoint {path} cannot be read: {str(e).splitlines()[0]}") from None
    model.load_state_dict(state["model"])
    return model.eval()
