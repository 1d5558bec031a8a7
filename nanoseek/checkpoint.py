"""Checkpoints as safetensors: our own layout, Hugging Face / DeepSeek DeepseekV3 import and export, quantized ones.

A checkpoint is a directory with `config.json` and the weights, either one `model.safetensors` or shards
`model-00001-of-0000n.safetensors` listed in `model.safetensors.index.json` (Hugging Face's index format).

Tensor names. Ours are DeepSeek's released names without the `model.` prefix; the Hugging Face / DeepSeek layout
adds the prefix and stores MTP module k as decoder layer `num_hidden_layers + k` (V3 §2.2), its final norm as
`shared_head.norm` and copies of the shared embedding and head as `embed_tokens` and `shared_head.head`.
DeepSeek's V3/R1 release stores most matrices in FP8 (e4m3) with one scale per 128x128 block (V3 §3.3.2) in a
sibling `<name>_scale_inv` tensor; they are dequantized on load, w = q * scale.
In memory the routed experts' matrices are stacked (`layers.N.mlp.experts.gate_proj`, (E, N, K)); every file keeps
DeepSeek's one tensor per expert (`layers.N.mlp.experts.E.gate_proj.weight`). `_split_experts` and `_stack_experts`
convert between the two, and every check and message of the loader speaks of the stored, per-expert tensors.

A dense grouped-query student (R1 §2.4 releases its distilled models in Llama's and Qwen's shapes) exports as
transformers' LlamaForCausalLM instead: Llama's tensor names are ours with the `model.` prefix, and any Llama
runtime loads it; `load_checkpoint` reads such a checkpoint back.

`save_quantized` writes a model as bf16, int8, int4 (our layout, with a `quantization_config` in config.json) or
FP8 (DeepSeek's layout and names, so it loads wherever their release loads); `nanoseek.quant` has the formats.
int8 and int4 checkpoints load with those layers kept quantized in memory.
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
from tqdm import tqdm

from nanoseek.atomic import fsync_path
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError
from nanoseek.header_check import check_config_against_headers
from nanoseek.model import Transformer
from nanoseek.model.moe import expert_weight_name
from nanoseek.model.rope import RotaryEmbedding
from nanoseek.quant import (FP8_BLOCK, INT4_GROUP_SIZE, INT4_GROUP_SIZES, SCALE, SCALE_INV, QuantizedStack,
                            check_format, dequantize_fp8, is_quantized, quant_linear, quantize_tensor, stored_as,
                            stored_layout, swap)

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# DeepSeek's V3/R1 release, as its config.json says it
FP8_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
              "weight_block_size": list(FP8_BLOCK)}
_STACKED = re.compile(r"(.+\.experts)\.(gate_proj|up_proj|down_proj)")               # in memory: (E, N, K)
_PER_EXPERT = re.compile(r"(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")  # stored: (N, K) each


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


def _split_experts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """In-memory names -> stored names: a layer's three stacks of routed experts' matrices (E, N, K) become E times
    three tensors (N, K) named per expert, in DeepSeek's order, expert by expert (views of the stacks, not copies)."""
    out, stacks = {}, {}
    for name, t in tensors.items():
        stacked = _STACKED.fullmatch(name)
        if stacked is None:
            out[name] = t
            continue
        stacks.setdefault(stacked[1], {})[stacked[2]] = t
        if len(stacks[stacked[1]]) == 3:
            layer = stacks.pop(stacked[1])
            for e in range(len(t)):
                out.update({expert_weight_name(stacked[1], e, projection): w[e] for projection, w in layer.items()})
    return out


