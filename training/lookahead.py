"""Lookahead with an exponential average (airbench, Jordan 2024, after hlb-cifar10).

Every ``every`` optimiser steps the slow weights move towards the fast ones,
``slow <- slow + (1 - decay) (fast - slow)``, and the fast weights are reset to them. ``decay``
rises over the run as ``base**every * progress**3``: no pull early on, a strong one at the end,
where the weights become the average (a cheap cousin of weight averaging that also steers the
optimisation). BatchNorm running statistics are averaged with the weights.

The slow weights are part of the checkpoint, so a resumed run repeats the same steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Lookahead:
    """Lookahead state for ``model`` over a stage of ``total_steps`` optimiser steps."""

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5, base: float = 0.95) -> None:
        self.model = model
        self.total_steps = max(total_steps, 1)
        self.every = every
        self.base = base
        self.steps = 0
        self.slow: dict[str, Tensor] = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    def decay(self, step: int) -> float:
        """The slow weights' share kept at ``step``: ``base**every * (step / total)**3``."""
        return float(self.base**self.every * (min(step, self.total_steps) / self.total_steps) ** 3)

    @torch.no_grad()
    def after_step(self) -> None:
        """Call after every optimiser step of the stage."""
        self.steps += 1
        if self.steps % self.every == 0:
            self._pull(self.decay(self.steps))

    @torch.no_grad()
    def finish(self) -> None:
        """End of the stage: the weights become the slow weights."""
        self._pull(1.0)

    def _pull(self, decay: float) -> None:
        state = self.model.state_dict()
        for k, slow in self.slow.items():
            slow.lerp_(state[k].to(slow.dtype), 1 - decay)
            state[k].copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "slow": self.slow}

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        self.steps = int(blob["steps"])
        for k, v in blob["slow"].items():
            self.slow[k].copy_(v)
