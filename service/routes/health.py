"""Health (open to all) and Prometheus metrics (open, or behind the API key by setting)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.auth import require_api_key
from service.contract import V1_ERRORS, error_responses
from service.schemas import Health, Readiness
from service.state import app_state

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Alive: the process answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A model is still loading."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready: every configured model is loaded and warmed up (503 until then)."""
    state = app_state(request)
    models = state.registry.readiness()
    ok = state.ready and all(models.values())
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "models": models}, status_code=200 if ok else 503
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
              "description": "Prometheus text exposition."},
        **error_responses(V1_ERRORS, 401),
    },
)  # fmt: skip
async def metrics(request: Request) -> Response:
    """Prometheus metrics (behind the API key when ``auth.protect_metrics`` is set)."""
    state = app_state(request)
    if state.settings.auth.protect_metrics:
        await require_api_key(request)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
