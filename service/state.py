"""The app's state: settings, metrics and the model registry, built by ``create_app``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import Request
from opentelemetry.trace import Tracer

from service.metrics import ServiceMetrics
from service.repository import ModelRegistry, ServedVersion
from service.repository.control import RepositoryControl
from service.settings import ServiceSettings


@dataclass
class AppState:
    """Everything the routes need, built by ``create_app`` and filled by its lifespan."""

    settings: ServiceSettings
    metrics: ServiceMetrics
    registry: ModelRegistry
    control: RepositoryControl | None = None  # set by the lifespan
    tracer: Tracer | None = None  # tracing on (service/tracing.py)
    ready: bool = False


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.anytime
    return state


def get_model(request: Request, name: str, version: int | None = None) -> ServedVersion:
    """The served ``version`` of ``name`` (default: its newest ready one); 404 naming the served
    models or versions, 503 while it loads."""
    return app_state(request).registry.resolve(name, version)


@contextmanager
def lease_model(request: Request, name: str, version: int | None = None) -> Iterator[ServedVersion]:
    """As :func:`get_model`, held until the block ends: an unload drains it first."""
    with app_state(request).registry.lease(name, version) as served:
        # The middleware labels the request's metrics with the version that answered it.
        request.state.model_version = str(served.version)
        yield served
