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
from models.package import PackageError
from service.contract import build_openapi
from service.engine.choices import BackendChoices
from service.engine.factory import freeze_startup_heap
from service.metrics import ServiceMetrics
from service.middleware import RequestMetricsMiddleware
from service.repository import Desired, ModelRegistry
from service.repository.loading import fingerprint, load_version, package_identity
from service.repository.registry import Loader
from service.routes import health, v1, v2
from service.routes.handlers import install_handlers
from service.settings import ServiceSettings
from service.state import AppState

log = logging.getLogger("service")


class ModelLoadError(RuntimeError):
    """A configured package could not be served (the message names it and why)."""


def models_list(settings: ServiceSettings) -> Desired:
    """The ``models`` list as a repository: each package is one version of its own name."""
    desired: Desired = {}
    for path in settings.models:
        try:
            name, version = package_identity(path)
        except PackageError as e:
            raise ModelLoadError(f"cannot serve model package {path}: {e}") from e
        if name in desired:
            raise ModelLoadError(f"two packages are named {name!r}; names must be unique")
        desired[name] = {version: path}
    return desired


def build_registry(
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    choices: BackendChoices | None,
    loader: Loader | None = None,
) -> ModelRegistry:
    """A registry whose versions load as ``settings`` say (or as ``loader`` does), failures
    counted on ``metrics``."""

    def failed(name: str, version: int, reason: str) -> None:
        metrics.load_failures.labels(name, str(version)).inc()

    return ModelRegistry(
        loader or partial(load_version, settings=settings, metrics=metrics, choices=choices),
        fingerprint=fingerprint,
        drain_timeout_s=settings.request_timeout_s + 5,
        on_failure=failed,
    )


def start_models(registry: ModelRegistry, desired: Desired) -> None:
    """Load the start-up models; any failure stops start-up with one message."""
    report = registry.apply(desired)
    if report.failed:
        registry.close()
        (name, version), reason = next(iter(report.failed.items()))
        raise ModelLoadError(f"cannot serve model package {desired[name][version]}: {reason}")


def create_app(
    settings: ServiceSettings | None = None,
    metrics: ServiceMetrics | None = None,
    backend_choices: BackendChoices | None = None,
    loader: Loader | None = None,
    grpc_port: int | None = None,
) -> FastAPI:
    """Build the FastAPI app for ``settings`` (default: from the environment).

    ``metrics`` defaults to a fresh single-process :class:`ServiceMetrics`; ``backend_choices``
    is given to each of several worker processes, so that they serve one backend per model.
    ``loader`` builds each served version (default: from its package; a front end of the
    shared engine process builds clients of that process's engines: ``service/topology``).
    ``grpc_port``: the lifespan serves the gRPC API on it too, from the models' load to the
    engines' stop (``python -m service`` passes the port it holds; None: HTTP only).
    """
    settings = settings or ServiceSettings()
    metrics = metrics or ServiceMetrics()
    state = AppState(settings, metrics, build_registry(settings, metrics, backend_choices, loader))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.models:
            log.warning("no model packages configured (ANYTIME_MODELS); serving no models")
        # Loading and warm-up are heavy: a worker thread keeps the event loop free meanwhile.
        await anyio.to_thread.run_sync(start_models, state.registry, models_list(settings))
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
            await anyio.to_thread.run_sync(state.registry.close)

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
        known=state.registry.known,
    )
    return app
