"""The JPEG fast path: a frame header read in Python, pixels from libjpeg-turbo (``simplejpeg``).

Pillow spends about 120 us on a 32x32 JPEG, most of it per-image set-up; libjpeg-turbo through
``simplejpeg`` decodes the same file to the same pixels in about 10 us (both at libjpeg's exact
DCT and upsampling). The header is read here rather than by ``simplejpeg.decode_jpeg_header``
because every call into ``simplejpeg`` releases the interpreter lock: on the event loop each
release lets the engine's thread take the lock, and the loop then waits for it to give it back
(the header call took a third of the loop's wall time under load). Anything this module does not
recognise is left to Pillow, whose errors are the ones clients see.
"""

from __future__ import annotations

import numpy as np
import simplejpeg

_START = b"\xff\xd8"
# Frame headers (SOF0-3, 5-7, 9-11, 13-15): baseline, extended, progressive, lossless, arithmetic.
_FRAME = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_START_OF_SCAN = 0xDA
# Markers without a length field: TEM and the restart markers RST0-7.
_BARE = frozenset({0x01, *range(0xD0, 0xD8)})
# Grey and three-component (YCbCr or RGB) frames convert to RGB in libjpeg-turbo as in Pillow;
# four components (CMYK, YCCK: Adobe's inverted ink) go to Pillow, which inverts them.
_FAST_COMPONENTS = frozenset({1, 3})


def frame_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG the fast path decodes, from its first frame header; None
    for anything else (not a JPEG, four components, a damaged or missing header)."""
    if not data.startswith(_START):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte before the marker
            i += 1
            continue
        if marker in _BARE:
            i += 2
            continue
        if marker == _START_OF_SCAN:  # pixels before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _FRAME:
            if length < 8 or i + 10 > n:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            fast = width and height and data[i + 9] in _FAST_COMPONENTS
            return (width, height) if fast else None
        if length < 2:
            return None
        i += 2 + length
    return None


def decode_rgb(data: bytes) -> np.ndarray | None:
    """RGB pixels ``[H, W, 3]`` uint8 of a JPEG :func:`frame_size` accepts (check its size
    first), or None if libjpeg-turbo finds it truncated or corrupt."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
    except ValueError:
        return None
