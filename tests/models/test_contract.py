"""The MultiExitNet contract, checked for every registered architecture (timm test_models idea)."""

import itertools

import pytest
import torch

from models.flops import cumulative_flops
from tests.conftest import TINY_CONFIGS, randomize_batchnorm, tiny_model

CASES = [(name, isc) for name in sorted(TINY_CONFIGS) for isc in (False, True)]


@pytest.mark.parametrize(("name", "isc"), CASES)
def test_one_logits_tensor_per_exit(name: str, isc: bool) -> None:
    model, size = tiny_model(name, isc=isc)
    model.eval()
    out = model(torch.randn(3, 3, size, size))
    assert isinstance(out, list) and len(out) == model.num_exits >= 2
    for logits in out:
        assert logits.shape == (3, model.num_classes)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "isc"), CASES)
def test_every_parameter_gets_a_gradient(name: str, isc: bool) -> None:
    model, size = tiny_model(name, isc=isc)
    model.train()
    out = model(torch.randn(4, 3, size, size))
    sum(o.logsumexp(dim=1).mean() for o in out).backward()
    # Parameters fixed by design (WideNet's whitening stem, its BatchNorm scales) take no gradient.
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(("name", "isc"), CASES)
def test_stagewise_execution_equals_forward(name: str, isc: bool) -> None:
    model, size = tiny_model(name, isc=isc)
    randomize_batchnorm(model)
    model.eval()
    x = torch.randn(5, 3, size, size)
    with torch.no_grad():
        full = model(x)
        state: tuple[torch.Tensor, ...] = (x,)
        for k in range(model.num_exits):
            outputs = model.stage(k)(*state)
            *next_state, logits = outputs
            assert torch.equal(logits, full[k]), f"stage {k} differs from forward"
            state = tuple(next_state)
        assert state == ()


@pytest.mark.parametrize(("name", "isc"), CASES)
def test_shrinking_batch_gives_each_sample_its_own_answer(name: str, isc: bool) -> None:
    """What the service does: drop samples that exited after a stage and continue with the rest."""
    model, size = tiny_model(name, isc=isc)
    randomize_batchnorm(model)
    model.eval()
    x = torch.randn(6, 3, size, size)
    keep = torch.arange(6)
    with torch.no_grad():
        full = model(x)
        state: tuple[torch.Tensor, ...] = (x,)
        for k in range(model.num_exits):
            state, logits = model.forward_stage(k, state)
            torch.testing.assert_close(logits, full[k][keep], rtol=1e-4, atol=1e-5)
            survivors = torch.arange(len(keep)) % 2 == 0  # half leave at every exit
            keep = keep[survivors]
            state = tuple(t[survivors] for t in state)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_flops_increase_along_the_exits(name: str) -> None:
    model, size = tiny_model(name)
    flops = cumulative_flops(model, (size, size))
    assert len(flops) == model.num_exits
    assert all(b > a > 0 for a, b in itertools.pairwise(flops))


def test_isc_heads_read_the_previous_logits() -> None:
    model, size = tiny_model("msdnet", isc=True)
    assert not model.exits[0].isc and all(h.isc for h in model.exits[1:])
    model.eval()
    state, _ = model.forward_stage(0, (torch.randn(2, 3, size, size),))
    features, prev = state[:-1], state[-1]
    _, a = model.forward_stage(1, (*features, prev))
    _, b = model.forward_stage(1, (*features, prev + 5.0))
    assert not torch.allclose(a, b), "exit 1 ignores exit 0's logits"


@pytest.mark.parametrize("detach", [False, True])
def test_isc_detach_cuts_the_backward_link(detach: bool) -> None:
    model, size = tiny_model("msdnet", isc=True, isc_detach=detach)
    model.train()
    out = model(torch.randn(4, 3, size, size))
    out[1].sum().backward()  # only exit 1's loss
    head0_grad = model.exits[0].linear.weight.grad
    reached = head0_grad is not None and bool(head0_grad.abs().sum() > 0)
    assert reached is (not detach)


def test_boundary_hook_is_called_at_every_stage() -> None:
    model, size = tiny_model("msdnet")
    seen: list[int] = []

    def hook(k: int, num_exits: int, feats: tuple[torch.Tensor, ...]):
        seen.append(k)
        assert num_exits == model.num_exits
        return feats, feats

    model.set_boundary_hook(hook)
    model(torch.randn(2, 3, size, size))
    assert seen == list(range(model.num_exits))
