"""Benchmark inputs: synthetic PNGs and an untrained package with a budget table that works.

The budget table is fitted on synthetic images the way calibration fits a trained model's
(one confidence quantile ``q`` for every exit, searched so that the mean compute fraction
meets the budget), so a budget below 1 really exits early and the timings are honest.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models import create_model
from models.exit_policy import NEVER_EXIT, confidences, first_exit
from models.package import BudgetEntry, Preprocessing, new_manifest, save_package
from service.images import ImageLimits, images_to_batch

PREPROCESSING = Preprocessing(
    input_size=(32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616)
)


def sample_pngs(n: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> list[bytes]:
    """``n`` PNGs: smooth colour fields plus noise (so confidences vary between images)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        arr = rng.uniform(0, 255, 3) + yy[..., None] * rng.uniform(-200, 200, 3)
        arr = arr + xx[..., None] * rng.uniform(-200, 200, 3) + rng.normal(0, 30, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _thresholds_for(
    conf: torch.Tensor, fractions: torch.Tensor, budget: float
) -> tuple[list[float], float]:
    """Quantile-per-exit thresholds whose mean compute fraction on ``conf [K, N]`` meets ``budget``."""
    k = conf.shape[0]

    def at(q: float) -> tuple[list[float], float]:
        thr = [float(torch.quantile(conf[i], q)) for i in range(k - 1)] + [0.0]
        spent = float(fractions[first_exit(conf, torch.tensor(thr))].mean())
        return thr, spent

    lo, hi = 0.0, 1.0
    for _ in range(30):  # compute grows with q: bisect for the largest q within the budget
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at(mid)[1] <= budget else (lo, mid)
    return at(lo)


def calibrated_package(root: Path, arch: str, budgets: list[float]) -> Path:
    """Export an untrained ``arch`` (CIFAR-sized, ISC) with a fitted budget table under ``root``."""
    torch.manual_seed(0)
    model = create_model(arch, isc=True).eval()
    x = images_to_batch(sample_pngs(256, seed=0), PREPROCESSING, ImageLimits(2**30, 2**30))
    with torch.no_grad():
        conf = torch.stack([confidences(lg)[0] for lg in model(x)])
    manifest = new_manifest(
        model,
        name=f"bench-{arch}",
        classes=[str(i) for i in range(model.num_classes)],
        preprocessing=PREPROCESSING,
    )
    fractions = torch.tensor([e.compute_fraction for e in manifest.exits])
    rows = [
        BudgetEntry(budget=1.0, thresholds=[NEVER_EXIT] * model.num_exits, expected_compute_fraction=1.0)
    ]
    for b in sorted(set(budgets) - {1.0}):
        thr, spent = _thresholds_for(conf, fractions, b)
        rows.append(BudgetEntry(budget=b, thresholds=thr, expected_compute_fraction=spent))
    manifest = manifest.model_copy(update={"budgets": rows, "default_budget": 1.0})
    return save_package(model, manifest, root / manifest.name)
