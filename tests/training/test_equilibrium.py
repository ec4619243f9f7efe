"""Gradient Equilibrium: gradients exactly as computed by hand (IMTA section 3.1)."""

from __future__ import annotations

import pytest
import torch

from models import create_model
from training.equilibrium import enable_gradient_equilibrium, equilibrium_hook, rescale

from .helpers import TINY_MODEL


def test_rescale_is_identity_forward_and_scales_backward() -> None:
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = rescale(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([4.0, 8.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0]))


def _chain(ge: bool) -> float:
    """Three stages of scalar 'blocks' f_k = w_k * input, exit losses c_k * feature (K = 3)."""
    x = torch.tensor(1.0, requires_grad=True)
    w, c = [2.0, 5.0, 11.0], [3.0, 7.0, 13.0]
    state, loss = x, torch.tensor(0.0)
    for k in range(3):
        f = w[k] * state
        to_exit, to_next = equilibrium_hook(k, 3, (f,)) if ge else ((f,), (f,))
        loss = loss + c[k] * to_exit[0]
        state = to_next[0]
    loss.backward()
    assert x.grad is not None
    return float(x.grad)


def test_chain_gradients_by_hand() -> None:
    # Without GE: dL/dx = 2 * (3 + 5 * (7 + 11 * 13)) = 1506.
    assert _chain(ge=False) == 1506.0
    # With GE, at block k the gradient is (g_exit + (K-k-1) g_next) / (K-k):
    # block 2: 13; block 1: (7 + 1 * 11 * 13) / 2 = 75; block 0: (3 + 2 * 5 * 75) / 3 = 251; x: 2 * 251.
    assert _chain(ge=True) == 502.0


def test_only_the_coarsest_scale_is_rescaled() -> None:
    fine = torch.tensor(1.0, requires_grad=True)
    coarse = torch.tensor(1.0, requires_grad=True)
    to_exit, to_next = equilibrium_hook(0, 3, (fine, coarse))
    loss = 3.0 * to_exit[1] + 5.0 * to_next[0] + 7.0 * to_next[1]
    loss.backward()
    assert float(fine.grad) == 5.0  # finer scales go on to the next block untouched
    assert float(coarse.grad) == pytest.approx((3.0 + 2 * 7.0) / 3, rel=1e-6)


def test_ge_on_msdnet_keeps_outputs_and_changes_backbone_gradients() -> None:
    torch.manual_seed(0)
    model = create_model(TINY_MODEL["name"], **TINY_MODEL["kwargs"])
    x = torch.randn(4, 3, 32, 32)
    plain = model(x)
    grads = []
    for ge in (False, True):
        enable_gradient_equilibrium(model, ge)
        model.zero_grad()
        out = model(x)
        for a, b in zip(out, plain, strict=True):
            assert torch.allclose(a, b)
        sum(z.square().sum() for z in out).backward()
        first_block = model.block_parameters()[0]
        assert first_block.grad is not None and model.exits[-1].linear.weight.grad is not None
        grads.append((first_block.grad.clone(), model.exits[-1].linear.weight.grad.clone()))
    # The last exit's head sees a scale of 1/(K-(K-1)) = 1: unchanged. Block 0 sees an average.
    assert torch.allclose(grads[0][1], grads[1][1])
    assert not torch.allclose(grads[0][0], grads[1][0])
