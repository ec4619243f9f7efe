"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import UnauthorizedError
from service.state import app_state


def _key_matches(given: str, keys: list[str]) -> bool:
    # Compare with every key, in constant time each, so timing reveals neither key nor position.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


def require_api_key(request: Request) -> None:
    """Raise 401 unless the request carries a configured key (no-op when none are configured).

    The API routers' dependency; ``/metrics`` calls it when its setting protects it.
    """
    keys = [k.get_secret_value() for k in app_state(request).settings.auth.api_keys]
    if not keys:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None or not _key_matches(given, keys):
        raise UnauthorizedError()
