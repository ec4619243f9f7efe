"""Shared fixtures: tiny models of every registered family, and small exported packages."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from models import create_model
from models.multi_exit import MultiExitNet
from models.package import (
    BudgetEntry,
    ModelPackage,
    Preprocessing,
    new_manifest,
    save_package,
)

# Small overrides for every registered architecture so the contract tests run in seconds.
# A newly registered model must be added here (test_every_registered_model_is_covered).
TINY_MSDNET: dict[str, Any] = dict(n_blocks=3, step=1, base=1, n_channels=8, growth_rate=4)
TINY_RESNET: dict[str, Any] = dict(width=8, head_width=16, layers=(1, 1, 1, 1))
TINY_CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "msdnet": (TINY_MSDNET, 32),
    "msdnet_cifar_anytime": (dict(n_blocks=3, n_channels=8, growth_rate=4), 32),
    "msdnet_cifar_budget": (dict(n_blocks=3, n_channels=8, growth_rate=4), 32),
    "msdnet_imagenet": (
        dict(num_classes=10, n_blocks=2, step=2, base=2, n_channels=8, growth_rate=4),
        64,
    ),
    "resnet_exits": (TINY_RESNET, 32),
    "resnet18_exits": (dict(num_classes=10, **TINY_RESNET), 64),
    "resnet50_exits": (dict(num_classes=10, **TINY_RESNET), 64),
    "widenet": (dict(groups=((16, 1, True), (32, 3, True), (32, 2, False)), exit_after=(0, 1, 2)), 32),
    "widenet_teacher": (dict(groups=((16, 3, True), (32, 3, True)), exit_after=(0, 1)), 32),
}

CIFAR_PREPROCESSING = Preprocessing(
    input_size=(32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def tiny_model(name: str, **extra: Any) -> tuple[MultiExitNet, int]:
    kwargs, size = TINY_CONFIGS[name]
    return create_model(name, **{**kwargs, **extra}), size


def randomize_batchnorm(model: torch.nn.Module) -> None:
    """Give BatchNorm layers non-trivial running stats so eval-mode tests exercise them."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def make_package(path: Path, name: str = "msdnet", *, isc: bool = False, tar: bool = False) -> Path:
    """Export a tiny untrained package with a two-row budget table."""
    torch.manual_seed(0)
    model, _ = tiny_model(name, isc=isc)
    randomize_batchnorm(model)
    model.eval()
    k = model.num_exits
    # exit_fractions (share of images leaving at each exit) let the service price each row in time.
    half = [0.5] + [0.0] * (k - 2) + [0.5]
    budgets = [
        BudgetEntry(
            budget=0.5,
            thresholds=[0.5] * (k - 1) + [0.0],
            expected_compute_fraction=0.5,
            exit_fractions=half,
        ),
        BudgetEntry(
            budget=1.0,
            thresholds=[2.0] * k,
            expected_compute_fraction=1.0,
            exit_fractions=[0.0] * (k - 1) + [1.0],
        ),
    ]
    manifest = new_manifest(
        model,
        name=f"tiny-{name}{'-isc' if isc else ''}",
        classes=[f"class_{i}" for i in range(model.num_classes)],
        preprocessing=CIFAR_PREPROCESSING
        if TINY_CONFIGS[name][1] == 32
        else CIFAR_PREPROCESSING.model_copy(update={"input_size": (64, 64)}),
        budgets=budgets,
        default_budget=0.5,
    )
    out = path / (manifest.name + (".tar" if tar else ""))
    return save_package(model, manifest, out)


@pytest.fixture(scope="session")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MSDNet package with ISC (directory form), shared by read-only tests."""
    return make_package(tmp_path_factory.mktemp("pkg"), "msdnet", isc=True)


def make_int8_package(root: Path) -> Path:
    """Train a tiny MSDNet on synthetic images (100 % accurate: int8 rounding flips no answer),
    calibrate, and export it with its int8 graphs, as a user would: ``root/pkg``."""
    from tests.training.helpers import TINY_MODEL, tiny_config, write_config
    from training.cli import main

    run = root / "run"
    cfg = tiny_config(
        run,
        epochs=6,
        model={**TINY_MODEL, "isc": True},
        data={"synthetic_size": 1200, "n_val": 200, "n_test": 200},
        optim={"lr": 0.1},
    )
    assert main(["train", "--config", str(write_config(root / "c.yaml", cfg))]) == 0
    assert main(["calibrate", "--run-dir", str(run), "--budgets", "0.5,0.7,1.0"]) == 0
    pkg = root / "pkg"
    assert main(["export", "--run-dir", str(run), "--out", str(pkg), "--name", "tiny-int8"]) == 0
    return pkg


@pytest.fixture(scope="session")
def int8_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny package with fp32 and int8 stage graphs (read-only: copy it to change it)."""
    return make_int8_package(tmp_path_factory.mktemp("int8"))


def held_test_images(pkg: ModelPackage, n: int = 64) -> tuple[list[bytes], np.ndarray]:
    """The first ``n`` held test images as PNG files, and the same images preprocessed."""
    from training.quantize import package_splits

    x, _ = package_splits(pkg.manifest, None)["test"]
    pre = pkg.manifest.preprocessing
    mean, std = np.array(pre.mean).reshape(3, 1, 1), np.array(pre.std).reshape(3, 1, 1)
    pixels = np.rint((x[:n] * std + mean) * 255).clip(0, 255).astype(np.uint8)
    pngs = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img.transpose(1, 2, 0)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    return pngs, ((pixels / 255.0 - mean) / std).astype(np.float32)
