"""A checkpoint folder on disk, whatever its format: `config.json` and the weights, either one `model.safetensors` or
shards `model-00001-of-0000n.safetensors` listed in `model.safetensors.index.json` (Hugging Face's index format).
Written atomically: into a temporary folder beside the target, which then replaces it."""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nanoseek.atomic import fsync_path
from nanoseek.errors import CheckpointError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], config_json: dict, max_shard_bytes: int,
                      extra_files: tuple[Path, ...] = ()) -> Path:
    """Weights, config.json and copies of `extra_files` into a temporary directory, which then replaces `path`."""
    path = Path(path).resolve()
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        _write_weights(tmp, {name: t.contiguous() for name, t in tensors.items()}, max_shard_bytes)
        _write_json(tmp / CONFIG, config_json)
        for file in extra_files:
            shutil.copyfile(file, tmp / Path(file).name)
            fsync_path(tmp / Path(file).name)
        fsync_path(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_weights(directory: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    """One model.safetensors, or shards of at most max_shard_bytes each (a bigger tensor gets a shard to itself)
    plus Hugging Face's index: {"metadata": {"total_size"}, "weight_map": {name: file}}."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        _write_safetensors(directory / SINGLE, shards[0])
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(directory / file, shard)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(directory / INDEX, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def _write_safetensors(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, file, metadata={"format": "pt"})  # transformers refuses files without format "pt"
    fsync_path(file)


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2) + "\n")
    fsync_path(file)


def _replace_dir(new: Path, path: Path) -> None:
    """Move the finished directory `new` to `path`. An existing `path` is renamed aside first and removed only
    after the new one is in place, so at every moment either the old or the new checkpoint is whole."""
    if path.exists():
        for entry in path.iterdir():  # carry over what is not ours: hard links, so `path` stays untouched
            if entry.name in (CONFIG, SINGLE, INDEX) or SHARD.fullmatch(entry.name) or (new / entry.name).exists():
                continue
            if entry.is_dir():
                shutil.copytree(entry, new / entry.name, copy_function=os.link)
            else:
                os.link(entry, new / entry.name)
        old = new.with_name(new.name + ".old")
        path.rename(old)
        new.rename(path)
        shutil.rmtree(old)
    else:
        new.rename(path)
    fsync_path(path.parent)


def check_folder(path: str | Path) -> Path:
    """`path` as a checkpoint folder (one with config.json), or an error that says what `path` is instead: missing,
    a file, or a folder of checkpoints (a `nanoseek run` folder) whose subfolders are named."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; expected a checkpoint folder (config.json and *.safetensors)")
    if not (path / CONFIG).is_file():
        inside = sorted(p.name for p in path.iterdir() if (p / CONFIG).is_file())
        if inside:
            raise CheckpointError(f"{path} is not a checkpoint but holds {len(inside)}; name one of its folders: "
                                  f"{', '.join(str(path / name) for name in inside)}")
        raise CheckpointError(f"{path} is not a checkpoint folder: no {CONFIG} in it")
    return path


def read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing {file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} holds a {type(data).__name__}, expected a JSON object")
    return data


def open_weights(path: Path) -> dict[Path, object]:
    """Open every safetensors file of the checkpoint (headers only; tensors are read on demand)."""
    index = path / INDEX
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no \"weight_map\" object")
        names = sorted(set(weight_map.values()))
    else:
        names = [SINGLE]
    files = {}
    for name in names:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"missing weights file {file}")
        try:
            files[file] = safe_open(file, framework="pt", device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"corrupt safetensors file {file}: {e}") from None
    return files


def get_tensor(files: dict, stored: dict, name: str) -> torch.Tensor:
    try:
        return files[stored[name]].get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"corrupt safetensors file {stored[name]}: cannot read {name!r}: {e}") from None


def available_memory(device: str | torch.device) -> int | None:
    """Free bytes on `device`: the GPU's free memory, else MemAvailable from /proc/meminfo (None off Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None
