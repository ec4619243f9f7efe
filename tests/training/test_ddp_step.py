"""Two gloo ranks, different data on each, one real training step through DistributedDataParallel:
both end with the weights of one step on the average of their two gradients, which they can only
reach by synchronising (without the all-reduce each would step on its own half and differ)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from models import create_model
from training.loop import train_one_epoch

from .helpers import TINY_MODEL

CPU = torch.device("cpu")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(TINY_MODEL["name"], **TINY_MODEL["kwargs"], isc=True).train()


def _batch(rank: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


def _loss(z: list[Tensor], y: Tensor, x: Tensor) -> Tensor:
    return torch.stack([F.cross_entropy(zk, y) for zk in z]).sum()


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _model()
        optimizer = _sgd(model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        train_one_epoch(DistributedDataParallel(model), iter([_batch(rank)]), 1, _loss, optimizer,
                        scheduler, scaler, device=CPU, progress=False)  # fmt: skip
        torch.save(dict(model.named_parameters()), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~2 min on a loaded 2-core machine
def test_ranks_with_different_data_end_with_the_averaged_step(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # The reference: one step on the mean of each rank's gradient on its own batch.
    reference = _model()
    grads = []
    for rank in (0, 1):
        replica = copy.deepcopy(reference)
        x, y = _batch(rank)
        _loss(replica(x), y, x).backward()
        grads.append([p.grad for p in replica.parameters()])
    for p, g0, g1 in zip(reference.parameters(), *grads, strict=True):
        p.grad = (g0 + g1) / 2
    _sgd(reference).step()
    alone = copy.deepcopy(_model())  # what rank 0 would hold had it not synchronised
    x, y = _batch(0)
    _loss(alone(x), y, x).backward()
    _sgd(alone).step()
    for name, p in reference.named_parameters():
        assert torch.equal(a[name], b[name]), name
        torch.testing.assert_close(a[name], p.detach(), rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a[n], p.detach()) for n, p in alone.named_parameters())
