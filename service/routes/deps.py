"""What the routers share: the app state, API-key checks, and running images through an engine."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request
from torch import Tensor

from service.engine import ImageResult, LoadedModel
from service.engine.images import ImageLimits, images_to_batch
from service.errors import (
    BadRequestError,
    ClientDisconnectedError,
    DeadlineExceededError,
    ModelNotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    UnauthorizedError,
)
from service.metrics import ServiceMetrics
from service.policy import ExitPlan
from service.settings import ServiceSettings


@dataclass
class AppState:
    """Everything the routes need, built by ``create_app`` and filled by its lifespan."""

    settings: ServiceSettings
    metrics: ServiceMetrics
    models: dict[str, LoadedModel] = field(default_factory=dict)
    ready: bool = False

    @property
    def limits(self) -> ImageLimits:
        lim = self.settings.limits
        return ImageLimits(lim.max_image_bytes, lim.max_image_pixels)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.anytime
    return state


def get_model(request: Request, name: str) -> LoadedModel:
    """The loaded model ``name`` (404 naming the served ones)."""
    state = app_state(request)
    loaded = state.models.get(name)
    if loaded is None:
        raise ModelNotFoundError(
            f"model {name!r} is not served here; served: {sorted(state.models)}",
            detail={"models": sorted(state.models)},
        )
    if not loaded.engine.ready:
        raise NotReadyError(f"model {name!r} is not ready yet")
    return loaded


def _key_matches(given: str, keys: list[str]) -> bool:
    # Compare with every key, in constant time each, so timing reveals neither key nor position.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


def check_api_key(request: Request) -> None:
    """Raise 401 unless the request carries a configured key (no-op when none are configured)."""
    keys = [k.get_secret_value() for k in app_state(request).settings.auth.api_keys]
    if not keys:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None or not _key_matches(given, keys):
        raise UnauthorizedError()


def require_api_key(request: Request) -> None:
    """Dependency for the API routers."""
    check_api_key(request)


def check_image_count(n: int, state: AppState) -> None:
    limit = state.settings.limits.max_images_per_request
    if n < 1:  # e.g. a v2 BYTES input of shape [0]
        raise BadRequestError("the request holds no image")
    if n > limit:
        raise PayloadTooLargeError(
            f"{n} images in one request; the limit is {limit}", detail={"images": n, "limit": limit}
        )


def check_body_size(request: Request) -> None:
    """413 before reading a body whose declared length is over the limit."""
    limit = app_state(request).settings.limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"request body of {declared} bytes; the limit is {limit}",
            detail={"bytes": int(declared), "limit": limit},
        )


async def read_body(request: Request) -> bytes:
    """The whole body, refusing more than ``max_body_bytes`` even without a Content-Length."""
    check_body_size(request)
    limit = app_state(request).settings.limits.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_images(blobs: list[bytes], loaded: LoadedModel, state: AppState) -> Tensor:
    """Decode + preprocess in a worker thread (never on the event loop): ``[N, 3, H, W]``."""
    check_image_count(len(blobs), state)
    pre = loaded.package.manifest.preprocessing
    return await anyio.to_thread.run_sync(images_to_batch, blobs, pre, state.limits)


async def _wait_disconnect(request: Request) -> None:
    # After the body is read, the next ASGI message is http.disconnect (client gone or done).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def infer(
    request: Request,
    loaded: LoadedModel,
    images: Tensor,
    plan: ExitPlan,
    deadline_ms: float | None = None,
) -> list[ImageResult]:
    """Queue ``images [N, 3, H, W]`` on the model's engine and await the answers.

    ``deadline_ms`` (the client's, from arrival) tightens the service's request timeout: an
    image that would miss it by running its next stage gets its latest exit's answer, marked
    ``deadline_exit``; only an image that cannot reach even exit 0 in time makes a 504.

    Raises:
        QueueFullError (429), DeadlineExceededError (504); a client that disconnects has its
        queued work dropped (counted as ``disconnected``).
    """
    state = app_state(request)
    timeout = state.settings.request_timeout_s
    if deadline_ms is not None:
        timeout = min(timeout, deadline_ms / 1000.0)
    arrived = getattr(request.state, "arrived", time.monotonic())
    deadline = arrived + timeout
    engine = loaded.engine
    work = engine.submit(images, plan, deadline, arrived)
    answer: asyncio.Future[list[ImageResult]] = asyncio.wrap_future(work.future)
    gone: asyncio.Future[None] = asyncio.ensure_future(_wait_disconnect(request))
    pending: list[asyncio.Future[Any]] = [answer, gone]
    try:
        done, _ = await asyncio.wait(
            pending, timeout=max(0.0, deadline - time.monotonic()), return_when="FIRST_COMPLETED"
        )
    finally:
        gone.cancel()
    if answer in done:
        return answer.result()
    # Tell the engine first (it counts the rejection), then stop awaiting the answer.
    reason = "disconnected" if gone in done else "deadline"
    engine.cancel(work, reason)
    answer.cancel()
    if reason == "disconnected":
        raise ClientDisconnectedError("client disconnected; its queued work was dropped")
    raise DeadlineExceededError(
        f"no answer within the request deadline of {timeout} s", detail={"deadline_s": timeout}
    )
