"""`load_checkpoint`: any of the formats (ours, transformers' DeepseekV3 or LlamaForCausalLM, DeepSeek's FP8
release, our int8 / int4) into a Transformer, every name and shape checked from the headers before anything is
allocated."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from nanoseek.checkpoint.files import CONFIG, available_memory, check_folder, open_weights, read_json
from nanoseek.checkpoint.fp8 import read_float_tensor
from nanoseek.checkpoint.headers import check_config_against_headers
from nanoseek.checkpoint.hf import hf_name, nanoseek_name
from nanoseek.checkpoint.native import stack_experts, stored_state
from nanoseek.checkpoint.quantized import int_format, read_quantized
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError
from nanoseek.model import Transformer
from nanoseek.model.rope import RotaryEmbedding
from nanoseek.quant import FP8_BLOCK, SCALE, SCALE_INV, QuantizedStack, quant_linear, stored_as, stored_layout, swap


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    max_bytes: int | None = None) -> Transformer:
    """Load a checkpoint directory (ours, transformers' DeepseekV3 or LlamaForCausalLM, or DeepSeek's V3/R1 release
    with its MTP layer and FP8 weights) into a Transformer in eval mode. `dtype` (default float32) is that of every
    weight; the routing bias stays float32. Refuses, before allocating anything, weights larger than `max_bytes`
    (default: the memory available on `device`). A config that asks for MTP modules the weights lack loads without
    them, with a notice. An int8 / int4 checkpoint (`save_quantized`) loads with those layers as Int8Linear /
    Int4Linear, which run torch's CPU kernels (on the CPU only), and the routed experts' matrices as QuantizedStacks."""
    path = check_folder(path)
    dtype = dtype or torch.float32
    raw_config = read_json(path / CONFIG)
    config = ModelConfig.from_dict(raw_config)
    quant = raw_config.get("quantization_config") or {}
    fmt, group_size = int_format(quant, path)
    if fmt and torch.device(device).type != "cpu":
        raise CheckpointError(f"{path} is {fmt}-quantized, and its layers run on torch's CPU kernels; "
                              f"load it on 'cpu', not {str(device)!r} (or quantize to fp8 or bf16 for a GPU)")
    files = open_weights(path)
    stored = {name: file for file, handle in files.items() for name in handle.keys()}  # name -> its file
    check_config_against_headers(config, files, stored, path)
    sources, config = _match_names(stored, config, path)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = Transformer(config)
    expected = {name: (tuple(t.shape), _target_dtype(name, dtype)) for name, t in stored_state(model).items()}
    plans = {}  # our name -> ("int8" | "int4", group size) of each weight stored quantized
    if fmt:
        plans = {name: stored_as(name, shape, fmt, group_size) for name, (shape, _) in expected.items()}
        plans = {name: plan for name, plan in plans.items() if plan[0] is not None}
    layouts = {name: stored_layout(kind, expected[name][0], G) for name, (kind, G) in plans.items()}
    for name, layout in layouts.items():  # as stored: quantized weight, and its scale read beside it
        expected[name] = layout[""]
    _check_names_and_shapes({name: shape for name, (shape, _) in expected.items()}, sources, stored, files, config)
    held = [*expected.values(), *(layout[SCALE] for layout in layouts.values())]
    need = sum(math.prod(shape) * held_dtype.itemsize for shape, held_dtype in held)
    limit = available_memory(device) if max_bytes is None else max_bytes
    if limit is not None and need > limit:
        raise CheckpointError(f"{path} needs {need / 2**30:.2f} GiB in {dtype} but only {limit / 2**30:.2f} GiB "
                              f"is available on {device}")

    block = tuple(quant.get("weight_block_size", FP8_BLOCK))
    state, quantized = {}, {}
    for name, source in sources.items():
        if name in layouts:
            quantized[name] = read_quantized(files, stored, source, layouts[name])
        else:
            t = read_float_tensor(files, stored, source, block)
            state[name] = t.to(device=device, dtype=_target_dtype(name, dtype))
    for name, (q, scale) in stack_experts(quantized, lambda pairs: [torch.stack(t) for t in zip(*pairs)]).items():
        if name in plans:
            kind, G = plans[name]
            swap(model, name.removesuffix(".weight"), quant_linear(kind, q, scale, G, dtype))
        else:
            swap(model, name, QuantizedStack(q, scale, dtype))
    state = stack_experts(state)
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
    """Our name -> the stored name of each weight (scales and the MTP layers' copies of the embedding and head
    left out), and the config, without MTP modules when the weights have none."""
    hf_layout = any(name.startswith("model.") for name in stored)
    sources = {}
    for name in stored:
        ours = nanoseek_name(name, config) if hf_layout else name
        if ours is not None and not name.endswith((SCALE, SCALE_INV)):
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


def _check_names_and_shapes(expected: dict[str, tuple], sources: dict[str, str], stored: dict,
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
    for name, want in expected.items():
        source = sources[name]
        shape = tuple(files[stored[source]].get_slice(source).get_shape())
        if shape != want:
            raise CheckpointError(f"tensor {source!r} in {stored[source]} has shape {shape}, expected {want}")
