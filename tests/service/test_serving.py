"""The request path's decode: small requests inline on the event loop, larger ones in a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
import torch
from PIL import Image

from service.serving import INLINE_MAX_PIXELS, to_batch
from service.settings import ServiceSettings
from tests.conftest import CIFAR_PREPROCESSING
from tests.service.fixtures import encode, sample_images


def _batch_and_hops(
    blobs: list[bytes], inline_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[torch.Tensor, int]:
    hops = []
    run_sync = anyio.to_thread.run_sync

    async def counting(fn: Callable[..., Any], *args: Any) -> Any:
        hops.append(fn)
        return await run_sync(fn, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    loaded: Any = SimpleNamespace(
        package=SimpleNamespace(manifest=SimpleNamespace(preprocessing=CIFAR_PREPROCESSING))
    )
    settings = ServiceSettings(inline_decode_bytes=inline_bytes)
    batch = asyncio.run(to_batch(blobs, loaded, settings))
    return batch, len(hops)


def test_small_requests_decode_inline_and_larger_ones_in_a_thread_to_the_same_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blobs = sample_images(3)
    size = sum(map(len, blobs))
    inline, inline_hops = _batch_and_hops(blobs, size, monkeypatch)
    threaded, threaded_hops = _batch_and_hops(blobs, size - 1, monkeypatch)
    assert (inline_hops, threaded_hops) == (0, 1)
    assert inline.shape == (3, 3, 32, 32)
    assert torch.equal(inline, threaded)


def test_a_few_bytes_of_many_pixels_still_decode_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    flat = encode(Image.new("RGB", (1024, 1024), (90, 120, 30)))  # about 3 KiB of PNG
    assert len(flat) < 32 * 2**10 and INLINE_MAX_PIXELS < 1024 * 1024
    batch, hops = _batch_and_hops([flat], 32 * 2**10, monkeypatch)
    assert hops == 1 and batch.shape == (1, 3, 32, 32)
