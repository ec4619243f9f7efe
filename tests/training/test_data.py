"""Data sources on tiny JPEG trees: archive extraction, decode-once cache, fixed-seed split."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import DataConfig, OptimConfig
from training.data import DataError, Split, load_dataset, split_indices, train_batches
from training.schedule import lr_factor


def _jpeg_tree(root: Path, size: tuple[int, int], per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "airplane", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "train" / c / f"{i:04d}.jpg")
    return root


def test_cifar_archive_is_extracted_decoded_and_split(tmp_path: Path) -> None:
    tree = _jpeg_tree(tmp_path / "src", (32, 32))
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
    cfg = DataConfig(path=str(archive), cache_dir=str(tmp_path / "cache"), n_val=3, n_test=3)
    ds = load_dataset(cfg)
    assert ds.classes == ["airplane", "cat", "dog"]  # sorted folder names = label order
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 3, 3)
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape[1:] == (3, 32, 32)
    assert list((tmp_path / "cache").glob("decoded-*.pt"))  # decoded once, cached
    again = load_dataset(cfg)
    assert torch.equal(again.test.x, ds.test.x) and again.info == ds.info
    # An image moved to another class (same number of files) is not read from the stale cache.
    extracted = tmp_path / "cache" / "cifar10-jpg" / "train"
    (extracted / "cat" / "0000.jpg").rename(extracted / "dog" / "moved.jpg")
    relabelled = load_dataset(cfg)
    assert len(list((tmp_path / "cache").glob("decoded-*.pt"))) == 2
    labels = torch.cat([relabelled.train.y, relabelled.val.y, relabelled.test.y])
    assert int((labels == 2).sum()) == 7  # 6 dogs and the moved cat


def test_another_archive_replaces_the_extracted_tree(tmp_path: Path) -> None:
    # The cache keeps one extracted tree: a different archive at the same path (or a new copy)
    # must not be answered with the old tree's images.
    archive = tmp_path / "data.tar.gz"
    cfg = DataConfig(path=str(archive), cache_dir=str(tmp_path / "cache"), n_val=3, n_test=3)
    for name, per_class in (("first", 6), ("second", 4)):
        tree = _jpeg_tree(tmp_path / name, (32, 32), per_class=per_class)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tree / "train", arcname="train")
        ds = load_dataset(cfg)
        assert len(ds.train) + len(ds.val) + len(ds.test) == 3 * per_class
    extracted = tmp_path / "cache" / "cifar10-jpg" / "train" / "cat"
    assert len(list(extracted.glob("*.jpg"))) == 4  # no file left over from the first tree


def test_imagefolder_resizes_and_crops(tmp_path: Path) -> None:
    tree = _jpeg_tree(tmp_path / "src", (48, 40), per_class=4)
    cfg = DataConfig(
        source="imagefolder", path=str(tree / "train"), cache_dir=str(tmp_path / "c"), n_val=2, n_test=2
    )
    ds = load_dataset(cfg)
    assert ds.train.x.shape[1:] == (3, 32, 32) and len(ds.train) == 8


def test_missing_archive_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found at"):
        load_dataset(DataConfig(path=str(tmp_path / "nope.tar.gz"), cache_dir=str(tmp_path)))


def test_cutout_adds_squares_to_the_same_batches() -> None:
    # Cutout draws from its own random stream, so a run with it sees the batches of a run without
    # it (the same crops and flips), each image with one square zeroed.
    split = Split(torch.randint(1, 256, (64, 3, 16, 16), dtype=torch.uint8), torch.arange(64) % 4)
    plain_cfg = DataConfig(source="synthetic", mean=(0, 0, 0), std=(1, 1, 1), crop_padding=0)
    holed_cfg = plain_cfg.model_copy(update={"cutout": 6})
    plain, n = train_batches(split, plain_cfg, batch_size=16, epoch=2, seed=7)
    holed, _ = train_batches(split, holed_cfg, batch_size=16, epoch=2, seed=7)
    assert n == 4
    for (xp, yp), (xh, yh) in zip(plain, holed, strict=True):
        assert torch.equal(yp, yh)
        kept = xh != 0
        assert torch.equal(xh[kept], xp[kept])  # only zeroed pixels differ
        holes = (xh == 0).all(1).sum((1, 2))
        assert (holes > 0).all() and holes.max() <= 36


def test_split_is_fixed_and_disjoint() -> None:
    a = split_indices(100, 10, 20, seed=3)
    b = split_indices(100, 10, 20, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert sorted(torch.cat(a).tolist()) == list(range(100))
    assert not torch.equal(split_indices(100, 10, 20, seed=4)[1], a[1])


def test_lr_schedules() -> None:
    f = lr_factor(OptimConfig(warmup_epochs=1, schedule="cosine"), epochs=4, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(25) == pytest.approx(0.5) and f(40) == pytest.approx(0.0)
    s = lr_factor(OptimConfig(warmup_epochs=0, schedule="step"), epochs=4, steps_per_epoch=10)
    assert [s(0), s(19), s(20), s(30)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
