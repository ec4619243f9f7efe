"""Slow: two torchrun processes (gloo, CPU) train on synthetic data and end with equal weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .helpers import TINY_MODEL, tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("swa", [False, True], ids=["plain", "swa"])
def test_two_process_ddp_gloo(tmp_path: Path, swa: bool) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(run, epochs=2, ge=True, kd=True, model={**TINY_MODEL, "isc": True})
    if swa:  # the average's BatchNorm pass sees the whole split on every rank
        cfg.update(swa_start=1, optim={**cfg["optim"], "schedule": "constant"})
    path = write_config(tmp_path / "c.yaml", cfg)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(ROOT / "tests/training/ddp_worker.py"), str(path), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    for k in a:
        if not swa and k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # BatchNorm statistics are per process (no SyncBatchNorm), as in DDP's default
        assert torch.equal(a[k], b[k]), k
    # Rank 0 alone logs: one line per epoch, each epoch a half-size shard per process.
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert (run / "last.pt").is_file()
