"""Protocol-neutral inference: options -> plan -> images -> engine -> per-image results.

The routers are codecs over :func:`serve` (after vLLM's ``serving_*.py`` and KServe's data
plane): they parse their protocol into images and one :class:`InferenceOptions`, and shape
the results into their protocol's answer. Everything between happens here, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from opentelemetry.trace import Tracer
from pydantic import ValidationError
from torch import Tensor

from service.engine import ImageResult, LoadedModel, ModelEngine, RequestWork
from service.engine.tracing import RequestTrace
from service.errors import (
    BadRequestError,
    ClientDisconnectedError,
    DeadlineExceededError,
    InvalidOptionError,
    PayloadTooLargeError,
    validation_problems,
)
from service.images import ImageLimits, images_to_batch, is_thumbnail
from service.policy import ExitPlan
from service.schemas import InferenceOptions
from service.settings import ServiceSettings

Options = TypeVar("Options", bound=InferenceOptions)
log = logging.getLogger("service.serving")


def parse_options(raw: dict[str, Any], model: type[Options], strict: bool = False) -> Options:
    """The options model from a protocol's raw values (422 naming each bad field).

    ``strict``: values must have their JSON types already (v2 parameters); lax parses strings
    (v1 query parameters).
    """
    try:
        return model.model_validate(raw, strict=strict)
    except ValidationError as e:
        message, problems = validation_problems(e.errors())
        raise InvalidOptionError(f"invalid options: {message}", detail=problems) from None


@dataclass(frozen=True)
class RequestContext:
    """What the protocol knows of a request beyond its payload.

    Attributes:
        arrived: ``time.monotonic()`` when the request reached the service: the one clock of its
            queue wait, the SLO controller and its deadline.
        disconnected: returns once the client has gone away.
        tracer: when tracing is on, the tracer of the request's spans (decode, queue wait,
            stages, exits; ``service/engine/tracing.py``).
        timeout_s: the protocol's own deadline in seconds from arrival (gRPC's), if any: it
            bounds the service's ``request_timeout_s`` and the request's ``deadline_ms``.
    """

    arrived: float
    disconnected: Callable[[], Awaitable[None]]
    tracer: Tracer | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class Served:
    """The plan a request ran under and one result per image, in request order."""

    plan: ExitPlan
    results: list[ImageResult]


async def serve(
    loaded: LoadedModel,
    images: Sequence[bytes] | Tensor,
    options: InferenceOptions,
    context: RequestContext,
    settings: ServiceSettings,
) -> Served:
    """Run a request's images through ``loaded``'s engine under ``options``.

    Args:
        images: encoded image files, or an already preprocessed ``[N, 3, H, W]`` float tensor.

    Raises:
        InvalidOptionError (422): an option the model does not offer (the message says what it does).
        BadRequestError, BadImageError (400), PayloadTooLargeError (413): the images.
        QueueFullError (429), EngineStoppedError (503), DeadlineExceededError (504).
        ClientDisconnectedError: the client left; its queued work was dropped.
    """
    # Options first: a request the model cannot serve is refused before any image is decoded.
    # The engine's plan: its default budget (the SLO controller's) and its guard's shift.
    plan = loaded.engine.plan(options.budget, options.threshold, options.max_exit)
    timeout = settings.request_timeout_s
    if options.deadline_ms is not None:
        timeout = min(timeout, options.deadline_ms / 1000.0)
    if context.timeout_s is not None:
        timeout = min(timeout, context.timeout_s)
    if context.tracer is not None:
        return await _serve_traced(context.tracer, loaded, images, plan, context, settings, timeout)
    batch = await to_batch(images, loaded, settings)
    log.debug("%d images under budget %s", batch.shape[0], plan.budget)
    results = await _await_answers(loaded.engine, batch, plan, context, timeout)
    log.debug("answered at exits %s", [r.exit for r in results])
    return Served(plan, results)


async def _serve_traced(
    tracer: Tracer,
    loaded: LoadedModel,
    images: Sequence[bytes] | Tensor,
    plan: ExitPlan,
    context: RequestContext,
    settings: ServiceSettings,
    timeout: float,
) -> Served:
    """:func:`serve` under an ``inference`` span: ``decode``, then the engine's spans."""
    attributes: dict[str, str | float] = {
        "anytime.model": loaded.name,
        "anytime.version": loaded.package.manifest.version,
    }
    if plan.budget is not None:
        attributes["anytime.budget"] = plan.budget
    with tracer.start_as_current_span("inference", attributes=attributes):
        with tracer.start_as_current_span("decode"):
            batch = await to_batch(images, loaded, settings)
        log.debug("%d images under budget %s", batch.shape[0], plan.budget)
        trace = RequestTrace(tracer)
        results = await _await_answers(loaded.engine, batch, plan, context, timeout, trace)
        trace.emit(results)
        log.debug("answered at exits %s", [r.exit for r in results])
        return Served(plan, results)


