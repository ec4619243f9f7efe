"""Per-block views of a multi-exit network: GE's learning-rate control and the norms we log.

Block i (0-based, K blocks) is :meth:`MultiExitNet.stage_blocks`'s i-th module: for MSDNet
``blocks[i]``, the multi-scale stem included in block 0; exit head i is ``exits[i]`` (its conv
body, final linear layer and ISC embedding). These groups hold every parameter of the network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.multi_exit import MultiExitNet


def block_groups(model: MultiExitNet) -> list[list[nn.Parameter]]:
    """The parameters of each block, shallow first (K lists)."""
    return [list(block.parameters()) for block in model.stage_blocks()]


def head_groups(model: MultiExitNet) -> list[list[nn.Parameter]]:
    """The parameters of each exit head, shallow first (K lists)."""
    return [list(head.parameters()) for head in model.exits]


def ge_scaled_param_groups(model: MultiExitNet, lr: float) -> list[dict[str, Any]]:
    """SGD parameter groups for the ``lr_scaled`` control: block i at ``lr / (K - i)``.

    That is the factor by which Gradient Equilibrium scales the gradient reaching block i
    (exactly so for a loss on the last exit alone; IMTA section 3.1), so this control asks whether
    GE is more than a per-block learning rate. The exit heads keep ``lr``: GE rescales only the
    features' gradient on its way into the backbone, never the heads' own. The first group is
    the heads' (its lr is the one logged). Only parameters that require grad are included.
    """
    k = model.num_exits
    heads = [p for group in head_groups(model) for p in group if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": heads, "lr": lr}]
    for i, params in enumerate(block_groups(model)):
        groups.append({"params": [p for p in params if p.requires_grad], "lr": lr / (k - i)})
    return groups


def group_norms(groups: list[list[nn.Parameter]], *, grads: bool) -> Tensor:
    """L2 norm of each group's gradients (``grads``) or weights: ``[len(groups)]`` float32, on the
    parameters' device; a group without gradients counts 0 (a frozen block)."""
    device = next((p.device for params in groups for p in params), torch.device("cpu"))
    norms = []
    for params in groups:
        tensors = [p.grad if grads else p.detach() for p in params]
        present = [t for t in tensors if t is not None]
        if not present:  # stays on the device: no host sync per step
            norms.append(torch.zeros((), device=device))
            continue
        norms.append(torch.nn.utils.get_total_norm(present, norm_type=2.0).float())
    return torch.stack(norms)


class GradNormMeter:
    """Root-mean-square over steps of each group's gradient norm (call :meth:`update` after the
    backward pass, with the gradients unscaled)."""

    def __init__(self, groups: list[list[nn.Parameter]]) -> None:
        self.groups = groups
        self.sum_sq: Tensor | None = None
        self.steps = 0

    def update(self) -> None:
        sq = group_norms(self.groups, grads=True).square()
        self.sum_sq = sq if self.sum_sq is None else self.sum_sq + sq
        self.steps += 1

    def result(self) -> list[float]:
        if self.sum_sq is None:
            return [0.0] * len(self.groups)
        return (self.sum_sq / self.steps).sqrt().tolist()