def _stack_experts(tensors: dict, stack=torch.stack) -> dict:
    """Stored names -> in-memory names, the inverse of _split_experts: `stack` joins the values of one projection's
    experts, given in expert order."""
    out, stacks = {}, {}
    for name, t in tensors.items():
        expert = _PER_EXPERT.fullmatch(name)
        if expert is None:
            out[name] = t
        else:
            stacks.setdefault(f"{expert[1]}.{expert[3]}", {})[int(expert[2])] = t
    out.update({name: stack([parts[e] for e in sorted(parts)]) for name, parts in stacks.items()})
    return out


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
    transformers' DeepseekV3ForCausalLM and DeepSeek's release use ("hf"; LlamaForCausalLM's for a dense
    grouped-query student). Shards when the weights pass `max_shard_bytes`. Atomic: everything is written into a
    temporary directory beside `path`, which then replaces it; other files already in `path` (tokenizer, metrics,
    ...) are kept."""
    if format not in ("nanoseek", "hf"):
        raise CheckpointError(f"format must be 'nanoseek' or 'hf', got {format!r}")
    _check_not_quantized(model)
    config = model.config
    tensors = _state(model)
    if format == "hf":
        hf_config = _llama_config if config.attention_type == "gqa" else _hf_config
        return _write_checkpoint(path, _hf_layout(tensors, config),
                                 hf_config(config, model.embed_tokens.weight.dtype), max_shard_bytes)
    return _write_checkpoint(path, tensors, config.to_dict(), max_shard_bytes)


def save_quantized(model: Transformer, path: str | Path, fmt: str, group_size: int = INT4_GROUP_SIZE,
                   extra_files: tuple[Path, ...] = (), progress: bool = False,
                   max_shard_bytes: int = 5 * 2**30, hessians: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `model` in format `fmt` (see nanoseek.quant): "bf16", "int8" or "int4" in our layout, "fp8" in
    DeepSeek's (Hugging Face names, `_scale_inv` siblings, their quantization_config), with `extra_files`
    (tokenizer files) copied beside. int8 / int4 weights with an entry in `hessians` (nanoseek.gptq.hessians)
    are rounded by GPTQ. Atomic, like save_checkpoint; `progress` shows a bar over the tensors."""
    check_format(fmt, group_size)
    _check_not_quantized(model)
    config = model.config
    tensors = {}
    for name, t in tqdm(_state(model).items(), desc=f"quantizing to {fmt}", unit="tensor", disable=not progress):
        tensors.update(quantize_tensor(name, t.detach(), fmt, group_size, (hessians or {}).get(name)))
    if fmt == "fp8":
        config_json = dict(_hf_config(config, torch.bfloat16), quantization_config=FP8_CONFIG)
        return _write_checkpoint(path, _hf_layout(tensors, config), config_json, max_shard_bytes, extra_files)
    config_json = config.to_dict()
    if fmt == "int8":
        config_json["quantization_config"] = {"quant_method": "nanoseek", "format": "int8"}
    elif fmt == "int4":
        config_json["quantization_config"] = {"quant_method": "nanoseek", "format": "int4", "group_size": group_size}
    return _write_checkpoint(path, tensors, config_json, max_shard_bytes, extra_files)


def _check_not_quantized(model: Transformer) -> None:
    if is_quantized(model):
        raise CheckpointError("the model is already int8/int4-quantized; quantize the float checkpoint it came from")


def _state(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's tensors under their stored names."""
    tensors = _split_experts(model.state_dict())
    if model.config.tie_word_embeddings:
        del tensors["lm_head.weight"]  # the same tensor as embed_tokens.weight: stored once
    return tensors


def _hf_layout(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our names -> DeepSeek's, plus the copies of the embedding and head that their release keeps in each MTP layer."""
    out = {hf_name(name, config): t for name, t in tensors.items()}
    embed = tensors["embed_tokens.weight"]
    head = tensors.get("lm_head.weight", embed)
    for k in range(config.num_nextn_predict_layers):
        layer = f"model.layers.{config.num_hidden_layers + k}"
        out[f"{layer}.embed_tokens.weight"] = embed.detach().clone()
        out[f"{layer}.shared_head.head.weight"] = head.detach().clone()
    return out


def _write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], config_json: dict, max_shard_bytes: int,
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


def _hf_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json as DeepSeek released it (rope_theta + rope_scaling), which transformers also reads."""
    if config.scoring_func != "sigmoid" or (config.n_routed_experts == 0
                                            and config.first_k_dense_replace < config.num_hidden_layers):
        raise CheckpointError(f"DeepseekV3 routes with sigmoid scores over routed experts; this model has "
                              f"scoring_func={config.scoring_func!r}, n_routed_experts={config.n_routed_experts}")
    if config.attention_type != "mla":
        raise CheckpointError(f"DeepseekV3 attends with MLA; this model has attention_type={config.attention_type!r}")
    d = config.to_dict()
    if d["rope_scaling"] is None:
        del d["rope_scaling"]
    # head_dim: transformers' DeepseekV3 sizes its rotary embedding by it, the rope part of a head (ours is None)
    d.update(num_key_value_heads=config.num_attention_heads, head_dim=config.qk_rope_head_dim, hidden_act="silu",
             attention_bias=False, torch_dtype=str(dtype).removeprefix("torch."))
    return d


def _llama_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json of transformers' LlamaForCausalLM for a dense grouped-query model."""
    moe_layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    if moe_layers or config.num_nextn_predict_layers:
        raise CheckpointError(f"LlamaForCausalLM is dense without MTP; this model has {moe_layers} MoE layer(s) and "
                              f"num_nextn_predict_layers={config.num_nextn_predict_layers}")
    if config.rope_interleave or config.rope_scaling:
        raise CheckpointError(f"LlamaForCausalLM rotates the two halves of each head, without YaRN; this model has "
                              f"rope_interleave={config.rope_interleave}, rope_scaling={config.rope_scaling!r}")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.kv_heads, "head_dim": config.attention_head_dim, "hidden_act": "silu",
            "rope_theta": config.rope_theta, "rms_norm_eps": config.rms_norm_eps,
            "max_position_embeddings": config.max_position_embeddings, "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": config.tie_word_embeddings, "initializer_range": config.initializer_range,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "torch_dtype": str(dtype).removeprefix("torch.")}


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


