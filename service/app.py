"""The app factory: ``create_app(settings)``; its lifespan loads and warms up the model packages.

Nothing heavy happens at import or in the factory: packages load in the lifespan (so a test can
build many apps, and uvicorn reports start-up failures), and shut down with a drain.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.routing import APIRoute
from opentelemetry.sdk.trace import TracerProvider

import service
from service.contract import build_openapi
from service.engine.choices import BackendChoices
from service.engine.factory import freeze_startup_heap
from service.metrics import ServiceMetrics
from service.middleware import RequestIdMiddleware, RequestMetricsMiddleware
from service.repository.control import Ordering
from service.repository.registry import Loader
from service.repository.startup import ModelLoadError, build_registry, start_control, stop_control
from service.routes import health, repository, v1, v2
from service.routes.handlers import install_handlers
from service.settings import ServiceSettings
from service.state import AppState
from service.tracing import tracer_provider_from_env

log = logging.getLogger("service")

__all__ = ["ModelLoadError", "create_app"]


def create_app(
    settings: ServiceSettings | None = None,
    metrics: ServiceMetrics | None = None,
    backend_choices: BackendChoices | None = None,
    control_dir: Path | None = None,
    tracer_provider: TracerProvider | None = None,
    loader: Loader | None = None,
    grpc_port: int | None = None,
    ordering: Ordering | None = None,
) -> FastAPI:
    """Build the FastAPI app for ``settings`` (default: from the environment).

    ``metrics`` defaults to a fresh single-process :class:`ServiceMetrics`; ``backend_choices``
    and ``control_dir`` are given to each of several worker processes, so that they serve one
    backend per model and agree on what is served (service/repository/shared.py).
    ``tracer_provider``: where traces go (default: as the ``OTEL_*`` environment says, usually
    nowhere: service/tracing.py). ``loader`` builds each served version (default: from its
    package; a front end of the shared engine process builds clients of that process's engines:
    ``service/topology``), and ``ordering`` orders its repository changes with that process's
    (service/repository/control.py).
    ``grpc_port``: the lifespan serves the gRPC API on it too, from the models' load to the
    engines' stop (``python -m service`` passes the port it holds; None: HTTP only).
    """
    settings = settings or ServiceSettings()
    metrics = metrics or ServiceMetrics()
    own_provider = tracer_provider is None
    provider = tracer_provider_from_env(os.environ) if own_provider else tracer_provider
    registry = build_registry(
        settings, metrics, backend_choices, tracing=provider is not None, loader=loader
    )
    state = AppState(settings, metrics, registry)
    if provider is not None:
        state.tracer = provider.get_tracer("anytime")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.models and settings.model_repository is None:
            log.warning("no model packages configured (ANYTIME_MODELS); serving no models")
        # Loading and warm-up are heavy: a worker thread keeps the event loop free meanwhile.
        state.control = await anyio.to_thread.run_sync(
            start_control, settings, state.registry, control_dir, ordering
        )
        freeze_startup_heap()
        grpc_server = None
        if grpc_port is not None:
            # Imported here: its messages take protobuf's global names (service/grpc/__init__.py).
            from service.grpc.server import start_grpc_server

            grpc_server = await start_grpc_server(state, settings.host, grpc_port)
            log.info("gRPC on %s:%d", settings.host, grpc_port)
        state.ready = True
        log.info("ready: %s", ", ".join(state.registry.names()) or "no models")
        try:
            yield
        finally:
            if grpc_server is not None:  # refuse new RPCs, answer those in flight
                await grpc_server.stop(settings.request_timeout_s)
            state.ready = False
            log.info("shutting down: draining the engines' queues")
            await anyio.to_thread.run_sync(stop_control, state.control)
            if provider is not None and own_provider:
                await anyio.to_thread.run_sync(provider.shutdown)  # exports what is left

    app = FastAPI(
        title="anytime",
        version=service.__version__,
        description="Early-exit image classification: each image leaves the network at the first "
        "exit confident enough for the compute budget the client asked for.",
        lifespan=lifespan,
    )
    app.state.anytime = state
    app.openapi = partial(build_openapi, app)  # type: ignore[method-assign]
    install_handlers(app)
    routers = [health.router, v1.router, v2.health, v2.router, repository.router]
    for router in routers:
        app.include_router(router)
    templates = [r.path for router in routers for r in router.routes if isinstance(r, APIRoute)]
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=state.metrics,
        templates=templates,
        known=state.registry.known,
    )
    app.add_middleware(RequestIdMiddleware, traced=provider is not None)
    if provider is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # The server span of every API request (health and metrics scrapes left out).
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics"
        )
    return app
