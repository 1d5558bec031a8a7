"""Quantized checkpoints: `save_quantized` writes a model as bf16, int8, int4 (our layout, with a
`quantization_config` in config.json) or FP8 (DeepSeek's layout and names, so it loads wherever their release
loads); `nanoseek.quant` has the formats. int8 and int4 checkpoints load with those layers kept quantized."""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from nanoseek.checkpoint.files import CONFIG, get_tensor, write_checkpoint
from nanoseek.checkpoint.fp8 import FP8_CONFIG, check_scale
from nanoseek.checkpoint.hf import hf_config, hf_layout
from nanoseek.checkpoint.native import check_not_quantized, stored_state
from nanoseek.errors import CheckpointError
from nanoseek.model import Transformer
from nanoseek.quant import INT4_GROUP_SIZE, INT4_GROUP_SIZES, SCALE, check_format, quantize_tensor


def save_quantized(model: Transformer, path: str | Path, fmt: str, group_size: int = INT4_GROUP_SIZE,
                   extra_files: tuple[Path, ...] = (), progress: bool = False,
                   max_shard_bytes: int = 5 * 2**30, hessians: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `model` in format `fmt` (see nanoseek.quant): "bf16", "int8" or "int4" in our layout, "fp8" in
    DeepSeek's (Hugging Face names, `_scale_inv` siblings, their quantization_config), with `extra_files`
    (tokenizer files) copied beside. int8 / int4 weights with an entry in `hessians` (nanoseek.gptq.hessians)
    are rounded by GPTQ. Atomic, like save_checkpoint; `progress` shows a bar over the tensors."""
    check_format(fmt, group_size)
    check_not_quantized(model)
    config = model.config
    tensors = {}
    for name, t in tqdm(stored_state(model).items(), desc=f"quantizing to {fmt}", unit="tensor", disable=not progress):
        tensors.update(quantize_tensor(name, t.detach(), fmt, group_size, (hessians or {}).get(name)))
    if fmt == "fp8":
        config_json = dict(hf_config(config, torch.bfloat16), quantization_config=FP8_CONFIG)
        return write_checkpoint(path, hf_layout(tensors, config), config_json, max_shard_bytes, extra_files)
    config_json = config.to_dict()
    if fmt == "int8":
        config_json["quantization_config"] = {"quant_method": "nanoseek", "format": "int8"}
    elif fmt == "int4":
        config_json["quantization_config"] = {"quant_method": "nanoseek", "format": "int4", "group_size": group_size}
    return write_checkpoint(path, tensors, config_json, max_shard_bytes, extra_files)


def int_format(quant: dict, path: Path) -> tuple[str | None, int]:
    """("int8" or "int4", group size) for a checkpoint `save_quantized` wrote; (None, 0) for any other."""
    if quant.get("quant_method") != "nanoseek":
        return None, 0
    fmt = quant.get("format")
    if fmt not in ("int8", "int4"):
        raise CheckpointError(f"{path / CONFIG}: quantization_config format {fmt!r}, expected 'int8' or 'int4'")
    group_size = quant.get("group_size") if fmt == "int4" else 0
    if fmt == "int4" and group_size not in INT4_GROUP_SIZES:
        raise CheckpointError(f"{path / CONFIG}: int4 group_size {group_size!r}, expected one of {INT4_GROUP_SIZES}")
    return fmt, group_size


def read_quantized(files: dict, stored: dict, name: str, layout: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored int8 / int4 weight and its `<name>_scale`, each checked against `layout` (quant.stored_layout)."""
    q = get_tensor(files, stored, name)
    shape, dtype = layout[""]
    if q.dtype != dtype:
        raise CheckpointError(f"quantized tensor {name!r} in {stored[name]} is {q.dtype}, expected {dtype}")
    scale_name = name + SCALE
    if scale_name not in stored:
        raise CheckpointError(f"quantized tensor {name!r} in {stored[name]} has no scale {scale_name!r}")
    scale = get_tensor(files, stored, scale_name)
    check_scale(scale_name, scale, *layout[SCALE], stored[scale_name], f"for {name!r} of {shape}")
    return q, scale
