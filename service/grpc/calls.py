"""What every RPC shares with the HTTP routes: the API key check, the request ID, the request
metrics, the request's arrival, deadline and tracer, and the error envelope (a gRPC status with
``/v2``'s message).

Request ID: metadata ``x-request-id`` when valid, else ``ModelInfer``'s ``id``, else a new one;
in every log line of the RPC and returned as trailing metadata ``x-request-id``.

Traces (when on: service/tracing.py): a server span per RPC, named as gRPC's semantic conventions
say (``inference.GRPCInferenceService/ModelInfer``), a child of the client's ``traceparent``
metadata when it sends one, carrying the request ID; the serving layer's spans (inference,
decode, queue wait, stage runs, exits) go under it, as under an HTTP request's.

Metrics: the HTTP series themselves,
``anytime_request_duration_seconds{route, model, version, status}`` and
``anytime_requests_in_flight{route}``, with the RPC's path as the route
(``/inference.GRPCInferenceService/ModelInfer``) and the HTTP status of the outcome (200, or the
error's status in service/errors.py): one set of dashboards and alerts covers both protocols.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from opentelemetry.propagate import extract
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, get_current_span

from service.auth import check_api_key
from service.errors import ServiceError
from service.grpc.status import grpc_code
from service.logs import request_id
from service.middleware import valid_request_id
from service.serving import RequestContext
from service.state import AppState

SERVICE = "inference.GRPCInferenceService"
log = logging.getLogger("service")
# The model version that answers the RPC, once resolved (its metrics' ``version`` label).
answering_version: ContextVar[str] = ContextVar("answering_version", default="")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class HasState(Protocol):
    state: AppState


S = TypeVar("S", bound=HasState)
Method = Callable[[S, Req, RequestContext], Awaitable[Resp]]
Handler = Callable[[S, Req, Any], Awaitable[Resp]]


def rpc(protected: bool = True) -> Callable[[Method[S, Req, Resp]], Handler[S, Req, Resp]]:
    """Wrap a servicer method ``(self, request, RequestContext) -> response`` as a gRPC handler.

    ``protected``: needs an API key (metadata ``x-api-key`` or ``authorization: Bearer``) when
    keys are configured, as every HTTP API route does; the health RPCs stay open, as ``/v2/health``.
    """

    def wrap(method: Method[S, Req, Resp]) -> Handler[S, Req, Resp]:
        route = f"/{SERVICE}/{method.__name__}"

        @functools.wraps(method)
        async def handler(self: S, request: Req, context: Any) -> Resp:
            tracer = self.state.tracer
            if tracer is None:
                return await answer(self, request, context)
            with _server_span(tracer, method.__name__, context):
                return await answer(self, request, context)

        async def answer(self: S, request: Req, context: Any) -> Resp:
            arrived = time.monotonic()
            metrics = self.state.metrics
            model = _model_label(self.state, request)
            metadata = dict(context.invocation_metadata() or ())
            rid = _request_id(metadata, request)
            request_id.set(rid)  # this RPC's task only: every log line of the request
            span = get_current_span()  # the RPC's server span; untraced: a no-op one
            span.set_attribute("anytime.request_id", rid)
            answering_version.set("")
            status, error = 500, ServiceError("internal error; the server log has the details")
            gauge = metrics.requests_in_flight.labels(route)
            gauge.inc()
            try:
                if protected:
                    check_api_key(
                        self.state.settings, metadata.get("x-api-key"), metadata.get("authorization", "")
                    )
                ctx = _request_context(arrived, context, self.state)
                response = await method(self, request, ctx)
                status = 200
                context.set_trailing_metadata((("x-request-id", rid),))
                span.set_attribute("rpc.grpc.status_code", 0)
                return response
            except ServiceError as e:
                status, error = e.status, e
            except asyncio.CancelledError:  # the client cancelled or left
                status = 499
                raise
            except Exception as e:
                log.error("unexpected error in %s: %r", route, e, exc_info=e)
            finally:
                gauge.dec()
                metrics.request_duration.labels(
                    route, model, answering_version.get(), str(status)
                ).observe(time.monotonic() - arrived)
            # e.g. a 429's Retry-After, as trailing metadata beside the request ID
            headers = [(k.lower(), v) for k, v in error.headers.items()]
            context.set_trailing_metadata((("x-request-id", rid), *headers))
            code = grpc_code(error.status)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            span.set_status(Status(StatusCode.ERROR, error.message))
            await context.abort(code, error.message)
            raise AssertionError("abort raises")  # unreachable: context.abort always raises

        return handler

    return wrap


def _server_span(tracer: Tracer, method: str, context: Any) -> AbstractContextManager[Span]:
    """The RPC's server span, current while it runs (the client's ``traceparent`` its parent)."""
    carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    return tracer.start_as_current_span(
        f"{SERVICE}/{method}",
        context=extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
        # its status is set above; the abort that ends a failed RPC is no error of the server's
        record_exception=False,
        set_status_on_exception=False,
    )


def _request_id(metadata: dict[str, str], request: object) -> str:
    """The client's ``x-request-id`` when valid, else the request's ``id`` when valid, else new."""
    given = valid_request_id(metadata.get("x-request-id"))
    return given or valid_request_id(getattr(request, "id", None)) or uuid.uuid4().hex


def _request_context(arrived: float, context: Any, state: AppState) -> RequestContext:
    """The request's arrival, its client's leaving, the gRPC deadline (None without one) and the
    tracer (None untraced)."""
    left: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(_: object) -> None:
        if not left.done():
            left.set_result(None)

    context.add_done_callback(done)

    async def disconnected() -> None:
        await left

    remaining = context.time_remaining()
    return RequestContext(arrived, disconnected, tracer=state.tracer, timeout_s=remaining)


def _model_label(state: AppState, request: object) -> str:
    """The request's model as a label value: only served names (unknown ones must not grow the
    series), ``""`` for an RPC that names none."""
    name = getattr(request, "model_name", None) or getattr(request, "name", None)
    if not name:
        return ""
    return name if state.registry.known(name) else "unknown"
