"""The app factory: ``create_app(settings)``; its lifespan loads and warms up the model packages.

Nothing heavy happens at import or in the factory: packages load in the lifespan (so a test can
build many apps, and uvicorn reports start-up failures), and shut down with a drain.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
from fastapi import FastAPI
from fastapi.routing import APIRoute

import service
from service.budget_times import BudgetTime, budget_times
from service.contract import build_openapi
from service.engine import LoadedModel, load_model
from service.engine.choices import BackendChoices
from service.engine.factory import freeze_startup_heap
from service.metrics import ServiceMetrics
from service.middleware import RequestMetricsMiddleware
from service.routes import health, v1, v2
from service.routes.handlers import install_handlers
from service.settings import ServiceSettings
from service.state import AppState

log = logging.getLogger("service")


class ModelLoadError(RuntimeError):
    """A configured package could not be served (the message names it and why)."""


def _load_all(
    settings: ServiceSettings, metrics: ServiceMetrics, choices: BackendChoices | None
) -> dict[str, LoadedModel]:
    models: dict[str, LoadedModel] = {}
    for path in settings.models:
        try:
            loaded = load_model(path, settings, metrics, choices)
        except Exception as e:  # PackageError, BackendError, ...: stop start-up with one message
            for m in models.values():
                m.engine.stop()
            raise ModelLoadError(f"cannot serve model package {path}: {e}") from e
        if loaded.name in models:
            loaded.engine.stop()
            raise ModelLoadError(f"two packages are named {loaded.name!r}; names must be unique")
        models[loaded.name] = loaded
    return models


def _time_budgets(loaded: LoadedModel, metrics: ServiceMetrics) -> dict[float, BudgetTime]:
    """Each budget row's expected time from the warm-up's stage timings, also as gauges."""
    times = budget_times(
        loaded.package.manifest.budgets, loaded.engine.costs, loaded.engine.config.max_batch_size
    )
    for budget, t in times.items():
        metrics.budget_latency.labels(loaded.name, str(budget)).set(t.ms_per_image / 1000.0)
        metrics.budget_throughput.labels(loaded.name, str(budget)).set(t.images_per_s)
    return times


def create_app(
    settings: ServiceSettings | None = None,
    metrics: ServiceMetrics | None = None,
    backend_choices: BackendChoices | None = None,
    grpc_port: int | None = None,
) -> FastAPI:
    """Build the FastAPI app for ``settings`` (default: from the environment).

    ``metrics`` defaults to a fresh single-process :class:`ServiceMetrics`; ``backend_choices``
    is given to each of several worker processes, so that they serve one backend per model.
    ``grpc_port``: the lifespan serves the gRPC API on it too, from the models' load to the
    engines' stop (``python -m service`` passes the port it holds; None: HTTP only).
    """
    settings = settings or ServiceSettings()
    state = AppState(settings=settings, metrics=metrics or ServiceMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.models:
            log.warning("no model packages configured (ANYTIME_MODELS); serving no models")
        # Loading and warm-up are heavy: a worker thread keeps the event loop free meanwhile.
        state.models = await anyio.to_thread.run_sync(
            _load_all, settings, state.metrics, backend_choices
        )
        state.budget_times = {name: _time_budgets(m, state.metrics) for name, m in state.models.items()}
        freeze_startup_heap()
        grpc_server = None
        if grpc_port is not None:
            # Imported here: its messages take protobuf's global names (service/grpc/__init__.py).
            from service.grpc.server import start_grpc_server

            grpc_server = await start_grpc_server(state, settings.host, grpc_port)
            log.info("gRPC on %s:%d", settings.host, grpc_port)
        state.ready = True
        log.info("ready: %s", ", ".join(state.models) or "no models")
        try:
            yield
        finally:
            if grpc_server is not None:  # refuse new RPCs, answer those in flight
                await grpc_server.stop(settings.request_timeout_s)
            state.ready = False
            log.info("shutting down: draining the engines' queues")
            for m in state.models.values():
                await anyio.to_thread.run_sync(m.engine.stop)

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
    routers = [health.router, v1.router, v2.health, v2.router]
    for router in routers:
        app.include_router(router)
    templates = [r.path for router in routers for r in router.routes if isinstance(r, APIRoute)]
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=state.metrics,
        templates=templates,
        models=lambda: set(state.models),
    )
    return app
