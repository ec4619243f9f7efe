"""Load generator with real labelled images: open loop (fixed arrival rate) and closed loop.

Talks only to a server on 127.0.0.1, one image per request, bounded by a request count
and a wall-clock limit. Every answer is checked against the image's label, so each figure comes
with its accuracy and the mean compute fraction the server reports per image.

Open loop: arrivals follow a seeded Poisson process at ``rate`` requests/s, and latency counts from
the *scheduled* arrival, so a slow server cannot slow the clock down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import io
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from torch import Tensor

from benchmarks.http_client import Connection, HttpError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class LoadError(RuntimeError):
    """Refused target (not loopback) or failing requests; the message says which."""


@dataclass(frozen=True)
class Labelled:
    """PNG bytes and their true class indices."""

    blobs: list[bytes]
    labels: list[int]


@dataclass
class LoadResult:
    loop: str  # "closed" or "open"
    budget: float
    concurrency: int  # closed loop: clients; open loop: most requests in flight
    offered_rate: float | None  # open loop: arrivals per second
    requests: int
    errors: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    accuracy: float
    mean_compute_fraction: float
    error_kinds: dict[str, int] = field(default_factory=dict)  # "HTTP 503", "ConnectionResetError"


def encode_pngs(x: Tensor, y: Tensor, n: int) -> Labelled:
    """The first ``n`` images of ``x [N, 3, H, W] uint8`` as PNGs, with labels ``y [N]``."""
    blobs = []
    for img in x[:n]:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy())).save(buf, "PNG")
        blobs.append(buf.getvalue())
    return Labelled(blobs, [int(v) for v in y[:n]])


def labelled_test_split(training_config: dict[str, Any], data_dir: str | None = None) -> Labelled:
    """The held test part of the split a model was trained on (its ``training_config``), as PNGs
    with labels; ``data_dir`` overrides where the data is.

    Raises:
        DataError: the data cannot be found or read.
    """
    from training.config import recorded_config
    from training.data import load_dataset

    test = load_dataset(recorded_config(training_config, data_dir).data).test
    return encode_pngs(test.x, test.y, len(test))


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise LoadError(f"the load generator only targets 127.0.0.1, not {host!r}")


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.correct = 0
        self.fractions: list[float] = []
        self.errors = 0
        self.kinds: Counter[str] = Counter()

    def error(self, kind: str) -> None:
        self.errors += 1
        self.kinds[kind] += 1

    def result(
        self, loop: str, budget: float, conc: int, rate: float | None, elapsed: float
    ) -> LoadResult:
        lat = self.latencies
        n = len(lat)
        return LoadResult(
            loop,
            budget,
            conc,
            rate,
            n,
            self.errors,
            n / elapsed if elapsed > 0 else 0.0,
            1e3 * statistics.median(lat) if lat else float("nan"),
            1e3 * _percentile(lat, 0.95),
            1e3 * _percentile(lat, 0.99),
            self.correct / n if n else float("nan"),
            sum(self.fractions) / len(self.fractions) if self.fractions else float("nan"),
            dict(self.kinds),
        )


class _Client:
    """Sends one labelled image and scores the answer into a tally."""

    def __init__(self, url: str, model: str, budget: float, data: Labelled, tally: _Tally) -> None:
        check_loopback(url)
        self.url, self.path, self.budget = url, f"/v1/models/{model}/classify", budget
        self.data, self.tally = data, tally
        self.pool: list[Connection] = []

    async def send(self, i: int, started: float) -> None:
        conn = self.pool.pop() if self.pool else Connection(self.url)
        k = i % len(self.data.blobs)
        try:
            status, body = await conn.post(
                self.path, self.data.blobs[k], "image/png", {"budget": self.budget}
            )
        except (OSError, HttpError, asyncio.IncompleteReadError) as e:
            self.tally.error(type(e).__name__)
            await conn.close()
            return
        self.pool.append(conn)
        if status != 200:
            self.tally.error(f"HTTP {status}")
            return
        self.tally.latencies.append(time.perf_counter() - started)
        pred = body["predictions"][0]
        self.tally.correct += int(pred["class_index"] == self.data.labels[k])
        self.tally.fractions.append(pred["compute_fraction"])

    async def close(self) -> None:
        for conn in self.pool:
            await conn.close()


async def closed_loop(
    url: str, model: str, budget: float, data: Labelled, concurrency: int, requests: int, seconds: float
) -> LoadResult:
    """``concurrency`` clients, each sending its next image when the last one is answered."""
    tally = _Tally()
    client = _Client(url, model, budget, data, tally)
    counter = iter(range(requests))
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        for i in counter:
            if time.perf_counter() >= stop_at:
                return
            await client.send(i, time.perf_counter())

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return tally.result("closed", budget, concurrency, None, time.perf_counter() - t0)


async def open_loop(
    url: str,
    model: str,
    budget: float,
    data: Labelled,
    rate: float,
    requests: int,
    seconds: float,
    max_in_flight: int = 256,
    seed: int = 0,
) -> LoadResult:
    """Poisson arrivals at ``rate``/s; an arrival that finds ``max_in_flight`` busy is an error."""
    if rate <= 0:
        raise LoadError(f"open-loop rate must be positive, got {rate}")
    tally = _Tally()
    client = _Client(url, model, budget, data, tally)
    rng = random.Random(seed)
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    due = t0
    peak = 0
    for i in range(requests):
        due += rng.expovariate(rate)
        if due - t0 > seconds:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if len(tasks) >= max_in_flight:
            tally.error("client: max_in_flight reached")
            continue
        task = asyncio.create_task(client.send(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        peak = max(peak, len(tasks))
    if tasks:
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    await client.close()
    return tally.result("open", budget, peak, rate, elapsed)
