"""RMSNorm (Zhang and Sennrich 2019), as every DeepSeek model normalises: x / rms(x) * weight."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
    """norm(x), in float32 when x and the weight differ in dtype (bf16 activations under autocast, or beside the
    float32 norms of a bf16 checkpoint), returned in x's dtype. torch's kernel would warn and take a slower path."""
    if x.dtype == norm.weight.dtype:
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
    return F.rms_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.eps).to(x.dtype)


class RMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self)
