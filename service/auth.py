"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (HTTP or gRPC metadata)."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import UnauthorizedError
from service.settings import ServiceSettings
from service.state import app_state


def _key_matches(given: str, keys: list[str]) -> bool:
    # Compare with every key, in constant time each, so timing reveals neither key nor position.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


async def require_api_key(request: Request) -> None:
    """Raise 401 unless the request carries a configured key (no-op when none are configured).

    The API routers' dependency; ``/metrics`` awaits it when its setting protects it. A
    coroutine because FastAPI runs a plain ``def`` dependency in its thread pool: a thread hop
    on every request for a check that never blocks.
    """
    check_api_key(
        app_state(request).settings,
        request.headers.get("x-api-key"),
        request.headers.get("authorization", ""),
    )


def check_api_key(settings: ServiceSettings, x_api_key: str | None, authorization: str) -> None:
    """Raise 401 unless ``X-API-Key`` or ``Authorization: Bearer`` holds a configured key.

    Every protocol's check: HTTP headers, gRPC metadata (``x-api-key``, ``authorization``).
    """
    keys = [k.get_secret_value() for k in settings.auth.api_keys]
    if not keys:
        return
    given = x_api_key
    if given is None and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    if given is None or not _key_matches(given, keys):
        raise UnauthorizedError()
