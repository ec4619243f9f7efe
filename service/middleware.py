"""ASGI middleware: request IDs; request latency and in-flight gauges labelled by route *template*.

Pure ASGI (not BaseHTTPMiddleware) so that streaming and disconnect detection are untouched.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

from opentelemetry.trace import get_current_span
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import request_id
from service.metrics import ServiceMetrics

HEADER = b"x-request-id"
# What a client's ID may hold: IDs of tracing systems, UUIDs; never spaces or control
# characters, which would let a client forge log lines.
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def valid_request_id(candidate: str | None) -> str | None:
    return candidate if candidate and _VALID_ID.fullmatch(candidate) else None


def adopt_request_id(scope_state: dict[str, object], candidate: str | None) -> None:
    """Use ``candidate`` (the v2 body's ``id``) as the request's ID, unless the client sent an
    ``X-Request-ID`` or it is not a valid ID."""
    rid = valid_request_id(candidate)
    if rid and not scope_state.get("request_id_given"):
        scope_state["request_id"] = rid
        request_id.set(rid)
        get_current_span().set_attribute("anytime.request_id", rid)  # a no-op untraced


class RequestIdMiddleware:
    """The request's ID: the client's ``X-Request-ID`` when valid, else a new one; returned in
    the response's ``X-Request-ID``, set for every log line (service/logs.py), and on the
    request's server span when tracing is on."""

    def __init__(self, app: ASGIApp, traced: bool = False) -> None:
        self.app = app
        self.traced = traced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = valid_request_id(given.decode("latin-1")) if given is not None else None
        state = scope.setdefault("state", {})
        state["request_id_given"] = rid is not None
        # 128 random bits as 32 hex digits, like uuid4().hex, without its system call: that
        # releases the interpreter lock, and the event loop then waits for the engine's thread.
        # Not a secret, so the process's random generator (seeded per process, and again after a
        # fork) will do.
        state["request_id"] = rid = rid or f"{random.getrandbits(128):032x}"
        token = request_id.set(rid)
        if self.traced:
            get_current_span().set_attribute("anytime.request_id", rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((HEADER, str(state["request_id"]).encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class RequestMetricsMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, templates: list[str], known: Callable[[str], bool]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.patterns = [(compile_path(t)[0], t) for t in templates]
        self.known = known

    def _template(self, path: str) -> tuple[str, str]:
        """``(route template, model label)`` of a request path."""
        for regex, template in self.patterns:
            match = regex.match(path)
            if match:
                name = match.groupdict().get("name")
                # Only served names become label values: unknown names must not grow the series.
                model = "" if name is None else (name if self.known(name) else "unknown")
                return template, model
        return "unmatched", ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        state = scope.setdefault("state", {})
        state["arrived"] = start
        route, model = self._template(scope["path"])
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        gauge = self.metrics.requests_in_flight.labels(route)
        gauge.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            gauge.dec()
            # The version that answered (set by the route once it resolved one; else none).
            version = state.get("model_version", "")
            self.metrics.request_duration.labels(route, model, version, str(status)).observe(
                time.monotonic() - start
            )
