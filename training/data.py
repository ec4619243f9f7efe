"""Datasets as in-memory uint8 tensors, a fixed-seed train/val/test split, and batched augmentation.

Why tensors and not a DataLoader: on a 2-core CPU, JPEG-decoding workers would take the cores the
model needs. Small images (CIFAR: 50,000 x 3 x 32 x 32 = 150 MB) are decoded once into a cached
``uint8`` tensor; each batch is then augmented in the main process with vectorised tensor ops
(``training/augment.py``), per sample, at negligible cost next to the forward/backward pass.

Sources: the CIFAR-10 JPEG archive of ``../shared/data`` (extracted once into ``cache_dir``), any
ImageFolder tree (decoded at ``input_size``: shorter side resized, centre crop), torchvision's
CIFAR-10/100 when already on disk, and synthetic data for tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor
from torch.utils.data import DistributedSampler

from training.augment import (
    cutout,
    normalize,
    random_crop_flip,
    random_resized_crop_flip,
    trivial_augment,
)
from training.config import DataConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_CIFAR10_ARCHIVE = (
    Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-jpg.tar.gz"
)


class DataError(Exception):
    """The data set is missing or unreadable; the message says where it was looked for."""


@dataclass
class Split:
    """Images ``x`` ``[N, 3, H, W]`` uint8 and labels ``y`` ``[N]`` int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    """The three splits, class names, and a JSON-ready description for the package provenance."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.source`` and split it with ``cfg.split_seed`` into train / val / test.

    Raises:
        DataError: the data cannot be found or read.
    """
    if cfg.source == "synthetic":
        x, y, classes = synthetic_images(cfg.synthetic_size, cfg.synthetic_classes, cfg.input_size)
        where = "synthetic"
    elif cfg.source.startswith("torchvision-"):
        x, y, classes, where = _torchvision_cifar(cfg)
    else:
        root = _image_root(cfg)
        x, y, classes = decode_folder_cached(root, cfg.input_size, Path(cfg.cache_dir).expanduser())
        where = str(root)
    n = len(y)
    if cfg.n_val + cfg.n_test >= n:
        raise DataError(f"{where}: {n} images cannot hold n_val={cfg.n_val} + n_test={cfg.n_test}")
    train_idx, val_idx, test_idx = split_indices(n, cfg.n_val, cfg.n_test, cfg.split_seed)
    if cfg.limit_train is not None:
        train_idx = train_idx[: cfg.limit_train]
    info = {
        "source": cfg.source,
        "location": where,
        "num_images": n,
        "split_seed": cfg.split_seed,
        "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        "scheme": "permutation(split_seed): first n_val -> val, next n_test -> test, rest -> train",
        "test_indices_sha256": hashlib.sha256(test_idx.numpy().tobytes()).hexdigest(),
    }
    return Dataset(
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=Split(x[test_idx], y[test_idx]),
        classes=classes,
        info=info,
    )


def split_indices(n: int, n_val: int, n_test: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-seed disjoint index sets ``(train, val, test)`` covering ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


def synthetic_images(
    n: int, num_classes: int, size: tuple[int, int]
) -> tuple[Tensor, Tensor, list[str]]:
    """Learnable synthetic images: each class a fixed random colour pattern plus noise (seeded)."""
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.rand(num_classes, 3, *size, generator=g) * 255
    y = torch.arange(n) % num_classes
    noise = torch.randn(n, 3, *size, generator=g) * 40
    x = (prototypes[y] + noise).clamp(0, 255).to(torch.uint8)
    return x, y, [f"class_{i}" for i in range(num_classes)]


def on_device(split: Split, device: torch.device, max_share: float = 0.25) -> Split:
    """``split`` moved to a CUDA ``device`` when its images fit in ``max_share`` of the free memory.

    Then batches are gathered and augmented on the GPU: on the host the gather and crop cost a
    few ms per batch while the GPU waits (docs/training.md, "On a GPU"). Else ``split`` itself.
    """
    if device.type != "cuda":
        return split
    free, _ = torch.cuda.mem_get_info(device)
    if split.x.nbytes > free * max_share:
        return split
    return Split(split.x.to(device), split.y.to(device))


def train_batches(
    split: Split,
    cfg: DataConfig,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Iterator[tuple[Tensor, Tensor]], int]:
    """Augmented, normalised batches ``([B,3,H,W] float, [B])`` of this rank's shard, and their count."""
    sampler: DistributedSampler[int] = DistributedSampler(
        split,  # type: ignore[arg-type]  # the sampler only needs len()
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler), dtype=torch.int64)
    num_batches = len(order) // batch_size  # drop the ragged last batch (BatchNorm, equal DDP steps)
    if num_batches == 0:
        raise DataError(f"batch_size {batch_size} exceeds the {len(order)} training images per process")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)
    # Cutout draws from its own stream: with or without it, a run sees the same crops and flips.
    hole_gen = torch.Generator().manual_seed(gen.initial_seed() + 7_777_777)
    policy_gen = torch.Generator().manual_seed(gen.initial_seed() + 3_333_333)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(num_batches):
            idx = order[i * batch_size : (i + 1) * batch_size].to(split.x.device)
            x = split.x[idx]
            if cfg.augment == "crop-flip":
                x = random_crop_flip(x, cfg.crop_padding, gen, cfg.pad_mode)
            elif cfg.augment == "resized-crop-flip":
                x = random_resized_crop_flip(x, gen)
            if cfg.policy == "trivialaugment":
                if x.dtype != torch.uint8:  # resized crops come back as float
                    x = x.round().clamp(0, 255).to(torch.uint8)
                x = trivial_augment(x, policy_gen)
            x = normalize(x, cfg.mean, cfg.std)
            if cfg.cutout > 0:
                x = cutout(x, cfg.cutout, hole_gen)
            yield x, split.y[idx]

    return batches(), num_batches


