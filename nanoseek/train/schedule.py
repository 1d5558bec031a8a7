"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD).

DeepSeek-V3 (§4.2 "Hyper-Parameters") warms up linearly over 2K steps, holds the peak rate for most of training
and then decays it with a cosine curve to a tenth of the peak: that is `warmup_stable_decay` with a cosine tail.
`warmup_cosine` decays from the end of warmup on (DeepSeek LLM §2.3 compares the two). Steps count from 0; the
rate for step s is the one its optimizer update uses.
"""
from __future__ import annotations

import math


def warmup(step: int, peak: float, warmup_steps: int) -> float:
    return peak * (step + 1) / warmup_steps


def cosine(progress: float, peak: float, floor: float) -> float:
    """From `peak` at progress 0 to `floor` at progress 1."""
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def warmup_cosine(step: int, total: int, peak: float, warmup_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return warmup(step, peak, warmup_steps)
    return cosine((step - warmup_steps) / max(total - warmup_steps - 1, 1), peak, peak * min_ratio)


def warmup_stable_decay(step: int, total: int, peak: float, warmup_steps: int, decay_steps: int,
                        min_ratio: float) -> float:
    """Warmup, the peak rate until the last `decay_steps` steps, then a cosine decay to peak * min_ratio."""
    if step < warmup_steps:
        return warmup(step, peak, warmup_steps)
    start = max(total - decay_steps, warmup_steps)
    if step < start:
        return peak
    return cosine((step - start) / max(total - start - 1, 1), peak, peak * min_ratio)
