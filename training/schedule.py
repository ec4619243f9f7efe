"""Learning-rate schedule: a per-step multiplier for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import math
from collections.abc import Callable

from training.config import OptimConfig


def lr_factor(cfg: OptimConfig, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step multiplier of ``cfg.lr``: linear warm-up from ``cfg.warmup_start``, then cosine or
    linear to 0, step drops or constant."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    total = max(epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warm:
            return cfg.warmup_start + (1 - cfg.warmup_start) * (step + 1) / warm
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return 1.0 - progress
        if cfg.schedule == "constant":
            return 1.0
        return cfg.gamma ** sum(step >= m * total for m in cfg.milestones)

    return factor