# -- sources --------------------------------------------------------------------------------------
def _image_root(cfg: DataConfig) -> Path:
    """The ImageFolder root for the folder sources, extracting the CIFAR-10 archive if needed."""
    if cfg.source == "imagefolder":
        if cfg.path is None:
            raise DataError(
                "data.source 'imagefolder' needs data.path (or --data-dir): the class-folder root"
            )
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data directory not found: {root}")
        return root
    path = Path(cfg.path).expanduser() if cfg.path else DEFAULT_CIFAR10_ARCHIVE
    if path.is_dir():
        return path / "train" if (path / "train").is_dir() else path
    if not path.is_file():
        raise DataError(
            f"CIFAR-10 JPEG data not found at {path}; pass --data-dir with the archive "
            "cifar10-train-jpg.tar.gz or its extracted tree"
        )
    dest = Path(cfg.cache_dir).expanduser() / "cifar10-jpg"
    _extract_once(path, dest)
    return dest / "train" if (dest / "train").is_dir() else dest


def _extract_once(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest`` unless this same archive already is there.

    The marker records the archive's path, size and mtime, so another archive (or a new copy)
    replaces the tree instead of being silently ignored. The ranks of one ``torchrun`` call this
    at once: a file lock makes one extract while the others wait, then find the marker.
    """
    stat = archive.stat()
    identity = f"{archive.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
    marker = dest / ".extracted"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.parent / f".{dest.name}.lock"):
        if marker.is_file() and marker.read_text() == identity:
            return
        if dest.exists():  # another archive's tree, or one whose extraction was cut short
            shutil.rmtree(dest)
        dest.mkdir()
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot extract {archive} into {dest}: {e}") from None
        marker.write_text(identity)


def _torchvision_cifar(cfg: DataConfig) -> tuple[Tensor, Tensor, list[str], str]:
    from torchvision.datasets import CIFAR10, CIFAR100

    if cfg.path is None:
        raise DataError(f"data.source {cfg.source!r} needs data.path: the torchvision dataset root")
    cls = CIFAR10 if cfg.source == "torchvision-cifar10" else CIFAR100
    try:
        ds = cls(str(Path(cfg.path).expanduser()), train=True, download=False)
    except RuntimeError as e:  # torchvision raises RuntimeError for a missing/corrupt dataset
        raise DataError(f"{cfg.source} not found under {cfg.path}: {e}") from None
    x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes), str(cfg.path)


def list_image_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """``(files with labels, class names)`` of an ImageFolder tree (classes = sorted subfolders)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected root/<class>/<image>)")
    items = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise DataError(f"{root}: no images found in {len(classes)} class folders")
    return items, classes


def decode_folder_cached(
    root: Path, size: tuple[int, int], cache_dir: Path
) -> tuple[Tensor, Tensor, list[str]]:
    """Decode an ImageFolder tree once to ``uint8 [N, 3, H, W]`` and cache it (atomic write)."""
    items, classes = list_image_folder(root)
    # Every file's path, label, size and mtime: a changed, moved or relabelled image decodes anew.
    key_text = f"{root.resolve()}|{size}|" + "|".join(
        f"{f.relative_to(root)}:{label}:{st.st_size}:{st.st_mtime_ns}"
        for f, label in items
        for st in (f.stat(),)
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache = cache_dir / f"decoded-{key}.pt"
    if cache.is_file():
        blob = torch.load(cache)
        return blob["x"], blob["y"], blob["classes"]
    x = torch.empty(len(items), 3, *size, dtype=torch.uint8)
    for i, (f, _) in enumerate(items):
        x[i] = _decode(f, size)
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({"x": x, "y": y, "classes": classes}, tmp)
    os.replace(tmp, cache)
    return x, y, classes


def _decode(path: Path, size: tuple[int, int]) -> Tensor:
    """One image -> ``uint8 [3, H, W]``: shorter side resized to fit, then centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as f:
            im: Image.Image = f.convert("RGB")
        h, w = size
        if im.size != (w, h):
            scale = max(h / im.height, w / im.width)
            nw, nh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - w) // 2, (nh - h) // 2
            im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)
