"""The app's state: settings, metrics and the served models, built by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from service.budget_times import BudgetTime
from service.engine import LoadedModel
from service.errors import ModelNotFoundError, NotReadyError
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings


@dataclass
class AppState:
    """Everything the routes need, built by ``create_app`` and filled by its lifespan."""

    settings: ServiceSettings
    metrics: ServiceMetrics
    models: dict[str, LoadedModel] = field(default_factory=dict)
    # model -> budget -> its expected time on this device
    budget_times: dict[str, dict[float, BudgetTime]] = field(default_factory=dict)
    ready: bool = False


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.anytime
    return state


def get_model(request: Request, name: str) -> LoadedModel:
    """The loaded model ``name`` (404 naming the served ones; 503 while it warms up)."""
    return find_model(app_state(request), name)


def find_model(state: AppState, name: str) -> LoadedModel:
    """:func:`get_model` for a protocol without a Starlette request (gRPC)."""
    loaded = state.models.get(name)
    if loaded is None:
        raise ModelNotFoundError(
            f"model {name!r} is not served here; served: {sorted(state.models)}",
            detail={"models": sorted(state.models)},
        )
    if not loaded.engine.ready:
        raise NotReadyError(f"model {name!r} is not ready yet")
    return loaded
