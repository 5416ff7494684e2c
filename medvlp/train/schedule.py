"""Learning-rate schedule: linear warm-up then cosine decay to ``min_ratio * peak``."""

from __future__ import annotations

import math


def cosine_lr(step: int, *, peak: float, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning rate at ``step`` (0-based).

    >>> round(cosine_lr(0, peak=1.0, total=100, warmup=10), 3)
    0.1
    >>> cosine_lr(100, peak=1.0, total=100, warmup=10)
    0.0
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
