"""Small configs and a CLI runner shared by the training tests (synthetic data only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_MODEL: dict[str, Any] = {
    "name": "msdnet",
    "kwargs": {"n_blocks": 3, "step": 1, "base": 1, "n_channels": 8, "growth_rate": 4},
}


def tiny_config(run_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A config dict that trains a 3-exit MSDNet on 256 synthetic images in a few seconds."""
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir),
        "epochs": 1,
        "batch_size": 32,
        "threads": 1,
        "progress": False,
        "deterministic": True,
        "model": dict(TINY_MODEL),
        "data": {"source": "synthetic", "synthetic_size": 320, "n_val": 64, "n_test": 64},
        "optim": {"lr": 0.05, "warmup_epochs": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path
