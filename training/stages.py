"""What one stage of a recipe trains: the model, its loss, its frozen parts and its optimiser.

Recipes (IMTA, ``../shared/IMTA.md``):

- ``joint``: one stage; the configured model (ISC or not) trained end to end with the CE sum or
  OFA KD (teacher = its own last exit, detached, or an external ``kd_teacher``), with or without
  GE, or with GE's per-block learning rates (``lr_scaled``, a control).
- ``two-stage`` (the official procedure, kalviny/IMTA ``main_GE.py`` then ``main_IMTA.py``):
  stage 1 trains the plain network (no ISC) with GE and CE at every exit; stage 2 freezes the
  whole of it, blocks and exit-head bodies alike, builds new final linear layers (with the ISC
  embeddings if configured) on its pooled exit features and trains only those with OFA KD, the
  teacher being the frozen network's own last exit on the same forward pass.
- ``stage2``: that second stage alone, on a finished run's network (``init_from``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models import create_model
from models.multi_exit import MultiExitNet
from training.blocks import ge_scaled_param_groups
from training.checkpoint import STAGE1, load_checkpoint, rebuild_model
from training.config import TrainConfig
from training.equilibrium import enable_gradient_equilibrium
from training.loop import Criterion
from training.losses import multi_exit_ce, ofa_kd_loss
from training.teachers import SameForwardTeacher, freeze, frozen_teachers

STAGE2_NEW = ("linear", "isc_embed")  # exit-head parts that stage 2 trains


@dataclass
class StagePlan:
    model: MultiExitNet
    criterion: Criterion
    frozen: list[nn.Module]  # kept in eval mode while training (BatchNorm statistics fixed)


def plain_ce(smoothing: float = 0.0) -> Criterion:
    """CE summed over exits, with label ``smoothing``."""
    return lambda z, y, x: multi_exit_ce(z, y, smoothing)


def build_stage(
    cfg: TrainConfig, stage: str, num_classes: int, run_dir: Path, device: torch.device
) -> StagePlan:
    """The model, loss and frozen parts of ``stage`` ("joint", "stage1" or "stage2"; module
    docstring). Stage 2 reads the frozen network from ``run_dir / stage1.pt``."""
    kwargs: dict[str, Any] = {**cfg.model.kwargs, "num_classes": num_classes}
    if stage == "stage1":
        model = create_model(cfg.model.name, **kwargs)
        enable_gradient_equilibrium(model, cfg.ge)
        return StagePlan(model.to(device), plain_ce(cfg.label_smoothing), [])
    isc = {"isc": cfg.model.isc, "isc_detach": cfg.model.isc_detach} if cfg.model.isc else {}
    model = create_model(cfg.model.name, **kwargs, **isc).to(device)
    if stage == "joint":
        enable_gradient_equilibrium(model, cfg.ge)
        return StagePlan(model, joint_criterion(cfg, num_classes, device), [])
    return second_stage(cfg, model, run_dir, device)


def joint_criterion(cfg: TrainConfig, num_classes: int, device: torch.device) -> Criterion:
    """CE at every exit, or OFA KD from the run's own last exit or from ``kd_teacher``."""
    t, g, form, ls = cfg.kd_temperature, cfg.kd_weight, cfg.kd_form, cfg.label_smoothing
    if not cfg.kd:
        return plain_ce(ls)
    if cfg.kd_teacher is None:
        return lambda z, y, x: ofa_kd_loss(z, y, t, g, form=form, smoothing=ls)
    teacher = frozen_teachers(cfg, num_classes, device)
    mirror = cfg.kd_teacher_tta == "flip"

    def criterion(z: list[Tensor], y: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            target = teacher(x)[-1]
            if mirror:  # the mean logits over the image and its mirror: a steadier target
                target = 0.5 * (target + teacher(x.flip(3))[-1])
        return ofa_kd_loss(z, y, t, g, teacher=target, teach_last=True, form=form, smoothing=ls)

    return criterion


def second_stage(
    cfg: TrainConfig, model: MultiExitNet, run_dir: Path, device: torch.device
) -> StagePlan:
    """Stage 2 on ``model`` (built with this run's ISC setting): every stage-1 weight but the
    final linear layers is loaded and frozen; those layers and the ISC embeddings are new."""
    stage1 = freeze(rebuild_model(load_checkpoint(run_dir / STAGE1)).to(device))
    reused = {
        k: v
        for k, v in stage1.state_dict().items()
        if not (k.startswith("exits.") and k.split(".")[2] in STAGE2_NEW)
    }
    model.load_state_dict(reused, strict=False)
    new_ids = {
        id(p)
        for head in model.exits
        for name, part in head.named_children()
        if name in STAGE2_NEW
        for p in part.parameters()
    }
    for p in model.parameters():
        p.requires_grad_(id(p) in new_ids)
    frozen: list[nn.Module] = []
    if cfg.stage2_bn == "eval":  # "train": the official code's model.train() on everything
        frozen = [m for name, m in model.named_children() if name != "exits"]
        frozen += [m for h in model.exits for name, m in h.named_children() if name not in STAGE2_NEW]
    if not cfg.kd:
        return StagePlan(model, plain_ce(cfg.label_smoothing), frozen)
    last = stage1.exits[-1].linear
    assert isinstance(last, nn.Linear)  # ExitHead's final layer
    teacher = SameForwardTeacher(model, last)
    t, g, form = cfg.kd_temperature, cfg.kd_weight, cfg.kd_form

    ls = cfg.label_smoothing

    def criterion(z: list[Tensor], y: Tensor, x: Tensor) -> Tensor:
        return ofa_kd_loss(z, y, t, g, teacher=teacher.logits(), form=form, smoothing=ls)

    return StagePlan(model, criterion, frozen)


def make_optimizer(cfg: TrainConfig, model: MultiExitNet) -> torch.optim.SGD:
    """SGD over the parameters that train: one group, GE's per-block groups (``lr_scaled``), or
    BatchNorm biases apart at ``optim.norm_bias_lr_scale`` x the rate (same decay per step)."""
    o = cfg.optim
    groups: list[dict[str, Any]]
    if cfg.lr_scaled:
        groups = ge_scaled_param_groups(model, o.lr)
    elif o.norm_bias_lr_scale != 1.0:
        norm_biases = {
            id(m.bias)
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
        }
        trained = [p for p in model.parameters() if p.requires_grad]
        s = o.norm_bias_lr_scale
        groups = [
            {"params": [p for p in trained if id(p) not in norm_biases]},
            {
                "params": [p for p in trained if id(p) in norm_biases],
                "lr": o.lr * s, "weight_decay": o.weight_decay / s,
            },
        ]  # fmt: skip
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return torch.optim.SGD(
        groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )
