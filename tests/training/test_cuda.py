"""GPU: the training loop on CUDA (autocast, GradScaler, checkpoint, resume). Skipped without CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from service.engine.backends import cuda_works
from training.checkpoint import load_checkpoint
from training.config import validate_config
from training.trainer import run_training

from .helpers import TINY_MODEL, tiny_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp", ["auto", "fp16"])  # auto = bf16 on CUDA; fp16 needs the GradScaler
def test_training_on_cuda_checkpoints_and_resumes(tmp_path: Path, amp: str) -> None:
    if not cuda_works():
        pytest.skip("CUDA does not work on this machine")
    extra = {
        "device": "cuda",
        "amp": amp,
        "epochs": 2,
        "deterministic": False,  # deterministic CUDA kernels need CUBLAS_WORKSPACE_CONFIG
        "ge": True,
        "kd": True,
        "model": {**TINY_MODEL, "isc": True},
    }
    assert not run_training(validate_config(tiny_config(tmp_path, stop_after=1, **extra)))["complete"]
    result = run_training(validate_config(tiny_config(tmp_path, **extra)), resume=True)
    assert result["complete"]
    blob = load_checkpoint(tmp_path / "last.pt")
    assert blob["epoch"] == 2
    # The checkpoint must load on a machine without a GPU (the service's CPU image).
    assert {t.device.type for t in blob["model"].values()} == {"cpu"}
    last = blob["history"][-1]
    assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in last["val_exit_acc"])
