"""Atomic checkpoints with everything ``--resume`` needs to continue exactly.

A checkpoint holds the model, optimiser, scheduler and grad-scaler states, the RNG states
(python, numpy, torch CPU and CUDA), the stage and epoch reached, the config and the history.
It is written to a temporary file in the same directory and moved into place with ``os.replace``,
so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import create_model
from models.multi_exit import MultiExitNet
from models.package import MANIFEST, PackageError, load_package
from training.config import ConfigError

LAST = "last.pt"
STAGE1 = "stage1.pt"
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng")
"""Checkpoint entries only ``--resume`` reads: a finished run can go without them."""


class CheckpointError(Exception):
    """A checkpoint is missing or unreadable."""


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` via a temporary file + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch.load raises assorted types for damaged files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    return blob


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_spec(model: MultiExitNet) -> dict[str, Any]:
    """Registry name + constructor kwargs, so a checkpoint rebuilds its model from itself."""
    return {"name": model.arch_name, "kwargs": dict(model.arch_kwargs)}


def rebuild_model(blob: dict[str, Any]) -> MultiExitNet:
    """The model of a checkpoint, weights loaded, in eval mode on the CPU."""
    spec = blob["arch"]
    model = create_model(spec["name"], **spec["kwargs"])
    model.load_state_dict(blob["model"])
    model.eval()
    return model


@dataclass(frozen=True)
class TrainedNetwork:
    """A trained network with what it records about its training."""

    model: MultiExitNet  # eval mode, on the CPU
    config: dict[str, Any]  # the TrainConfig it was trained with, as a dict
    classes: list[str]
    complete: bool  # False for the checkpoint of an unfinished run
    reached: str  # "stage epoch N" of a checkpoint, or "package"


def is_model_package(path: Path) -> bool:
    """A package directory (with its manifest) or a package ``.tar``, as ``export`` writes."""
    return (path / MANIFEST).is_file() or (path.is_file() and path.suffix == ".tar")


def load_trained(path: Path, role: str) -> TrainedNetwork:
    """The network at ``path``: a model package (directory or ``.tar``), a run directory (its
    ``last.pt``) or a checkpoint file; ``role`` names it in errors (a flag or an argument)."""
    path = path.expanduser()
    if is_model_package(path):
        try:
            package = load_package(path)
        except PackageError as e:
            raise ConfigError(f"{role}: {e}") from None
        config = package.manifest.provenance.training_config
        if config is None:
            raise ConfigError(
                f"{role} {path} records no training config, so its split cannot be checked"
            )
        classes = list(package.manifest.classes)
        return TrainedNetwork(package.model.eval(), config, classes, True, "package")
    blob = load_checkpoint(path / LAST if path.is_dir() else path)
    return TrainedNetwork(
        rebuild_model(blob),
        blob["config"],
        list(blob["classes"]),
        bool(blob.get("complete", False)),
        reached(blob),
    )


def reached(blob: dict[str, Any]) -> str:
    """Where a checkpoint's run stood when it was written: ``"<stage> epoch <n>"``."""
    return f"{blob['stage']} epoch {blob['epoch']}"
