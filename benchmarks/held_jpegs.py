"""The held test part of a package's training split as the original JPEG files, with labels.

The side-by-side benchmark sends real JPEGs as a client would, not images decoded and encoded
again: the files are picked with the split of ``training.data`` (same folder listing, same
permutation), and the pick is checked against the test indices' digest the package recorded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from benchmarks.wrk_load import write_image_set


class HeldImagesError(RuntimeError):
    """The package's test images cannot be found or are not the ones it recorded."""


def held_test_jpegs(
    training_config: dict[str, Any], recorded_split: dict[str, Any] | None, data_dir: str | None = None
) -> tuple[list[Path], list[int]]:
    """Files and labels of the test part of the split ``training_config`` describes.

    Raises:
        HeldImagesError: the source is not an image folder, or the indices differ from the
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
    expected = (recorded_split or {}).get("test_indices_sha256")
    if expected is not None and digest != expected:
        raise HeldImagesError(f"test indices {digest[:12]} differ from the package's {expected[:12]}")
    picked = [items[int(i)] for i in test_idx]
    return [f for f, _ in picked], [label for _, label in picked]


def write_held_set(package: Path, out: Path, data_dir: str | None = None) -> Path:
    """``out`` filled with the package's held test JPEGs and ``labels.txt`` for the wrk script."""
    from models.package import read_manifest

    prov = read_manifest(package).provenance
    if prov.training_config is None:
        raise HeldImagesError(f"{package} records no training config: its test images are unknown")
    files, labels = held_test_jpegs(prov.training_config, prov.split, data_dir)
    return write_image_set([f.read_bytes() for f in files], labels, out)
