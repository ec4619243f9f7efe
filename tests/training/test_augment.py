"""Batched per-sample augmentation: correct crops, per-image randomness, reproducible."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.augment import cutout, normalize, random_crop_flip, random_resized_crop_flip


def test_crop_flip_matches_a_manual_crop() -> None:
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    oy, ox = torch.randint(0, 5, (16,), generator=g), torch.randint(0, 5, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(16):
        crop = padded[i, :, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8]
        assert torch.equal(out[i], crop.flip(2) if flip[i] else crop)
    assert len({(int(a), int(b)) for a, b in zip(oy, ox, strict=True)}) > 1  # not one crop for all


def test_resized_crop_and_normalize_shapes() -> None:
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    z = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.allclose(z, torch.ones(1, 3, 2, 2))


def test_cutout_zeroes_one_square_per_image_clipped_at_the_border() -> None:
    x = torch.randn(64, 3, 12, 12).abs() + 1  # no zeros of its own
    out = cutout(x, 4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    cy, cx = torch.randint(0, 12, (64,), generator=g), torch.randint(0, 12, (64,), generator=g)
    for i in range(64):
        y0, x0 = int(cy[i]) - 2, int(cx[i]) - 2
        expect = x[i].clone()
        expect[:, max(y0, 0) : y0 + 4, max(x0, 0) : x0 + 4] = 0
        assert torch.equal(out[i], expect)
    zeroed = (out == 0).all(1).sum((1, 2))  # pixels zeroed in every channel, per image
    assert zeroed.max() == 16 and zeroed.min() < 16  # whole squares inside, clipped ones at edges
    assert torch.equal(cutout(x, 0, torch.Generator()), x)
