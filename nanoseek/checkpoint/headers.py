"""config.json against the safetensors headers, before the loader builds anything: a config that claims 100,000
layers or a million experts would have the loader lay out that model (minutes, memory growing) only to find the
weights missing. The headers already say how many layers there are, the embedding's shape and the number of
routed experts (the gate's rows); a config that claims more is refused here, from names and shapes alone. What
is left (fewer layers, other widths) the loader's own check of every tensor's shape catches, on a model the size
of the weights."""
from __future__ import annotations

import re
from pathlib import Path

from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError

LAYER = re.compile(r"(?:model\.)?layers\.(\d+)\.")


def check_config_against_headers(config: ModelConfig, files: dict, stored: dict, path: Path) -> None:
    """`files`: file -> safetensors handle; `stored`: tensor name -> its file (files.open_weights)."""
    prefix = "model." if any(name.startswith("model.") for name in stored) else ""

    def shape(name: str) -> tuple[int, ...] | None:
        return tuple(files[stored[name]].get_slice(name).get_shape()) if name in stored else None

    def refuse(claim: str, found: str) -> CheckpointError:
        return CheckpointError(f"{path / 'config.json'} says {claim}, but the weights hold {found}")

    embed = prefix + "embed_tokens.weight"
    if shape(embed) != (config.vocab_size, config.hidden_size):
        raise refuse(f"vocab_size={config.vocab_size} and hidden_size={config.hidden_size}",
                     f"{embed} of shape {shape(embed)}")
    layers = {int(m[1]) for name in stored if (m := LAYER.match(name))}
    if len(layers) < config.num_hidden_layers:
        raise refuse(f"num_hidden_layers={config.num_hidden_layers}", f"{len(layers)} layers")
    first_moe = config.first_k_dense_replace
    if config.n_routed_experts and first_moe < config.num_hidden_layers:
        gate = f"{prefix}layers.{first_moe}.mlp.gate.weight"
        if shape(gate) != (config.n_routed_experts, config.hidden_size):
            raise refuse(f"n_routed_experts={config.n_routed_experts} from layer {first_moe} on",
                         f"{gate} of shape {shape(gate)}")
