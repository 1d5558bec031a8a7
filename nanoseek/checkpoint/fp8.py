"""DeepSeek's V3/R1 release stores most matrices in FP8 (e4m3) with one scale per 128x128 block (V3 §3.3.2) in a
sibling `<name>_scale_inv` tensor; they are dequantized on load, w = q * scale. `save_quantized(..., "fp8")` writes
that layout (quantized.py)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from nanoseek.checkpoint.files import get_tensor
from nanoseek.errors import CheckpointError
from nanoseek.quant import FP8_BLOCK, SCALE_INV, dequantize_fp8

# DeepSeek's V3/R1 release, as its config.json says it
FP8_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
              "weight_block_size": list(FP8_BLOCK)}


def read_float_tensor(files: dict, stored: dict, name: str, block: tuple[int, int]) -> torch.Tensor:
    """One stored float tensor; an FP8 one dequantized with its sibling `<name>_scale_inv`."""
    t = get_tensor(files, stored, name)
    scale = name + SCALE_INV
    if scale in stored:
        scale_inv = get_tensor(files, stored, scale)
        rows, cols = t.shape
        check_scale(scale, scale_inv, (math.ceil(rows / block[0]), math.ceil(cols / block[1])), torch.float32,
                     stored[scale], f"for {tuple(t.shape)} in {block[0]}x{block[1]} blocks")
        return dequantize_fp8(t, scale_inv, block)
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise CheckpointError(f"FP8 tensor {name!r} in {stored[name]} has no scale {scale!r}")
    if not t.is_floating_point():
        raise CheckpointError(f"tensor {name!r} in {stored[name]} is {t.dtype}, but config.json has no int8/int4 "
                              f"quantization_config for it")
    return t


def check_scale(name: str, scale: torch.Tensor, shape: tuple, dtype: torch.dtype, file: Path, context: str) -> None:
    """A scale of the expected shape and dtype, every value finite and >= 0 (all-zero groups have scale 0)."""
    if tuple(scale.shape) != tuple(shape) or scale.dtype != dtype:
        raise CheckpointError(f"scale {name!r} in {file} is {scale.dtype} {tuple(scale.shape)}, expected {dtype} "
                              f"{tuple(shape)} {context}")
    bad = ~torch.isfinite(scale) | (scale < 0)
    if bad.any():
        first = tuple(bad.nonzero()[0].tolist())
        raise CheckpointError(f"scale {name!r} in {file} holds {int(bad.sum())} non-finite or negative value(s), "
                              f"the first {scale[first].item()} at {first}")
