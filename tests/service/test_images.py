"""Decoding limits and preprocessing: every bad image is a named 400/413, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.package import Preprocessing
from service.errors import BadImageError, PayloadTooLargeError
from service.images import ImageLimits, decode_image, images_to_batch, is_thumbnail, preprocess
from tests.conftest import CIFAR_PREPROCESSING
from tests.service.fixtures import encode, png_with_claimed_size, sample_images

LIMITS = ImageLimits(max_image_bytes=100_000, max_image_pixels=1_000_000)


@pytest.mark.parametrize(
    "img",
    [
        Image.new("RGBA", (40, 30), (10, 20, 30, 0)),
        Image.new("L", (33, 17), 128),
        Image.new("P", (8, 8)),
        Image.new("RGB", (1, 1), (255, 0, 0)),
    ],
    ids=["rgba", "grayscale", "palette", "1x1"],
)
def test_odd_but_valid_images_decode_to_the_input_size(img: Image.Image) -> None:
    x = images_to_batch([encode(img)], CIFAR_PREPROCESSING, LIMITS)
    assert x.shape == (1, 3, 32, 32)
    assert x.isfinite().all()


def test_16_bit_grey_is_scaled_and_32_bit_pixels_are_refused() -> None:
    # Pillow's convert("RGB") clips: a 16-bit grey of 40000 (61 %) would reach the model as white.
    grey16 = Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16))
    assert grey16.mode == "I;16"
    rgb = np.asarray(decode_image(encode(grey16), LIMITS))
    assert rgb.shape == (4, 4, 3) and (rgb == 156).all()  # round(40000 / 257)
    for pixels in (np.full((4, 4), 0.5, dtype=np.float32), np.full((4, 4), 7, dtype=np.int32)):
        with pytest.raises(BadImageError, match=r"image 0 has 32-bit .* pixels"):
            decode_image(encode(Image.fromarray(pixels), "TIFF"), LIMITS, where="image 0")


def test_normalisation_matches_the_package_rules() -> None:
    pre = Preprocessing(input_size=(4, 4), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    x = preprocess(Image.new("RGB", (4, 4), (255, 0, 128)), pre)
    assert x[:, 0, 0].tolist() == pytest.approx([2.0, -1.0, 128 / 255 - 0.5], abs=1e-6)


def test_resize_then_center_crop() -> None:
    pre = Preprocessing(
        input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), resize=8, interpolation="nearest"
    )
    img = Image.new("RGB", (32, 16), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 8, 16))  # a white left quarter is cropped away
    x = preprocess(img, pre)
    assert x.shape == (3, 8, 8) and float(x.max()) == 0.0


@pytest.mark.parametrize(
    ("blob", "error", "words"),
    [
        (b"", BadImageError, "empty"),
        (b"definitely not an image", BadImageError, "not a recognised image"),
        (encode(Image.new("RGB", (64, 64)), "JPEG")[:200], BadImageError, "truncated"),
        (png_with_claimed_size(100_000, 100_000), PayloadTooLargeError, "pixels"),
        (png_with_claimed_size(2_000, 2_000), PayloadTooLargeError, "2000x2000"),
        (b"\xff" * 200_000, PayloadTooLargeError, "bytes"),
    ],
    ids=["empty", "not-image", "truncated-jpeg", "bomb-header", "over-limit-header", "too-many-bytes"],
)
def test_bad_images_raise_named_errors(blob: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        decode_image(blob, LIMITS, where="image 3")
    with pytest.raises(error, match=words):  # the same error where JPEGs take the fast path
        images_to_batch([blob], CIFAR_PREPROCESSING, LIMITS)


def test_errors_name_the_bad_image_by_position() -> None:
    blobs = [*sample_images(2), b"junk"]
    with pytest.raises(BadImageError, match="image 2"):
        images_to_batch(blobs, CIFAR_PREPROCESSING, LIMITS)


def _photo(size: tuple[int, int]) -> Image.Image:
    """A smooth RGB gradient: resizing it is well defined, so two decode paths can be compared."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_no_smaller_than_its_target() -> None:
    blob = encode(_photo((512, 384)), "JPEG")
    assert decode_image(blob, LIMITS).size == (512, 384)
    assert decode_image(blob, LIMITS, draft=(32, 32)).size == (64, 48)  # 1/8: both sides >= 32
    assert decode_image(blob, LIMITS, draft=(100, 100)).size == (256, 192)  # 1/4 has 96 < 100
    png = encode(_photo((512, 384)))
    assert decode_image(png, LIMITS, draft=(32, 32)).size == (512, 384)  # only JPEGs have drafts


def test_the_reduced_decode_feeds_the_network_nearly_the_same_input() -> None:
    blob = encode(_photo((512, 512)), "JPEG")
    reduced = images_to_batch([blob], CIFAR_PREPROCESSING, LIMITS)
    full = preprocess(decode_image(blob, LIMITS), CIFAR_PREPROCESSING)
    assert reduced.shape == (1, 3, 32, 32)
    # Normalised units (about 4 per full pixel range): within 1/50 of the range on average.
    assert (reduced[0] - full).abs().mean() < 0.08


@pytest.mark.parametrize(
    ("blob", "thumbnail"),
    [
        (encode(Image.new("RGB", (32, 32), (9, 9, 9)), "JPEG"), True),
        (encode(Image.new("RGB", (128, 128), (9, 9, 9)), "PNG"), True),
        # a few hundred bytes of PNG that decode to 4 M pixels: a small file, not a thumbnail
        (encode(Image.new("RGB", (2_000, 2_000), (9, 9, 9)), "PNG"), False),
        (png_with_claimed_size(100_000, 100_000), False),
        (encode(Image.new("RGB", (32, 32)), "JPEG") + b"\0" * 9_000, False),  # over the bytes
        (b"definitely not an image", True),  # it fails at once wherever it is decoded
    ],
    ids=["32px-jpeg", "128px-png", "flat-2000px-png", "bomb-header", "over-bytes", "not-image"],
)
def test_only_small_images_decode_on_the_event_loop(blob: bytes, thumbnail: bool) -> None:
    assert is_thumbnail(blob, max_bytes=8192) is thumbnail
    assert not is_thumbnail(blob, max_bytes=0)  # 0: every image goes to a worker thread


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width`` x ``height`` pixels."""
    blob = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = blob.index(b"\xff\xc0")
    blob[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(blob)


def test_a_jpeg_header_over_the_pixel_limit_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLargeError, match="image 0 is 2000x1000 pixels"):
        images_to_batch([_jpeg_claiming(2000, 1000)], CIFAR_PREPROCESSING, LIMITS)
    assert not is_thumbnail(_jpeg_claiming(2000, 1000), max_bytes=8192)


@pytest.mark.parametrize(
    ("img", "options"),
    [
        (_photo((32, 32)), {}),  # 4:2:0, the CIFAR archive's
        (_photo((40, 24)), {"subsampling": 0, "quality": 95}),  # 4:4:4, resized after decoding
        (_photo((32, 32)), {"progressive": True}),
        (_photo((32, 32)).convert("L"), {}),
        (_photo((32, 32)).convert("CMYK"), {}),  # Pillow's path: its ink inversion
    ],
    ids=["420", "444-resized", "progressive", "grey", "cmyk"],
)
def test_every_jpeg_gives_the_network_pillows_pixels(img: Image.Image, options: dict) -> None:
    blob = encode(img, "JPEG", **options)
    fast = images_to_batch([blob], CIFAR_PREPROCESSING, LIMITS)[0]
    assert fast.equal(preprocess(decode_image(blob, LIMITS), CIFAR_PREPROCESSING))
