"""Gradient Equilibrium (IMTA section 3.1) as an identity-forward autograd function and a hook.

Plain multi-exit training sums K losses, so block i receives the summed gradients of every exit
after it and gradient magnitudes grow with the depth still to come. GE rescales *gradients*, not
losses. Exactly as in the official code (kalviny/IMTA, ``msdnet_ge.py``), after block i (0-based)
the coarsest-scale feature ``x`` that exit i reads is rescaled twice::

    a = rescale(x, 1 / (K - i))      # exit i reads a
    b = rescale(a, K - i - 1)        # block i + 1 reads b (finer scales pass unchanged)

so ``dL/dx = (g_exit + (K - i - 1) g_next) / (K - i)``: the gradient reaching block i is the
*average* of its own exit's gradient and the (already averaged) gradient of the later exits,
rather than their sum. Only the last tensor of the feature tuple (MSDNet's coarsest scale, the
one the exits read) is rescaled, as in the official code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.multi_exit import MultiExitNet, State


class GradientRescale(torch.autograd.Function):
    """``forward(x, s) = x``; ``backward(g) = s * g`` (no gradient for ``s``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def rescale(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass."""
    out: Tensor = GradientRescale.apply(x, scale)
    return out


def equilibrium_hook(k: int, num_exits: int, features: State) -> tuple[State, State]:
    """Boundary hook for :meth:`MultiExitNet.set_boundary_hook` (see the module docstring).

    Args:
        k: index of the block just run (0-based).
        num_exits: K.
        features: the block's output tensors; the last one is what the exit reads.
    Returns:
        ``(features for exit k, features for block k + 1)``.
    """
    *finer, coarsest = features
    to_exit = rescale(coarsest, 1.0 / (num_exits - k))
    to_next = rescale(to_exit, float(num_exits - k - 1))
    return (*finer, to_exit), (*finer, to_next)


def enable_gradient_equilibrium(model: MultiExitNet, enabled: bool = True) -> None:
    """Install (or remove) the GE hook on ``model``."""
    model.set_boundary_hook(equilibrium_hook if enabled else None)
