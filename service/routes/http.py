"""HTTP plumbing the routers share: the body under its byte limit, the request's arrival and exit."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request

from service.errors import BadRequestError, PayloadTooLargeError
from service.serving import RequestContext
from service.state import app_state


def check_body_size(request: Request) -> None:
    """413 before reading a body whose declared length is over the limit."""
    limit = app_state(request).settings.limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > limit:
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


def parse_json(body: bytes, what: str, expected: str = "") -> Any:
    """``body`` as JSON (400 naming ``what``, and what was ``expected``, when empty or not JSON)."""
    if not body:
        raise BadRequestError(f"empty {what}{expected}")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequestError(f"{what} is not valid JSON: {e}") from None


def request_context(request: Request) -> RequestContext:
    """When the request arrived (set by the middleware) and how to tell that its client left."""

    async def disconnected() -> None:
        # After the body is read, the next ASGI message is http.disconnect (client gone or done).
        while (await request.receive())["type"] != "http.disconnect":
            pass

    arrived = getattr(request.state, "arrived", time.monotonic())
    return RequestContext(arrived, disconnected, app_state(request).tracer)
