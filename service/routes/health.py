"""Health (open to all) and Prometheus metrics (open, or behind the API key by setting)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.routes.deps import app_state, check_api_key

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready: every configured model is loaded and warmed up (503 until then)."""
    state = app_state(request)
    models = {name: m.engine.ready for name, m in state.models.items()}
    ok = state.ready and all(models.values())
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "models": models}, status_code=200 if ok else 503
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    if state.settings.auth.protect_metrics:
        check_api_key(request)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
