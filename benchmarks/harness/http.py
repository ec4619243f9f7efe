"""A minimal HTTP/1.1 keep-alive client on asyncio streams, and the classify request it sends.

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

from benchmarks.harness.load import Answer, Failed

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Under the server's keep-alive timeout (uvicorn: 5 s), as httpx's pool expires idle connections:
# reusing one the server has already closed would count a client artefact as a failed request.
KEEPALIVE_EXPIRY_S = 4.0


def check_loopback(url: str) -> None:
    """Load goes only to this machine."""
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"the load generator only targets 127.0.0.1, not {host!r}")


class Connection:
    """One keep-alive connection to ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0  # perf_counter() at the end of the last response

    async def post(self, target: str, body: bytes, content_type: str) -> tuple[int, Any]:
        """POST and return ``(status, parsed JSON body)``; reconnects first when the connection has
        been idle for :data:`KEEPALIVE_EXPIRY_S`."""
        if self.writer is not None and time.perf_counter() - self.last_used >= KEEPALIVE_EXPIRY_S:
            await self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise Failed("connection closed by the server")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            length = int(value) if name.strip().lower() == "content-length" else length
        payload = await self.reader.readexactly(length)
        self.last_used = time.perf_counter()
        return int(status_line.split()[1]), json.loads(payload) if payload else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
            self.reader = self.writer = None


class Classify:
    """``send(i)`` for :mod:`benchmarks.harness.load`: image ``i`` (cycling) to the v1 classify
    route at ``budget`` on a free keep-alive connection, scored against its label when given."""

    def __init__(
        self, url: str, model: str, budget: float, blobs: list[bytes], labels: list[int] | None = None
    ) -> None:
        check_loopback(url)
        self.url, self.blobs, self.labels = url, blobs, labels
        self.target = f"/v1/models/{model}/classify?{urlencode({'budget': budget})}"
        self.pool: list[Connection] = []

    async def __call__(self, i: int) -> Answer:
        conn = self.pool.pop() if self.pool else Connection(self.url)
        k = i % len(self.blobs)
        try:
            status, body = await conn.post(self.target, self.blobs[k], "image/png")
        except BaseException:
            await conn.close()
            raise
        self.pool.append(conn)
        if status != 200:
            raise Failed(f"HTTP {status}")
        preds = body["predictions"]
        right = sum(p["class_index"] == self.labels[k] for p in preds) if self.labels else 0
        return Answer(len(preds), sum(p["compute_fraction"] for p in preds), right)

    async def close(self) -> None:
        for conn in self.pool:
            await conn.close()
