"""The Open Inference Protocol's model repository extension: index, load, unload.

Load and unload follow the control mode (service/repository/control.py): only ``explicit`` takes
them, as Triton; each answers once every worker process has applied it. Errors in ``/v2``'s shape.
"""

from __future__ import annotations

from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ValidationError

from service.auth import require_api_key
from service.contract import V2_ERRORS, error_responses, inline_schema
from service.errors import BadRequestError, NotReadyError, validation_problems
from service.repository import ModelState
from service.repository.control import RepositoryControl
from service.repository.scan import ConfigError, ModelConfig, config_from_json
from service.routes.http import read_body
from service.schemas import (
    V2RepositoryIndexRequest,
    V2RepositoryLoadRequest,
    V2RepositoryModel,
    V2RepositoryUnloadRequest,
)
from service.state import app_state

router = APIRouter(prefix="/v2/repository", tags=["v2"], dependencies=[Depends(require_api_key)])
Body = TypeVar("Body", bound=BaseModel)


def _control(request: Request) -> RepositoryControl:
    control = app_state(request).control
    if control is None:
        raise NotReadyError("the model repository is still loading")
    return control


async def _read(request: Request, model: type[Body]) -> Body:
    """The optional JSON body (Triton's client sends none, or ``{}``) as ``model``."""
    body = await read_body(request)
    try:
        return model.model_validate_json(body or b"{}", strict=True)
    except ValidationError as e:
        raise BadRequestError(f"invalid request body: {validation_problems(e.errors())[0]}") from None


def _body(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"content": {"application/json": {"schema": inline_schema(model)}}}
    return {"requestBody": {"required": False, **schema}}


@router.post(
    "/index",
    response_model=list[V2RepositoryModel],
    response_model_exclude_none=True,
    responses=error_responses(V2_ERRORS, 400, 401, 503),
    openapi_extra=_body(V2RepositoryIndexRequest),
)
async def repository_index(request: Request) -> list[V2RepositoryModel]:
    """Every model version known here, its state and why it is not ready (every worker's)."""
    wanted = await _read(request, V2RepositoryIndexRequest)
    control = _control(request)
    entries = await anyio.to_thread.run_sync(control.index)
    return [
        V2RepositoryModel(
            name=e.name,
            version=None if e.version is None else str(e.version),
            state=e.state.value,
            reason=e.reason,
        )
        for e in entries
        if not wanted.ready or e.state is ModelState.READY
    ]


@router.post(
    "/models/{name}/load",
    responses={200: {"description": "Loaded (every version the policy selects is ready)."},
               **error_responses(V2_ERRORS, 400, 401, 404, 503, 504)},
    openapi_extra=_body(V2RepositoryLoadRequest),
)  # fmt: skip
async def load_model(name: str, request: Request) -> Response:
    """Load ``name`` from the repository (a new version takes traffic once checked and warm)."""
    body = await _read(request, V2RepositoryLoadRequest)
    raw = (body.parameters or {}).get("config")
    config: ModelConfig | None = None
    if raw is not None:
        if not isinstance(raw, str):
            raise BadRequestError("load parameter 'config' must be a JSON string")
        try:
            config = config_from_json(raw)
        except ConfigError as e:
            raise BadRequestError(str(e)) from None
    control = _control(request)
    await anyio.to_thread.run_sync(control.load, name, config)
    return Response(status_code=200)


@router.post(
    "/models/{name}/unload",
    responses={200: {"description": "Unloaded (in-flight requests were answered first)."},
               **error_responses(V2_ERRORS, 400, 401, 404, 503, 504)},
    openapi_extra=_body(V2RepositoryUnloadRequest),
)  # fmt: skip
async def unload_model(name: str, request: Request) -> Response:
    """Unload every version of ``name``; each drains the requests it accepted first."""
    await _read(request, V2RepositoryUnloadRequest)
    control = _control(request)
    await anyio.to_thread.run_sync(control.unload, name)
    return Response(status_code=200)
