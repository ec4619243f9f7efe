"""Distillation teachers: an external frozen network (or an ensemble), and the stage-2 teacher,
the frozen stage-1 network's last exit read off the student's own forward pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.multi_exit import MultiExitNet
from training.checkpoint import load_trained
from training.checks import check_finished_on_split
from training.config import ConfigError, TrainConfig
from training.device import use_channels_last


def freeze(model: MultiExitNet) -> MultiExitNet:
    """``model`` with no parameter requiring grad, in eval mode (BatchNorm statistics fixed)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class TeacherEnsemble(nn.Module):
    """Several frozen teachers as one: ``forward(x)`` returns ``[mean of their last exits' logits]``
    (``[N, C]``), the list shape a :class:`MultiExitNet` gives. Averaging logits makes the soft
    target ``softmax(mean / T)`` the renormalised geometric mean of the teachers' tempered softmaxes
    (a product of experts). Distilling an ensemble into one network is Hinton et al.'s setting
    (2015); the shipped model and a born-again one, together, score 0.3-1.0 points per exit over
    the better of the two on validation (docs/training.md)."""

    def __init__(self, teachers: list[MultiExitNet]) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [torch.stack([t(x)[-1].float() for t in self.teachers]).mean(dim=0)]


def frozen_teachers(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    """``cfg.kd_teacher``'s network(s) (any registered architecture), frozen in eval mode: each from
    a finished run's checkpoint or an exported model package, trained on this run's split; several
    are averaged into one :class:`TeacherEnsemble`."""
    assert cfg.kd_teacher is not None  # the caller's branch condition
    paths = [cfg.kd_teacher] if isinstance(cfg.kd_teacher, str) else cfg.kd_teacher
    nets: list[MultiExitNet] = []
    for path in paths:
        teacher = load_trained(Path(path), "kd_teacher")
        check_finished_on_split(
            teacher.config, teacher.complete, teacher.reached, "kd_teacher", path, cfg
        )
        if len(teacher.classes) != num_classes:
            raise ConfigError(
                f"kd_teacher {path} predicts {len(teacher.classes)} classes; "
                f"this run's data has {num_classes}"
            )
        net = freeze(teacher.model.to(device))
        if use_channels_last(cfg, device):  # the student's layout: the teacher's convs run NHWC too
            net.to(memory_format=torch.channels_last)
        nets.append(net)
    return nets[0] if len(nets) == 1 else TeacherEnsemble(nets)


class SameForwardTeacher:
    """The frozen stage-1 network's last exit, computed from the stage-2 model's own forward pass.

    Stage 2 reuses the stage-1 network's blocks and exit-head bodies unchanged and trains new
    final linear layers, so the frozen network's last exit is its old final linear layer applied
    to the pooled feature the new last head reads. A forward hook on that head's body keeps the
    feature ``[N, D, 1, 1]``; :meth:`logits` maps it to ``[N, C]``. The backbone thus runs once
    per step, and teacher and students see the same features, batch statistics included when the
    frozen BatchNorm layers run in training mode (as in the official code, whose one forward
    returns both the new heads' logits and the frozen network's last exit).
    """

    def __init__(self, model: MultiExitNet, old_linear: nn.Linear) -> None:
        self.linear = old_linear.requires_grad_(False)
        self.feature: Tensor | None = None
        body = model.exits[-1].body
        assert isinstance(body, nn.Module)  # ExitHead's conv body
        body.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self.feature = output

    def logits(self) -> Tensor:
        """The teacher's ``[N, C]`` logits for the batch of the latest forward pass, detached."""
        if self.feature is None:
            raise RuntimeError("the teacher's logits are read after the model's forward pass")
        with torch.no_grad():
            out: Tensor = self.linear(torch.flatten(self.feature, 1))
        return out
