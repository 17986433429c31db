"""Learning-rate schedule: linear warmup, then constant / cosine / linear decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    decay: str = "constant"  # constant | cosine | linear (after warmup, down to min_lr_ratio * lr)
    min_lr_ratio: float = 0.0

    def validate(self) -> None:
        if self.decay not in SCHEDULES:
            raise ValueError(f"decay={self.decay!r}: one of {SCHEDULES}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")


class LRLambda:
    """Multiplier of the base LR at optimizer step ``i`` (0-based), for ``torch.optim.lr_scheduler.LambdaLR``.

    Warmup starts at 1/warmup (not 0) so the first step already learns. A class, not a
    closure, so the scheduler's state dict stays picklable.
    """

    def __init__(self, cfg: ScheduleConfig, total_steps: int):
        self.cfg, self.total = cfg, max(total_steps, 1)

    def __call__(self, i: int) -> float:
        c = self.cfg
        if i < c.warmup_steps:
            return (i + 1) / c.warmup_steps
        if c.decay == "constant":
            return 1.0
        frac = min(1.0, (i - c.warmup_steps) / max(1, self.total - c.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if c.decay == "cosine" else 1.0 - frac
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * shape
