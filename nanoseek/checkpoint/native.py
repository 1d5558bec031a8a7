"""Our layout: DeepSeek's released tensor names without the `model.` prefix, config.json as ModelConfig writes it.
In memory the routed experts' matrices are stacked (`layers.N.mlp.experts.gate_proj`, (E, N, K)); every file keeps
DeepSeek's one tensor per expert (`layers.N.mlp.experts.E.gate_proj.weight`). `split_experts` and `stack_experts`
convert between the two, and every check and message of the loader speaks of the stored, per-expert tensors."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from nanoseek.checkpoint.files import write_checkpoint
from nanoseek.checkpoint.hf import hf_config, hf_layout
from nanoseek.checkpoint.llama import llama_config
from nanoseek.errors import CheckpointError
from nanoseek.model import Transformer
from nanoseek.model.moe import expert_weight_name
from nanoseek.quant import is_quantized

_STACKED = re.compile(r"(.+\.experts)\.(gate_proj|up_proj|down_proj)")               # in memory: (E, N, K)
_PER_EXPERT = re.compile(r"(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")  # stored: (N, K) each


def save_checkpoint(model: Transformer, path: str | Path, format: str = "nanoseek",
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` to the directory `path` as safetensors + config.json, in our layout ("nanoseek") or the one
    transformers' DeepseekV3ForCausalLM and DeepSeek's release use ("hf"; LlamaForCausalLM's for a dense
    grouped-query student). Shards when the weights pass `max_shard_bytes`. Atomic: everything is written into a
    temporary directory beside `path`, which then replaces it; other files already in `path` (tokenizer, metrics,
    ...) are kept."""
    if format not in ("nanoseek", "hf"):
        raise CheckpointError(f"format must be 'nanoseek' or 'hf', got {format!r}")
    check_not_quantized(model)
    config = model.config
    tensors = stored_state(model)
    if format == "hf":
        config_json = (llama_config if config.attention_type == "gqa" else hf_config)(config,
                                                                                     model.embed_tokens.weight.dtype)
        return write_checkpoint(path, hf_layout(tensors, config), config_json, max_shard_bytes)
    return write_checkpoint(path, tensors, config.to_dict(), max_shard_bytes)


def check_not_quantized(model: Transformer) -> None:
    if is_quantized(model):
        raise CheckpointError("the model is already int8/int4-quantized; quantize the float checkpoint it came from")


def stored_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's tensors under their stored names."""
    tensors = split_experts(model.state_dict())
    if model.config.tie_word_embeddings:
        del tensors["lm_head.weight"]  # the same tensor as embed_tokens.weight: stored once
    return tensors


def split_experts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def stack_experts(tensors: dict, stack=torch.stack) -> dict:
    """Stored names -> in-memory names, the inverse of split_experts: `stack` joins the values of one projection's
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
