"""What every RPC shares with the HTTP routes: the API key check, the request ID, the request
metrics, the request's arrival, deadline and tracer, and the error envelope (a gRPC status with
``/v2``'s message).

Request ID: metadata ``x-request-id`` when valid, else ``ModelInfer``'s ``id``, else a new one;
in every log line of the RPC and returned as trailing metadata ``x-request-id``.

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
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

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
            arrived = time.monotonic()
            metrics = self.state.metrics
            model = _model_label(self.state, request)
            metadata = dict(context.invocation_metadata() or ())
            rid = _request_id(metadata, request)
            request_id.set(rid)  # this RPC's task only: every log line of the request
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
            await context.abort(grpc_code(error.status), error.message)
            raise AssertionError("abort raises")  # unreachable: context.abort always raises

        return handler

    return wrap


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
