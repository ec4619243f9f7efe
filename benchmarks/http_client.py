"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for load generation.

httpx costs about a millisecond of CPU per request; on a 2-core machine that shares its cores
with the server, the load generator would then measure itself. This client only writes one
request and reads one ``Content-Length`` response per call, on one persistent connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

# Under the server's keep-alive timeout (uvicorn: 5 s), as httpx's pool expires idle connections:
# reusing one the server has already closed would count a client artefact as a failed request.
KEEPALIVE_EXPIRY_S = 4.0


class HttpError(RuntimeError):
    pass


class Connection:
    """One keep-alive connection to ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0  # perf_counter() at the end of the last response

    async def post(
        self, path: str, body: bytes, content_type: str, params: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """POST and return ``(status, parsed JSON body)``; reconnects first when the connection has
        been idle for :data:`KEEPALIVE_EXPIRY_S`."""
        if self.writer is not None and time.perf_counter() - self.last_used >= KEEPALIVE_EXPIRY_S:
            await self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        target = f"{path}?{urlencode(params)}" if params else path
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise HttpError("connection closed by the server")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        self.last_used = time.perf_counter()
        return status, json.loads(payload) if payload else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
            self.reader = self.writer = None
