"""The DeepSeek-V3 architecture: MLA attention, DeepSeekMoE, multi-token prediction, YaRN RoPE."""
from nanoseek.model.transformer import Losses, Transformer

__all__ = ["Transformer", "Losses"]
