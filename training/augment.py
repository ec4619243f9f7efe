"""Batched, per-sample augmentation on uint8 image tensors, plus normalisation.

torchvision's ``transforms.v2`` draws *one* set of random parameters per call, so applied to a
batch tensor every image would get the same crop; a per-image loop would cost a Python call per
image. These functions draw per-image parameters from an explicit CPU ``torch.Generator`` (so a
resumed run repeats them exactly, on any device) and apply them with vectorised indexing /
``roi_align`` on the images' own device: on a GPU the gather runs there, not on the host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(
    x: Tensor, padding: int, generator: torch.Generator, pad_mode: str = "zeros"
) -> Tensor:
    """CIFAR augmentation: pad by ``padding`` (``pad_mode`` "zeros" or "reflect"), random crop
    back to size, random h-flip.

    Args:
        x: ``[N, C, H, W]`` images (any dtype).
    Returns:
        ``[N, C, H, W]``, same dtype.
    """
    n, _, h, w = x.shape
    dev = x.device
    if padding > 0:
        pad = (padding, padding, padding, padding)
        # reflect padding needs a float tensor; the values stay whole numbers, cast back after
        padded = (
            F.pad(x.float(), pad, mode="reflect").to(x.dtype) if pad_mode == "reflect" else F.pad(x, pad)
        )
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [N, 1, H, 1]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # [N, 1, 1, W]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    return random_flip(x, generator)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Horizontal flip of each image of ``[N, C, H, W]`` with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_resized_crop_flip(
    x: Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """ImageNet-style random resized crop (area ``scale``, aspect ``ratio``) + flip, per image.

    Args:
        x: ``[N, C, H, W]`` uint8 or float.
    Returns:
        ``[N, C, H, W]`` float32 in the input's value range.
    """
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(*scale, generator=generator) * h * w
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).clamp(1, w)
    ch = torch.sqrt(area / aspect).clamp(1, h)
    x0 = torch.rand(n, generator=generator) * (w - cw)
    y0 = torch.rand(n, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    boxes = boxes.to(x.device)
    out = roi_align(
        x.float(), boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True
    )
    return random_flip(out, generator)


def trivial_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """TrivialAugmentWide (Mueller & Hutter 2021), one operation and magnitude per image.

    torchvision's transform draws from the global RNG, so it runs under a fork of it seeded
    from ``generator``: a resumed run repeats the same operations.

    Args:
        x: ``[N, C, H, W]`` uint8.
    Returns:
        ``[N, C, H, W]`` uint8.
    """
    from torchvision.transforms import v2

    policy = v2.TrivialAugmentWide()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([policy(img) for img in x.cpu()]).to(x.device)


def cutout(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Cutout (DeVries & Taylor 2017): zero one ``size`` x ``size`` square per image.

    The square's centre is uniform over the image (as in the paper), so near a border part of it
    falls outside. Applied after :func:`normalize`, zero is the dataset mean colour.

    Args:
        x: ``[N, C, H, W]`` normalised images.
    Returns:
        ``[N, C, H, W]``, same dtype, with the squares zeroed.
    """
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator).to(x.device)
    y0, x0 = cy - size // 2, cx - size // 2  # the square is [y0, y0 + size) x [x0, x0 + size)
    rows = torch.arange(h, device=x.device)[None, :]  # [1, H]
    cols = torch.arange(w, device=x.device)[None, :]  # [1, W]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + size)[:, None])  # [N, H]
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + size)[:, None])  # [N, W]
    hole = in_rows[:, :, None] & in_cols[:, None, :]  # [N, H, W]
    return x.masked_fill(hole[:, None], 0)


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``[N, C, H, W]`` in 0..255 -> float32 normalised (``mean``/``std`` in 0..1 units)."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1) * 255
    return (x.float() - m) / s
