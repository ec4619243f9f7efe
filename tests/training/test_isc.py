"""ISC on/off and detach change which parameters receive gradients (IMTA section 3.2)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from models import create_model
from training.checkpoint import save_atomic
from training.config import validate_config
from training.loop import train_one_epoch
from training.stages import build_stage

from .helpers import TINY_MODEL, tiny_config


def _grads_from_exit1(**isc: bool) -> dict[str, bool]:
    torch.manual_seed(0)
    model = create_model(TINY_MODEL["name"], **TINY_MODEL["kwargs"], **isc)
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    out[1].square().sum().backward()  # only exit 1's loss
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}


def test_isc_link_carries_gradient_to_the_previous_exit() -> None:
    plain = _grads_from_exit1()
    isc = _grads_from_exit1(isc=True)
    detached = _grads_from_exit1(isc=True, isc_detach=True)
    head0 = [n for n in plain if n.startswith("exits.0.")]
    assert head0 and not any(plain[n] for n in head0)  # without ISC, exit 1 never reaches head 0
    assert all(isc[n] for n in head0 if "bias" not in n or "linear" in n)  # ISC: it does
    assert not any(detached[n] for n in head0)  # detach cuts that path again
    embed = [n for n in isc if n.startswith("exits.1.isc_embed")]
    assert embed and all(isc[n] for n in embed if n.endswith("weight"))
    assert all(detached[n] for n in embed if n.endswith("weight"))  # the embedding itself still learns
    assert not any(n.startswith("exits.1.isc_embed") for n in plain)


def test_two_stage_freezes_stage1_and_trains_new_linear_heads(tmp_path: Path) -> None:
    cfg = validate_config(
        tiny_config(tmp_path, recipe="two-stage", kd=True, model={**TINY_MODEL, "isc": True})
    )
    stage1 = create_model(TINY_MODEL["name"], **TINY_MODEL["kwargs"], num_classes=10)
    save_atomic({"arch": {"name": "msdnet", "kwargs": stage1.arch_kwargs}, "model": stage1.state_dict()},
                tmp_path / "stage1.pt")  # fmt: skip
    plan = build_stage(cfg, "stage2", 10, tmp_path, torch.device("cpu"))
    new = re.compile(r"exits\.\d+\.(linear|isc_embed)\.")
    for name, p in plan.model.named_parameters():
        assert p.requires_grad == bool(new.match(name)), name  # only final linear + ISC embedding train
    reused = {k: v for k, v in stage1.state_dict().items() if not new.match(k)}
    assert any(k.startswith("exits.0.body") for k in reused)  # the heads' conv bodies come from stage 1
    own = plan.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in reused.items())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    trainable = [p for p in plan.model.parameters() if p.requires_grad]
    before = {k: v.clone() for k, v in plan.model.state_dict().items()}
    opt = torch.optim.SGD(trainable, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_one_epoch(plan.model, iter([(x, y)]), 1, plan.criterion, opt, sched, scaler,
                    device=torch.device("cpu"), progress=False, frozen=plan.frozen)  # fmt: skip
    after = plan.model.state_dict()
    for k, v in before.items():  # frozen weights *and* BatchNorm statistics stay; new parts move
        if not new.match(k):
            assert torch.equal(after[k], v), k
        elif k.endswith("weight"):
            assert not torch.equal(after[k], v), k
