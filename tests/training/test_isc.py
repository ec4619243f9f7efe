"""ISC on/off and detach change which parameters receive gradients (IMTA section 3.2)."""

from __future__ import annotations

from pathlib import Path

import torch

from models import create_model
from training.config import validate_config
from training.trainer import build_stage, save_atomic

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


def test_two_stage_freezes_backbone_and_trains_new_heads(tmp_path: Path) -> None:
    cfg = validate_config(
        tiny_config(tmp_path, recipe="two-stage", kd=True, model={**TINY_MODEL, "isc": True})
    )
    stage1 = create_model(TINY_MODEL["name"], **TINY_MODEL["kwargs"], num_classes=10)
    save_atomic({"arch": {"name": "msdnet", "kwargs": stage1.arch_kwargs}, "model": stage1.state_dict()},
                tmp_path / "stage1.pt")  # fmt: skip
    plan = build_stage(cfg, "stage2", 10, tmp_path, torch.device("cpu"))
    for name, p in plan.model.named_parameters():
        assert p.requires_grad == name.startswith("exits."), name
    backbone = {k: v for k, v in stage1.state_dict().items() if not k.startswith("exits.")}
    own = plan.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in backbone.items())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    plan.model.train()
    for m in plan.frozen:
        m.eval()
    loss = plan.criterion(plan.model(x), y, x)
    loss.backward()
    assert all(p.grad is not None for p in plan.model.exits.parameters())
