"""The JPEG fast path's frame header: the size libjpeg-turbo reads, or None for Pillow."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from service.jpeg import decode_rgb, frame_size
from tests.service.fixtures import encode


def _noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize(
    ("img", "options"),
    [
        (_noise((32, 32)), {}),
        (_noise((640, 17)), {"progressive": True}),
        (_noise((31, 33), "L"), {}),
        (_noise((48, 40)), {"exif": Image.Exif().tobytes(), "icc_profile": b"\0" * 3000}),
        (_noise((64, 64)), {"restart_marker_blocks": 1}),
        (_noise((16, 16)), {"subsampling": 0, "quality": 100}),
    ],
    ids=["baseline", "progressive", "grey", "app-segments", "restart-markers", "444"],
)
def test_the_frame_size_is_libjpeg_turbos(img: Image.Image, options: dict) -> None:
    blob = encode(img, "JPEG", **options)
    height, width, _, _ = simplejpeg.decode_jpeg_header(blob)
    assert frame_size(blob) == (width, height) == img.size
    pixels = decode_rgb(blob)
    assert pixels is not None and pixels.shape == (height, width, 3)


def test_fill_bytes_before_a_marker_are_skipped() -> None:
    blob = encode(_noise((8, 8)), "JPEG")
    assert frame_size(blob[:2] + b"\xff\xff\xff" + blob[2:]) == (8, 8)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\xff\xd8",
        b"not a jpeg at all",
        encode(_noise((8, 8), "CMYK"), "JPEG"),  # four components: Pillow's ink inversion
        encode(_noise((8, 8)), "JPEG")[:12],  # cut before the frame header
        b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 8,  # a scan before any frame header
        b"\xff\xd8\x00\x00\x00\x00",  # not a marker where one must be
        b"\xff\xd8\xff\xe0\x00\x01\x00\x00",  # a segment length below its own two bytes
        b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x00\x08\x03",  # height 0 (set later by DNL)
    ],
    ids=[
        "empty",
        "start-only",
        "not-jpeg",
        "cmyk",
        "cut",
        "scan-first",
        "no-marker",
        "bad-length",
        "dnl",
    ],
)
def test_anything_else_is_left_to_pillow(blob: bytes) -> None:
    assert frame_size(blob) is None


def test_a_damaged_scan_is_left_to_pillow() -> None:
    blob = encode(_noise((64, 64)), "JPEG")
    assert frame_size(blob[:300]) == (64, 64)  # the header is whole, the pixels are not
    assert decode_rgb(blob[:300]) is None
