"""Domain exceptions and their status codes, in one place (after KServe's errors.py).

Each subclass fixes its status and machine-readable code in its class line. The handlers in
:mod:`service.routes.handlers` render them: ``{"error": {"code", "message", "detail"}}`` on v1 and
the health routes, ``{"error": "<message>"}`` on ``/v2`` (the Open Inference Protocol's shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServiceError(Exception):
    """Base of every error a client can see; subclasses fix the status and the code."""

    status: int = 500
    code: str = "internal_error"

    def __init_subclass__(cls, status: int = 500, code: str = "internal_error", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status, cls.code = status, code

    def __init__(self, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class BadRequestError(ServiceError, status=400, code="bad_request"):
    """Malformed request body (bad JSON, bad base64, wrong tensor shape, no images)."""


class BadImageError(ServiceError, status=400, code="bad_image"):
    """An image that cannot be decoded: not an image, truncated, empty."""


class UnauthorizedError(ServiceError, status=401, code="unauthorized"):
    def __init__(self, message: str = "a valid API key is required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFoundError(ServiceError, status=404, code="model_not_found"):
    """No served model has the requested name."""


class ModelLoadFailedError(ServiceError, status=400, code="load_failed"):
    """A load request whose version failed (validation, backend, parity); the old one serves."""


class ModelControlDisabledError(ServiceError, status=400, code="model_control_disabled"):
    """A load or unload request while the control mode is not ``explicit`` (as Triton)."""


class PayloadTooLargeError(ServiceError, status=413, code="payload_too_large"):
    """Too many bytes, pixels or images."""


class UnsupportedMediaTypeError(ServiceError, status=415, code="unsupported_media_type"):
    """A body in a media type the route does not read."""


class InvalidOptionError(ServiceError, status=422, code="invalid_option"):
    """A request option is out of range: of the schema, or of what the model offers."""


class QueueFullError(ServiceError, status=429, code="queue_full"):
    """The model's bounded queue cannot take the request's images."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ClientDisconnectedError(ServiceError, status=499, code="client_disconnected"):
    """The client went away before its answer; nobody reads this (499, as nginx logs it)."""


class NotReadyError(ServiceError, status=503, code="not_ready"):
    """The model is still loading or warming up."""


class EngineStoppedError(ServiceError, status=503, code="shutting_down"):
    """The engine is shutting down and takes no new work."""


class DeadlineExceededError(ServiceError, status=504, code="deadline_exceeded"):
    """No answer within the request's deadline (the service's timeout or the client's)."""


class ControlTimeoutError(ServiceError, status=504, code="control_timeout"):
    """A load or unload that some worker processes did not finish in time (they are named)."""


def validation_problems(errors: Sequence[Any]) -> tuple[str, list[dict[str, str]]]:
    """``(message, detail)`` of pydantic's ``errors()``: each offending field and its problem."""
    problems = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
        for e in errors
    ]
    return "; ".join(f"{p['field']}: {p['problem']}" for p in problems), problems
