"""Exception handlers: every error leaves in its protocol's shape, with the status errors.py fixes.

``/v2``: ``{"error": "<message>"}`` (Open Inference Protocol); everything else:
``{"error": {"code", "message", "detail"}}``. Bad input never gets a 500 and never a traceback:
domain errors carry their own status, request validation is a 422, routing errors keep their
status, anything unexpected is a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import ServiceError, validation_problems

log = logging.getLogger("service")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request"}


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error in the shape of the protocol ``request`` speaks."""
    path = request.url.path
    if path == "/v2" or path.startswith("/v2/"):
        body: dict[str, Any] = {"error": message}
    else:
        body = {"error": {"code": code, "message": message, "detail": detail}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)  # registered for ServiceError only
    return error_response(request, exc.status, exc.code, exc.message, exc.detail, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, problems = validation_problems(exc.errors())
    return error_response(request, 422, "invalid_option", message or "invalid request", problems)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    return error_response(request, exc.status_code, code, message, None, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
    return error_response(
        request, 500, "internal_error", "internal error; the server log has the details"
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