def check_image_count(n: int, settings: ServiceSettings) -> None:
    limit = settings.limits.max_images_per_request
    if n < 1:  # e.g. a v2 BYTES input of shape [0]
        raise BadRequestError("the request holds no image")
    if n > limit:
        raise PayloadTooLargeError(
            f"{n} images in one request; the limit is {limit}", detail={"images": n, "limit": limit}
        )


async def to_batch(
    images: Sequence[bytes] | Tensor, loaded: LoadedModel, settings: ServiceSettings
) -> Tensor:
    """The ``[N, 3, H, W]`` batch of a request: encoded files are decoded in a worker thread, but
    one small image on the event loop (``limits.inline_decode_bytes``)."""
    if isinstance(images, Tensor):
        h, w = loaded.package.manifest.preprocessing.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, h, w) or images.shape[0] < 1:
            raise BadRequestError(
                f"preprocessed input must have shape [N, 3, {h}, {w}], got {list(images.shape)}"
            )
        check_image_count(images.shape[0], settings)
        return images
    check_image_count(len(images), settings)
    limits = ImageLimits(settings.limits.max_image_bytes, settings.limits.max_image_pixels)
    pre = loaded.package.manifest.preprocessing
    if len(images) == 1 and is_thumbnail(images[0], settings.limits.inline_decode_bytes):
        # A thumbnail (a 32x32 JPEG: about 0.13 ms) decodes faster than a hop to a worker thread
        # and back costs (about 0.09 ms of CPU more, and the interpreter lock changing hands
        # twice): 1.2x the images/s of one process on 2 cores (docs/serving-performance.md).
        return images_to_batch(list(images), pre, limits)
    # Decoding is CPU work: larger images never block the event loop.
    return await anyio.to_thread.run_sync(images_to_batch, list(images), pre, limits)


async def _await_answers(
    engine: ModelEngine,
    batch: Tensor,
    plan: ExitPlan,
    context: RequestContext,
    timeout: float,
    trace: RequestTrace | None = None,
) -> list[ImageResult]:
    """Submit ``batch`` and race its answers against the deadline and the client's leaving.

    The deadline runs from arrival: an image that would miss it by running its next stage gets
    its latest exit's answer (``deadline_exit``); only one that cannot reach even exit 0 makes
    the request a 504.
    """
    deadline = context.arrived + timeout
    work: RequestWork = engine.submit(batch, plan, deadline, context.arrived, trace)
    answer: asyncio.Future[list[ImageResult]] = asyncio.wrap_future(work.future)
    gone: asyncio.Future[None] = asyncio.ensure_future(context.disconnected())
    pending: list[asyncio.Future[Any]] = [answer, gone]
    try:
        done, _ = await asyncio.wait(
            pending, timeout=max(0.0, deadline - time.monotonic()), return_when="FIRST_COMPLETED"
        )
    except asyncio.CancelledError:  # the request's task was cancelled (a gRPC client left)
        engine.cancel(work, "disconnected")
        answer.cancel()
        raise
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
