"""The learning-rate schedule: linear warm-up, then cosine decay."""
from __future__ import annotations

import math
from typing import Callable

from .._validation import check_positive_int

__all__ = ["warmup_cosine_schedule"]


def warmup_cosine_schedule(warmup_steps: int, total_steps: int,
                           min_ratio: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup_steps`` to 1, then a
    cosine decay to ``min_ratio`` at ``total_steps``."""
    check_positive_int("warmup_steps", warmup_steps, minimum=0)
    check_positive_int("total_steps", total_steps)
    if isinstance(min_ratio, bool) or not isinstance(min_ratio, (int, float)) \
            or not 0.0 <= float(min_ratio) <= 1.0:
        raise ValueError(f"min_ratio must be a number in [0, 1], got {min_ratio!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor
