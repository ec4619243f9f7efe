"""Benchmark images: a package's own held test part (labelled; the original files for wrk, checked
against the test indices' digest the package recorded), or synthetic images (throughput only).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.package import read_manifest


class HeldImagesError(RuntimeError):
    """The package's test images cannot be found or are not the ones it recorded."""


@dataclass(frozen=True)
class Labelled:
    """Encoded images and their true class indices."""

    blobs: list[bytes]
    labels: list[int]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def sample_pngs(n: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> list[bytes]:
    """``n`` PNGs: smooth colour fields plus noise (so confidences vary between images)."""
    rng, (h, w) = np.random.default_rng(seed), size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        arr = rng.uniform(0, 255, 3) + yy[..., None] * rng.uniform(-200, 200, 3)
        arr = arr + xx[..., None] * rng.uniform(-200, 200, 3) + rng.normal(0, 30, (h, w, 3))
        out.append(_png(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def encode_pngs(x: torch.Tensor, y: torch.Tensor, n: int) -> Labelled:
    """The first ``n`` images of ``x [N, 3, H, W] uint8`` as PNGs, with labels ``y [N]``."""
    return Labelled(
        [_png(np.ascontiguousarray(i.permute(1, 2, 0).numpy())) for i in x[:n]], y[:n].tolist()
    )


def labelled_test_split(training_config: dict[str, Any], data_dir: str | None = None) -> Labelled:
    """The held test part of the split a model was trained on, as PNGs with labels (``data_dir``:
    where the data is). Raises ``DataError`` when the data cannot be read."""
    from training.config import recorded_config
    from training.data import load_dataset

    test = load_dataset(recorded_config(training_config, data_dir).data).test
    return encode_pngs(test.x, test.y, len(test))


def held_test_images(manifest: Any, data_dir: str | None = None) -> Labelled | None:
    """:func:`labelled_test_split` of a package; None when it records no training config
    (untrained) or its data is not on disk: then synthetic images stand in."""
    from training.data import DataError

    if (raw := manifest.provenance.training_config) is None:
        return None
    try:
        return labelled_test_split(raw, data_dir)
    except DataError as e:
        print(f"no labelled test images ({e}); using synthetic images", flush=True)
        return None


def held_test_jpegs(
    training_config: dict[str, Any], recorded_split: dict[str, Any] | None, data_dir: str | None = None
) -> tuple[list[Path], list[int]]:
    """The files and labels of the test part of the split ``training_config`` describes (the
    same listing and permutation as ``training.data``).

    Raises:
        HeldImagesError: the source has no image files, or the indices differ from the
            ``test_indices_sha256`` of ``recorded_split`` (the package's provenance).
    """
    from training.config import recorded_config
    from training.data import _image_root, list_image_folder, split_indices

    cfg = recorded_config(training_config, data_dir).data
    if cfg.source not in ("cifar10-jpg", "imagefolder"):
        raise HeldImagesError(f"data source {cfg.source!r} has no image files to send")
    items, _ = list_image_folder(_image_root(cfg))
    _, _, test_idx = split_indices(len(items), cfg.n_val, cfg.n_test, cfg.split_seed)
    digest = hashlib.sha256(test_idx.numpy().tobytes()).hexdigest()
    if (expected := (recorded_split or {}).get("test_indices_sha256")) not in (None, digest):
        raise HeldImagesError(f"test indices {digest[:12]} differ from the package's {expected[:12]}")
    return [items[int(i)][0] for i in test_idx], [items[int(i)][1] for i in test_idx]


def write_image_set(blobs: list[bytes], labels: list[int], out: Path, suffix: str = "jpg") -> Path:
    """``blobs`` and ``labels.txt`` (``file label`` per line) in ``out``, for the wrk script."""
    if len(blobs) != len(labels) or not blobs:
        raise ValueError(
            f"an image set needs as many labels as images (>0): {len(blobs)}, {len(labels)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.{suffix}" for i in range(len(blobs))]
    for name, blob in zip(names, blobs, strict=True):
        (out / name).write_bytes(blob)
    (out / "labels.txt").write_text("".join(f"{n} {c}\n" for n, c in zip(names, labels, strict=True)))
    return out


def write_held_set(
    package: Path, out: Path, data_dir: str | None = None, limit: int | None = None
) -> Path:
    """``out`` filled with the package's held test JPEGs (the first ``limit``) and ``labels.txt``."""
    prov = read_manifest(package).provenance
    if prov.training_config is None:
        raise HeldImagesError(f"{package} records no training config: its test images are unknown")
    files, labels = held_test_jpegs(prov.training_config, prov.split, data_dir)
    return write_image_set([f.read_bytes() for f in files[:limit]], labels[:limit], out)