# ---- load -------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    max_bytes: int | None = None) -> Transformer:
    """Load a checkpoint directory (ours, transformers' DeepseekV3 or LlamaForCausalLM, or DeepSeek's V3/R1 release
    with its MTP layer and FP8 weights) into a Transformer in eval mode. `dtype` (default float32) is that of every
    weight; the routing bias stays float32. Refuses, before allocating anything, weights larger than `max_bytes`
    (default: the memory available on `device`). A config that asks for MTP modules the weights lack loads without
    them, with a notice. An int8 / int4 checkpoint (`save_quantized`) loads with those layers as Int8Linear /
    Int4Linear, which run torch's CPU kernels (on the CPU only), and the routed experts' matrices as QuantizedStacks."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    dtype = dtype or torch.float32
    raw_config = _read_json(path / CONFIG)
    config = ModelConfig.from_dict(raw_config)
    quant = raw_config.get("quantization_config") or {}
    int_format, group_size = _int_format(quant, path)
    if int_format and torch.device(device).type != "cpu":
        raise CheckpointError(f"{path} is {int_format}-quantized, and its layers run on torch's CPU kernels; "
                              f"load it on 'cpu', not {str(device)!r} (or quantize to fp8 or bf16 for a GPU)")
    files = _open_weights(path)
    stored = {name: file for file, handle in files.items() for name in handle.keys()}  # name -> its file
    check_config_against_headers(config, files, stored, path)
    sources, config = _match_names(stored, config, path)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = Transformer(config)
    expected = {name: (tuple(t.shape), _target_dtype(name, dtype)) for name, t in _state(model).items()}
    plans = {}  # our name -> ("int8" | "int4", group size) of each weight stored quantized
    if int_format:
        plans = {name: stored_as(name, shape, int_format, group_size) for name, (shape, _) in expected.items()}
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
            quantized[name] = _read_quantized(files, stored, source, layouts[name])
        else:
            t = _read_tensor(files, stored, source, block)
            state[name] = t.to(device=device, dtype=_target_dtype(name, dtype))
    for name, (q, scale) in _stack_experts(quantized, lambda pairs: [torch.stack(t) for t in zip(*pairs)]).items():
        if name in plans:
            kind, G = plans[name]
            swap(model, name.removesuffix(".weight"), quant_linear(kind, q, scale, G, dtype))
        else:
            swap(model, name, QuantizedStack(q, scale, dtype))
    state = _stack_experts(state)
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


def _int_format(quant: dict, path: Path) -> tuple[str | None, int]:
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


def _read_tensor(files: dict, stored: dict, name: str, block: tuple[int, int]) -> torch.Tensor:
    """One stored float tensor; an FP8 one dequantized with its sibling `<name>_scale_inv`."""
    t = _get_tensor(files, stored, name)
    scale = name + SCALE_INV
    if scale in stored:
        scale_inv = _get_tensor(files, stored, scale)
        rows, cols = t.shape
        _check_scale(scale, scale_inv, (math.ceil(rows / block[0]), math.ceil(cols / block[1])), torch.float32,
                     stored[scale], f"for {tuple(t.shape)} in {block[0]}x{block[1]} blocks")
        return dequantize_fp8(t, scale_inv, block)
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise CheckpointError(f"FP8 tensor {name!r} in {stored[name]} has no scale {scale!r}")
    if not t.is_floating_point():
        raise CheckpointError(f"tensor {name!r} in {stored[name]} is {t.dtype}, but config.json has no int8/int4 "
                              f"quantization_config for it")
    return t


def _read_quantized(files: dict, stored: dict, name: str, layout: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored int8 / int4 weight and its `<name>_scale`, each checked against `layout` (quant.stored_layout)."""
    q = _get_tensor(files, stored, name)
    shape, dtype = layout[""]
    if q.dtype != dtype:
        raise CheckpointError(f"quantized tensor {name!r} in {stored[name]} is {q.dtype}, expected {dtype}")
    scale_name = name + SCALE
    if scale_name not in stored:
        raise CheckpointError(f"quantized tensor {name!r} in {stored[name]} has no scale {scale_name!r}")
    scale = _get_tensor(files, stored, scale_name)
    _check_scale(scale_name, scale, *layout[SCALE], stored[scale_name], f"for {name!r} of {shape}")
    return q, scale


def _check_scale(name: str, scale: torch.Tensor, shape: tuple, dtype: torch.dtype, file: Path, context: str) -> None:
    """A scale of the expected shape and dtype, every value finite and >= 0 (all-zero groups have scale 0)."""
    if tuple(scale.shape) != tuple(shape) or scale.dtype != dtype:
        raise CheckpointError(f"scale {name!r} in {file} is {scale.dtype} {tuple(scale.shape)}, expected {dtype} "
                              f"{tuple(shape)} {context}")
    bad = ~torch.isfinite(scale) | (scale < 0)
    if bad.any():
        first = tuple(bad.nonzero()[0].tolist())
        raise CheckpointError(f"scale {name!r} in {file} holds {int(bad.sum())} non-finite or negative value(s), "
                              f"the first {scale[first].item()} at {first}")


def _get_tensor(files: dict, stored: dict, name: str) -> torch.Tensor:
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
