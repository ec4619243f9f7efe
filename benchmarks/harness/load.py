"""Closed- and open-loop load, one driver for every target (the engine in-process, HTTP).

A target is a ``send(i)`` that makes request ``i`` and returns an :class:`Answer`, or raises:
the failure is counted by kind (its type name; a :class:`Failed` names its own). Closed loop:
``clients`` clients each send their next request when the last one is answered (coroutines, or
threads for a target that blocks). Open loop: seeded Poisson arrivals at ``rate``/s, latency from
the *scheduled* arrival, so a slow server cannot slow the clock (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from benchmarks.harness.stats import latency_ms

T = TypeVar("T")


class Failed(Exception):
    """A failed request; the message is its kind (``HTTP 503``)."""


@dataclass(frozen=True)
class Answer:
    """An answered request: images, their summed compute fraction, how many are right (labels)
    and how many agree with a reference (the final exit's class)."""

    images: int = 1
    fraction: float = 1.0
    correct: int = 0
    agree: int = 0


@dataclass
class Tally:
    """What a load received (latencies in s, of answered requests); :meth:`summary` the figures."""

    latencies: list[float] = field(default_factory=list)
    images: int = 0
    fraction: float = 0.0
    correct: int = 0
    agree: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    peak: int = 0  # open loop: most requests in flight

    def add(self, a: Answer | Tally, latency: float | None = None) -> None:
        """One answer and its latency, or another tally's answers and failures."""
        if isinstance(a, Tally):
            self.latencies += a.latencies
            self.errors += a.errors
        else:
            self.latencies.append(latency or 0.0)
        self.images, self.fraction = self.images + a.images, self.fraction + a.fraction
        self.correct, self.agree = self.correct + a.correct, self.agree + a.agree

    def fail(self, e: BaseException) -> None:
        self.errors[str(e) if isinstance(e, Failed) else type(e).__name__] += 1

    def summary(self, labelled: bool = True) -> dict[str, Any]:
        """Requests, errors, images/s, latency (ms), and per answered image: accuracy (None
        unless ``labelled``), compute fraction, agreement."""
        n = self.images or float("nan")
        return {
            "requests": len(self.latencies), "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors), "images": self.images,
            "images_per_s": self.images / self.elapsed if self.elapsed > 0 else 0.0,
            **latency_ms(self.latencies), "accuracy": self.correct / n if labelled else None,
            "mean_compute_fraction": self.fraction / n, "agreement": self.agree / n,
        }  # fmt: skip


Send = Callable[[int], Awaitable[Answer]]


async def _timed(send: Send, i: int, started: float, tally: Tally) -> None:
    try:
        answer = await send(i)
    except Exception as e:  # a failure is a figure of the run, not its end
        return tally.fail(e)
    tally.add(answer, time.perf_counter() - started)


async def closed_loop(send: Send, clients: int, requests: int, seconds: float) -> Tally:
    """``clients`` coroutines, each sending its next request when the last is answered."""
    tally, counter, t0 = Tally(), itertools.count(), time.perf_counter()

    async def client() -> None:
        for i in counter:
            if i >= requests or time.perf_counter() - t0 >= seconds:
                return
            await _timed(send, i, time.perf_counter(), tally)

    await asyncio.gather(*(client() for _ in range(clients)))
    tally.elapsed = time.perf_counter() - t0
    return tally


async def open_loop(
    send: Send, rate: float, requests: int, seconds: float, max_in_flight: int = 256, seed: int = 0
) -> Tally:
    """Poisson arrivals at ``rate``/s; one that finds ``max_in_flight`` requests busy is an error."""
    if rate <= 0:
        raise ValueError(f"open-loop rate must be positive, got {rate}")
    tally, rng, tasks = Tally(), random.Random(seed), set[asyncio.Task[None]]()
    t0 = due = time.perf_counter()
    for i in range(requests):
        if (due := due + rng.expovariate(rate)) - t0 > seconds:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if len(tasks) >= max_in_flight:
            tally.fail(Failed("client: max_in_flight reached"))
            continue
        tasks.add(task := asyncio.create_task(_timed(send, i, due, tally)))
        task.add_done_callback(tasks.discard)
        tally.peak = max(tally.peak, len(tasks))
    await asyncio.gather(*list(tasks))
    tally.elapsed = time.perf_counter() - t0
    return tally


def thread_loop(call: Callable[[int], Answer], clients: int, requests: int, seconds: float) -> Tally:
    """A closed loop of ``clients`` threads, each blocked on its request (``call`` waits)."""
    counter, tally, lock, t0 = itertools.count(), Tally(), threading.Lock(), time.perf_counter()

    def client() -> None:
        mine = Tally()
        for i in counter:
            if i >= requests or time.perf_counter() - t0 >= seconds:
                break
            started = time.perf_counter()
            try:
                mine.add(call(i), time.perf_counter() - started)
            except Exception as e:
                mine.fail(e)
        with lock:  # merged once at the end: no lock on the hot path
            tally.add(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.elapsed = time.perf_counter() - t0
    return tally


def run(coro: Coroutine[Any, Any, T], uvloop: bool = False) -> T:
    """Run a load to its end; ``uvloop``: on uvloop's event loop, as the service's requests wait."""
    if not uvloop:
        return asyncio.run(coro)
    import uvloop as fast

    with asyncio.Runner(loop_factory=fast.new_event_loop) as runner:
        return runner.run(coro)
