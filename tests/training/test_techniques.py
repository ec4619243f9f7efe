"""The IMTA techniques are really switched on in the training step, not only in their modules:
GE's per-block gradient factor, the lr_scaled control, and the stage-2 loss and ISC links."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from models import create_model
from training.blocks import GradNormMeter, block_groups, group_norms
from training.checkpoint import STAGE1, save_atomic
from training.config import validate_config
from training.loop import Criterion, train_one_epoch
from training.stages import StagePlan, build_stage, make_optimizer

from .helpers import TINY_MODEL, tiny_config

CPU = torch.device("cpu")
# One tensor per stage boundary (no finer scales that bypass GE's rescale): GE's factor on
# block i is exactly 1/(K - i) for a loss on the last exit alone.
RESNET = {"name": "resnet_exits", "kwargs": {"layers": [1, 1, 1, 1], "width": 8, "head_width": 16}}


def _batch(n: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _one_step(
    plan: StagePlan,
    cfg: Any,
    criterion: Criterion | None = None,
    batch: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, float]:
    """One real training step on a fixed batch: ``(per-block gradient norms [K], loss)``."""
    optimizer = make_optimizer(cfg, plan.model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    meter = GradNormMeter(block_groups(plan.model))
    stats = train_one_epoch(
        plan.model, iter([batch or _batch()]), 1, criterion or plan.criterion, optimizer, scheduler,
        scaler, device=CPU, progress=False, frozen=plan.frozen, grad_meter=meter,
    )  # fmt: skip
    return torch.tensor(meter.result()), stats.loss


def _plan(tmp_path: Path, stage: str, **cfg: Any) -> tuple[StagePlan, Any]:
    config = validate_config(tiny_config(tmp_path, **cfg))
    torch.manual_seed(0)  # the same initial weights with GE on and off
    return build_stage(config, stage, 10, tmp_path, CPU), config


def last_exit_ce(z: list[Tensor], y: Tensor, x: Tensor) -> Tensor:
    return F.cross_entropy(z[-1], y)


@pytest.mark.parametrize(("stage", "recipe"), [("joint", "joint"), ("stage1", "two-stage")])
def test_ge_scales_block_i_gradient_by_one_over_k_minus_i(
    tmp_path: Path, stage: str, recipe: str
) -> None:
    extra = {"recipe": recipe, "kd": recipe == "two-stage", "model": RESNET}
    on, cfg_on = _plan(tmp_path / "on", stage, ge=True, **extra)
    off, cfg_off = _plan(tmp_path / "off", stage, ge=False, **extra)
    ratio = _one_step(on, cfg_on, last_exit_ce)[0] / _one_step(off, cfg_off, last_exit_ce)[0]
    k = on.model.num_exits
    torch.testing.assert_close(ratio, torch.tensor([1 / (k - i) for i in range(k)]), rtol=1e-4, atol=0)


def test_ge_shrinks_early_blocks_under_the_real_loss(tmp_path: Path) -> None:
    # MSDNet, the run's own criterion (CE at every exit): the last block is untouched, every
    # earlier one gets less gradient than under plain training, the earliest the least.
    on, cfg_on = _plan(tmp_path / "on", "joint", ge=True)
    off, cfg_off = _plan(tmp_path / "off", "joint", ge=False)
    ratio = (_one_step(on, cfg_on)[0] / _one_step(off, cfg_off)[0]).tolist()
    assert ratio[-1] == pytest.approx(1.0, rel=1e-5)
    assert all(r < 0.9 for r in ratio[:-1]), ratio
    assert ratio == sorted(ratio), ratio


def test_lr_scaled_steps_block_i_at_lr_over_k_minus_i(tmp_path: Path) -> None:
    still = {
        "optim": {
            "lr": 0.05,
            "momentum": 0.0,
            "nesterov": False,
            "weight_decay": 0.0,
            "warmup_epochs": 0,
        }
    }
    plan, cfg = _plan(tmp_path, "joint", lr_scaled=True, model=RESNET, **still)
    groups = block_groups(plan.model)
    before = [[p.detach().clone() for p in params] for params in groups]
    grad_norms, _ = _one_step(plan, cfg)
    deltas = [
        torch.cat([(p.detach() - b).flatten() for p, b in zip(ps, bs, strict=True)])
        for ps, bs in zip(groups, before, strict=True)
    ]
    moved = torch.stack([torch.linalg.vector_norm(d) for d in deltas])
    k = plan.model.num_exits
    expected = torch.tensor([0.05 / (k - i) for i in range(k)])
    torch.testing.assert_close(moved / grad_norms, expected, rtol=1e-3, atol=0)
    # Every parameter is in exactly one group; the heads' group (first) keeps the base lr.
    opt = make_optimizer(cfg, plan.model)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in plan.model.parameters())
    assert opt.param_groups[0]["lr"] == 0.05


def _stage2_plan(tmp_path: Path, bn: str, **model: Any) -> tuple[StagePlan, Any, torch.nn.Module]:
    """A stage-2 plan on a saved stage-1 network (which it returns, as the teacher's source)."""
    torch.manual_seed(1)
    stage1 = create_model(TINY_MODEL["name"], **TINY_MODEL["kwargs"], num_classes=10)
    stage1.train()
    stage1(torch.randn(32, 3, 32, 32))  # non-trivial BatchNorm statistics
    save_atomic({"arch": {"name": "msdnet", "kwargs": stage1.arch_kwargs}, "model": stage1.state_dict()},
                tmp_path / STAGE1)  # fmt: skip
    cfg = {"recipe": "two-stage", "kd": True, "kd_form": "official", "stage2_bn": bn}
    plan, config = _plan(tmp_path, "stage2", model={**TINY_MODEL, "isc": True, **model}, **cfg)
    return plan, config, stage1


def official_kd_by_hand(
    z: list[Tensor], y: Tensor, teacher: Tensor, t: float, g: float, per_class: bool = True
) -> Tensor:
    """kalviny/IMTA's loss written out: CE at the last exit; at the others (1 - g) CE plus
    g T^2 sum_c p_t (log p_t - log p_s) / (N C) (``per_class``; else / N, the batchmean form)."""
    p_t = F.softmax(teacher / t, dim=1)
    total = F.cross_entropy(z[-1], y)
    for zk in z[:-1]:
        kl = (p_t * (p_t.log() - F.log_softmax(zk / t, dim=1))).sum()
        kl = kl / (p_t.numel() if per_class else p_t.shape[0])
        total = total + (1 - g) * F.cross_entropy(zk, y) + g * t * t * kl
    return total


@pytest.mark.parametrize("form", ["batchmean", "official"])
def test_joint_kd_loss_is_ofa_kd_by_hand(tmp_path: Path, form: str) -> None:
    # Joint recipe: the run's own last exit, detached, teaches the earlier ones.
    plan, cfg = _plan(tmp_path, "joint", kd=True, kd_form=form, model={**TINY_MODEL, "isc": True})
    x, y = _batch()
    with torch.no_grad():
        z = copy.deepcopy(plan.model).train()(x)
        expected = official_kd_by_hand(z, y, z[-1], 3.0, cfg.kd_weight, per_class=form == "official")
    _, loss = _one_step(plan, cfg, batch=(x, y))
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert loss != pytest.approx(sum(F.cross_entropy(zk, y) for zk in z).item(), rel=1e-3)


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_stage2_loss_is_the_official_kd_loss_by_hand(tmp_path: Path, bn: str) -> None:
    plan, cfg, stage1 = _stage2_plan(tmp_path, bn)
    assert (cfg.kd_weight, cfg.kd_temperature) == (0.9, 3.0)  # the official form's defaults
    x, y = _batch()
    # The same forward the step runs, on copies: students in training mode, the frozen parts
    # in eval mode unless stage2_bn is "train"; the teacher is stage 1's last exit in that mode.
    student = copy.deepcopy(plan.model).train()
    teacher_net = copy.deepcopy(stage1).train(bn == "train")
    frozen_names = {n for n, m in plan.model.named_modules() if any(m is f for f in plan.frozen)}
    assert bool(frozen_names) == (bn == "eval")
    for n, m in student.named_modules():
        if n in frozen_names:
            m.eval()
    with torch.no_grad():
        expected = official_kd_by_hand(student(x), y, teacher_net(x)[-1], 3.0, 0.9)
    _, loss = _one_step(plan, cfg, batch=(x, y))
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert loss != pytest.approx(sum(F.cross_entropy(z, y) for z in student(x)).item(), rel=1e-3)


def test_stage2_bn_train_moves_only_the_frozen_statistics(tmp_path: Path) -> None:
    plan, cfg, _ = _stage2_plan(tmp_path, "train")
    before = {k: v.clone() for k, v in plan.model.state_dict().items()}
    _one_step(plan, cfg)
    after = plan.model.state_dict()
    body_stats = [k for k in before if k.startswith("blocks.") and k.endswith("running_mean")]
    assert body_stats and all(not torch.equal(before[k], after[k]) for k in body_stats)
    frozen_weights = [k for k, p in plan.model.named_parameters() if not p.requires_grad]
    assert frozen_weights and all(torch.equal(before[k], after[k]) for k in frozen_weights)


@pytest.mark.parametrize("detach", [False, True])
def test_stage2_isc_links_carry_gradient_unless_detached(tmp_path: Path, detach: bool) -> None:
    plan, _, _ = _stage2_plan(tmp_path, "eval", isc_detach=detach)
    x, y = _batch()
    z = plan.model(x)
    F.cross_entropy(z[-1], y).backward()  # the last exit's loss alone
    exits = plan.model.exits
    k = len(exits)
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in exits[k - 1].isc_embed.parameters()
    )
    for i in range(k - 1):  # earlier heads are reached only through the ISC links
        reached = exits[i].linear.weight.grad is not None and bool(
            exits[i].linear.weight.grad.abs().sum() > 0
        )
        assert reached != detach, i
    assert all(p.grad is None for p in plan.model.parameters() if not p.requires_grad)
    assert group_norms(block_groups(plan.model), grads=True).sum() == 0  # the frozen network
