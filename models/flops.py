"""Per-exit cumulative FLOPs, measured from the real modules with ``FlopCounterMode``.

Convention: FLOPs as counted by ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs; convs,
matmuls and linear layers; element-wise ops such as BatchNorm/ReLU/pooling count 0). The MSDNet
and IMTA papers report *multiply-adds*, i.e. about half of these FLOPs.

Cumulative FLOPs of exit ``k`` = FLOPs of stages ``0..k``, each stage being block + exit head.
This is what a sample that leaves at exit ``k`` really costs under stage-wise early exit (it ran
every earlier exit head to decide not to leave there).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.multi_exit import MultiExitNet, State


@torch.no_grad()
def stage_flops(model: MultiExitNet, input_size: tuple[int, int]) -> list[int]:
    """FLOPs of each stage for one image of ``input_size`` = (H, W); batch-size independent."""
    was_training = model.training
    hook = model.boundary_hook
    model.eval()
    model.set_boundary_hook(None)
    try:
        param = next(model.parameters())
        state: State = (torch.zeros(1, 3, *input_size, dtype=param.dtype, device=param.device),)
        out = []
        for k in range(model.num_exits):
            with FlopCounterMode(display=False) as counter:
                state, _ = model.forward_stage(k, state)
            out.append(int(counter.get_total_flops()))
        return out
    finally:
        model.set_boundary_hook(hook)
        model.train(was_training)


def cumulative_flops(model: MultiExitNet, input_size: tuple[int, int]) -> list[int]:
    """Cumulative FLOPs per exit (shallow to deep), strictly increasing for a sane network."""
    total, out = 0, []
    for f in stage_flops(model, input_size):
        total += f
        out.append(total)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
