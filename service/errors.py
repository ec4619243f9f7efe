"""Domain exceptions and their status codes, in one place (after KServe's errors.py).

Every error leaves the service as one envelope ``{"error": {"code", "message", "detail"}}``;
the handlers that render it live in :mod:`service.routes.handlers`.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error a client can see; subclasses fix the status and the code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class ModelNotFoundError(ServiceError):
    status, code = 404, "model_not_found"


class InvalidOptionError(ServiceError):
    """A request option (budget, max_exit, threshold, top_k, v2 parameter) is out of range."""

    status, code = 422, "invalid_option"


class BadRequestError(ServiceError):
    """Malformed request body (bad JSON, bad base64, wrong tensor shape, no images)."""

    status, code = 400, "bad_request"


class BadImageError(ServiceError):
    """An image that cannot be decoded: not an image, truncated, empty."""

    status, code = 400, "bad_image"


class PayloadTooLargeError(ServiceError):
    """Too many bytes, pixels or images."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    status, code = 415, "unsupported_media_type"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "a valid API key is required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class QueueFullError(ServiceError):
    """The model's bounded queue cannot take the request's images."""

    status, code = 429, "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class DeadlineExceededError(ServiceError):
    status, code = 504, "deadline_exceeded"


class ClientDisconnectedError(ServiceError):
    """The client went away before its answer; nobody reads this (499, as nginx logs it)."""

    status, code = 499, "client_disconnected"


class NotReadyError(ServiceError):
    status, code = 503, "not_ready"


class EngineStoppedError(ServiceError):
    """The engine is shutting down and takes no new work."""

    status, code = 503, "shutting_down"
