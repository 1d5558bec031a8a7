"""The tensors a checkpoint file holds for a model, written out plainly (imported by the checkpoint and quantization
tests)."""
import torch

from nanoseek.model import Transformer


def stored_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's state_dict with each stack of routed experts' matrices `<...>.experts.<proj>` (E, N, K) as E
    tensors `<...>.experts.<e>.<proj>.weight` (N, K): DeepSeek's names, which every file keeps."""
    out = {}
    for name, t in model.state_dict().items():
        if name.endswith((".experts.gate_proj", ".experts.up_proj", ".experts.down_proj")):
            prefix, projection = name.rsplit(".", 1)
            out.update({f"{prefix}.{e}.{projection}.weight": t[e] for e in range(t.shape[0])})
        else:
            out[name] = t
    return out
