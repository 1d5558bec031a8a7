"""Checkpoints as safetensors: our own layout, Hugging Face / DeepSeek DeepseekV3 import and export, FP8 dequant.

A checkpoint is a directory with `config.json` and the weights, either one `model.safetensors` or shards
`model-00001-of-0000n.safetensors` listed in `model.safetensors.index.json` (Hugging Face's index format).

Tensor names. Ours are DeepSeek's released names without the `model.` prefix; the Hugging Face / DeepSeek layout
adds the prefix and stores MTP module k as decoder layer `num_hidden_layers + k` (V3 §2.2), its final norm as
`shared_head.norm` and copies of the shared embedding and head as `embed_tokens` and `shared_head.head`.
DeepSeek's V3/R1 release stores most matrices in FP8 (e4m3) with one scale per 128x128 block (V3 §3.3.2) in a
sibling `<name>_scale_inv` tensor; they are dequantized on load, w = q * scale.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError
from nanoseek.model import Transformer
from nanoseek.model.rope import RotaryEmbedding

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
SCALE_SUFFIX = "_scale_inv"


# ---- tensor names -----------------------------------------------------------------------------------------------
def hf_name(name: str, config: ModelConfig) -> str:
    """Our name -> the Hugging Face / DeepSeek name. MTP module k becomes decoder layer num_hidden_layers + k."""
    if name == "lm_head.weight":
        return name
    mtp = re.fullmatch(r"mtp\.(\d+)\.(.+)", name)
    if mtp is None:
        return "model." + name
    layer, rest = config.num_hidden_layers + int(mtp[1]), mtp[2]
    return f"model.layers.{layer}." + ("shared_head.norm.weight" if rest == "norm.weight" else rest)


def nanoseek_name(name: str, config: ModelConfig) -> str | None:
    """The Hugging Face / DeepSeek name -> ours; None for the MTP layers' copies of the shared embedding and head.
    A name outside the layout comes back unchanged, for the caller to report."""
    layer = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if layer is None or int(layer[1]) < config.num_hidden_layers:
        return name.removeprefix("model.")
    k, rest = int(layer[1]) - config.num_hidden_layers, layer[2]
    if rest in ("embed_tokens.weight", "shared_head.head.weight"):
        return None
    return f"mtp.{k}." + ("norm.weight" if rest == "shared_head.norm.weight" else rest)


# ---- save -------------------------------------------------------------------------------------------------------
def save_checkpoint(model: Transformer, path: str | Path, format: str = "nanoseek",
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` to the directory `path` as safetensors + config.json, in our layout ("nanoseek") or the one
    transformers' DeepseekV3ForCausalLM and DeepSeek's release use ("hf"). Shards when the weights pass
    `max_shard_bytes`. Atomic: everything is written into a temporary directory beside `path`, which then replaces
    it; other files already in `path` (tokenizer, metrics, ...) are kept."""
    if format not in ("nanoseek", "hf"):
        raise CheckpointError(f"format must be 'nanoseek' or 'hf', got {format!r}")
    path = Path(path).resolve()
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} exists and is not a directory")
    config = model.config
    tensors = model.state_dict()
    if config.tie_word_embeddings:
        del tensors["lm_head.weight"]  # the same tensor as embed_tokens.weight: stored once
    if format == "hf":
        tensors = {hf_name(name, config): t for name, t in tensors.items()}
        head = model.lm_head.weight.detach()
        for k in range(config.num_nextn_predict_layers):  # DeepSeek's release keeps copies in each MTP layer
            layer = f"model.layers.{config.num_hidden_layers + k}"
            tensors[f"{layer}.embed_tokens.weight"] = model.embed_tokens.weight.detach().clone()
            tensors[f"{layer}.shared_head.head.weight"] = head.clone()
        config_json = _hf_config(config, model.embed_tokens.weight.dtype)
    else:
        config_json = config.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        _write_weights(tmp, {name: t.contiguous() for name, t in tensors.items()}, max_shard_bytes)
        _write_json(tmp / CONFIG, config_json)
        _fsync(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _hf_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json as DeepSeek released it (rope_theta + rope_scaling), which transformers also reads."""
    if config.scoring_func != "sigmoid" or (config.n_routed_experts == 0
                                            and config.first_k_dense_replace < config.num_hidden_layers):
        raise CheckpointError(f"DeepseekV3 routes with sigmoid scores over routed experts; this model has "
                              f"scoring_func={config.scoring_func!r}, n_routed_experts={config.n_routed_experts}")
    d = config.to_dict()
    if d["rope_scaling"] is None:
        del d["rope_scaling"]
    d.update(num_key_value_heads=config.num_attention_heads, hidden_act="silu", attention_bias=False,
             torch_dtype=str(dtype).removeprefix("torch."))
    return d


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
    _fsync(file)


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2) + "\n")
    _fsync(file)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    _fsync(path.parent)


# ---- load -------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    max_bytes: int | None = None) -> Transformer:
    """Load a checkpoint directory (ours, transformers' DeepseekV3, or DeepSeek's V3/R1 release with its MTP layer
    and FP8 weights) into a Transformer in eval mode. `dtype` (default float32) is that of every weight; the routing
    bias stays float32. Refuses, before allocating anything, weights larger than `max_bytes` (default: the memory
    available on `device`). A config that asks for MTP modules the weights lack loads without them, with a notice."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    dtype = dtype or torch.float32
    raw_config = _read_json(path / CONFIG)
    config = ModelConfig.from_dict(raw_config)
    files = _open_weights(path)
    stored = {name: file for file, handle in files.items() for name in handle.keys()}  # name -> its file
    sources, config = _match_names(stored, config, path)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = Transformer(config)
    expected = model.state_dict()
    if config.tie_word_embeddings:
        del expected["lm_head.weight"]
    _check_names_and_shapes(expected, sources, stored, files, config)
    need = sum(t.numel() * _target_dtype(name, dtype).itemsize for name, t in expected.items())
    limit = available_memory(device) if max_bytes is None else max_bytes
    if limit is not None and need > limit:
        raise CheckpointError(f"{path} needs {need / 2**30:.2f} GiB in {dtype} but only {limit / 2**30:.2f} GiB "
                              f"is available on {device}")

    block = tuple((raw_config.get("quantization_config") or {}).get("weight_block_size", (128, 128)))
    state = {name: _read_tensor(files, stored, source, block).to(device=device, dtype=_target_dtype(name, dtype))
             for name, source in sources.items()}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are not in the checkpoint: compute them afresh on the device.
    with torch.device(device):
        model.rotary = RotaryEmbedding(config)
    for moe in model.moe_layers():
        moe.tokens_per_expert = torch.zeros_like(moe.tokens_per_expert, device=device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def _match_names(stored: dict, config: ModelConfig, path: Path) -> tuple[dict[str, str], ModelConfig]:
    """Our name -> the stored name of each weight (FP8 scales and the MTP layers' copies of the embedding and head
    left out), and the config, without MTP modules when the weights have none."""
    hf_layout = any(name.startswith("model.") for name in stored)
    sources = {}
    for name in stored:
        ours = nanoseek_name(name, config) if hf_layout else name
        if ours is not None and not name.endswith(SCALE_SUFFIX):
            sources[ours] = name
    if config.tie_word_embeddings:
        sources.pop("lm_head.weight", None)  # a copy of embed_tokens.weight
    if config.num_nextn_predict_layers and not any(name.startswith("mtp.") for name in sources):
        print(f"nanoseek: {path} has no MTP weights although its config asks for num_nextn_predict_layers="
              f"{config.num_nextn_predict_layers}; loading without MTP modules", file=sys.stderr)
        config = config.replace(num_nextn_predict_layers=0)
    return sources, config


def _target_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    # V3 §2.1.2: the routing bias only chooses experts; kept in float32 so that small updates and near ties survive
    return torch.float32 if name.endswith("e_score_correction_bias") else dtype


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing {file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} holds a {type(data).__name__}, expected a JSON object")
    return data


def _open_weights(path: Path) -> dict[Path, object]:
    """Open every safetensors file of the checkpoint (headers only; tensors are read on demand)."""
    index = path / INDEX
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
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


def _check_names_and_shapes(expected: dict[str, torch.Tensor], sources: dict[str, str], stored: dict,
                            files: dict, config: ModelConfig) -> None:
    """Every weight present, nothing else, each with its shape: from the headers alone."""
    missing = [name for name in expected if name not in sources]
    if missing:
        hf_layout = any(name.startswith("model.") for name in stored)
        name = hf_name(missing[0], config) if hf_layout else missing[0]
        raise CheckpointError(f"checkpoint is missing tensor {name!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [source for name, source in sources.items() if name not in expected]
    if unexpected:
        raise CheckpointError(f"unexpected tensor {unexpected[0]!r} in {stored[unexpected[0]]}")
    for name, t in expected.items():
        source = sources[name]
        shape = tuple(files[stored[source]].get_slice(source).get_shape())
        if shape != tuple(t.shape):
            raise CheckpointError(f"tensor {source!r} in {stored[source]} has shape {shape}, "
                                  f"expected {tuple(t.shape)}")


def _read_tensor(files: dict, stored: dict, name: str, block: tuple[int, int]) -> torch.Tensor:
    """One stored tensor; an FP8 one dequantized with its sibling `<name>_scale_inv`."""
    t = _get_tensor(files, stored, name)
    scale = name + SCALE_SUFFIX
    if scale in stored:
        return dequantize_fp8(t, _get_tensor(files, stored, scale), block, name)
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise CheckpointError(f"FP8 tensor {name!r} in {stored[name]} has no scale {scale!r}")
    return t


def _get_tensor(files: dict, stored: dict, name: str) -> torch.Tensor:
    try:
        return files[stored[name]].get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"corrupt safetensors file {stored[name]}: cannot read {name!r}: {e}") from None


def dequantize_fp8(q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                   name: str = "weight") -> torch.Tensor:
    """w = q * s with one scale s per block of block[0] x block[1] values (V3 §3.3.2); the last block of a row or
    column may be partial. q: (rows, cols) float8_e4m3fn; scale_inv: (ceil(rows/b0), ceil(cols/b1)) float32."""
    rows, cols = q.shape
    if tuple(scale_inv.shape) != (math.ceil(rows / block[0]), math.ceil(cols / block[1])):
        raise CheckpointError(f"{name + SCALE_SUFFIX!r} has shape {tuple(scale_inv.shape)}, expected "
                              f"{(math.ceil(rows / block[0]), math.ceil(cols / block[1]))} for {tuple(q.shape)} "
                              f"in {block[0]}x{block[1]} blocks")
    scale = scale_inv.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return q.float() * scale


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
