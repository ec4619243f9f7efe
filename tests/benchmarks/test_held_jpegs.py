"""The held test JPEGs are the files of the training split's test part, checked by its digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from benchmarks.harness.data import HeldImagesError, held_test_jpegs
from training.data import split_indices


def _tree(root: Path) -> dict[str, int]:
    """Twelve tiny files in two class folders; returns file name -> label."""
    labels = {}
    for label, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            name = f"{cls}_{i}.jpg"
            (root / cls / name).write_bytes(name.encode())
            labels[name] = label
    return labels


def test_picks_the_test_part_and_checks_its_digest(tmp_path: Path) -> None:
    labels = _tree(tmp_path)
    config = {"data": {"source": "imagefolder", "path": str(tmp_path), "n_val": 2, "n_test": 3}}
    _, _, test_idx = split_indices(12, 2, 3, 0)
    digest = hashlib.sha256(test_idx.numpy().tobytes()).hexdigest()
    files, got = held_test_jpegs(config, {"test_indices_sha256": digest})
    assert len(files) == 3 and got == [labels[f.name] for f in files]
    ordered = sorted(labels, key=lambda n: (labels[n], n))  # the folder listing's order
    assert [f.name for f in files] == [ordered[int(i)] for i in test_idx]
    with pytest.raises(HeldImagesError, match="differ from the package's"):
        held_test_jpegs(config, {"test_indices_sha256": "0" * 64})


def test_a_source_without_files_is_refused() -> None:
    config = {"data": {"source": "synthetic"}}
    with pytest.raises(HeldImagesError, match="no image files"):
        held_test_jpegs(config, None)
