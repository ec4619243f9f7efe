"""ASGI middleware: request latency and in-flight gauges labelled by route *template*.

Pure ASGI (not BaseHTTPMiddleware) so that streaming and disconnect detection are untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics


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
        scope.setdefault("state", {})["arrived"] = start
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
            self.metrics.request_duration.labels(route, model, str(status)).observe(
                time.monotonic() - start
            )
