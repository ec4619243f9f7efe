"""Closed- and open-loop load, one driver for every target (the engine in-process, HTTP).

A target is a ``send(i)`` that makes request ``i`` and returns an :class:`Answer`, or raises: the
exception is counted as an error of its kind (its type name; a :class:`Failed` names its own).
Closed loop: ``clients`` clients, each sending its next request when its last one is answered,
as coroutines or, for a target that blocks, as threads. Open loop: seeded Poisson arrivals at
``rate`` per second; latency counts from the *scheduled* arrival, so that a slow server cannot
slow the clock down (no coordinated omission). Both stop at ``requests`` or after ``seconds``.
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
    """A request that failed; the message is its error kind (``HTTP 503``)."""


@dataclass(frozen=True)
class Answer:
    """One answered request: its images, their summed compute fraction, how many are right
    (against the labels) and how many agree with another reference (the final exit)."""

    images: int = 1
    fraction: float = 1.0
    correct: int = 0
    agree: int = 0


@dataclass
class Tally:
    """What a load received; :meth:`summary` gives the figures."""

    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only
    images: int = 0
    fraction: float = 0.0
    correct: int = 0
    agree: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    peak: int = 0  # open loop: most requests in flight

    def add(self, a: Answer, latency: float) -> None:
        self.latencies.append(latency)
        self.images += a.images
        self.fraction += a.fraction
        self.correct += a.correct
        self.agree += a.agree

    def fail(self, e: BaseException) -> None:
        self.errors[str(e) if isinstance(e, Failed) else type(e).__name__] += 1

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        for k in ("images", "fraction", "correct", "agree"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.errors += other.errors

    def summary(self, labelled: bool = True) -> dict[str, Any]:
        """requests, errors (and their kinds), images/s, latency percentiles (ms), accuracy (None
        without labels), mean compute fraction and agreement, per answered image."""
        n = self.images or float("nan")
        return {
            "requests": len(self.latencies),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "images": self.images,
            "images_per_s": self.images / self.elapsed if self.elapsed > 0 else 0.0,
            **latency_ms(self.latencies),
            "accuracy": self.correct / n if labelled else None,
            "mean_compute_fraction": self.fraction / n,
            "agreement": self.agree / n,
        }


Send = Callable[[int], Awaitable[Answer]]


async def _timed(send: Send, i: int, started: float, tally: Tally) -> None:
    try:
        answer = await send(i)
    except Exception as e:  # every failure is a figure of the run, not the end of it
        tally.fail(e)
        return
    tally.add(answer, time.perf_counter() - started)


async def closed_loop(send: Send, clients: int, requests: int, seconds: float) -> Tally:
    """``clients`` coroutines, each sending its next request when the last is answered."""
    tally, counter = Tally(), itertools.count()
    t0 = time.perf_counter()

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
        due += rng.expovariate(rate)
        if due - t0 > seconds:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if len(tasks) >= max_in_flight:
            tally.fail(Failed("client: max_in_flight reached"))
            continue
        task = asyncio.create_task(_timed(send, i, due, tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        tally.peak = max(tally.peak, len(tasks))
    await asyncio.gather(*list(tasks))
    tally.elapsed = time.perf_counter() - t0
    return tally


def thread_loop(call: Callable[[int], Answer], clients: int, requests: int, seconds: float) -> Tally:
    """A closed loop of ``clients`` threads, each blocked on its request (``call`` waits)."""
    counter, tallies = itertools.count(), [Tally() for _ in range(clients)]
    t0 = time.perf_counter()

    def client(tally: Tally) -> None:
        for i in counter:
            if i >= requests or time.perf_counter() - t0 >= seconds:
                return
            started = time.perf_counter()
            try:
                answer = call(i)
            except Exception as e:
                tally.fail(e)
                continue
            tally.add(answer, time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(t,)) for t in tallies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = Tally(elapsed=time.perf_counter() - t0)
    for t in tallies:
        total.merge(t)
    return total


def run(coro: Coroutine[Any, Any, T], uvloop: bool = False) -> T:
    """Run a load to its end; ``uvloop``: on uvloop's event loop, as the service's requests wait."""
    if not uvloop:
        return asyncio.run(coro)
    import uvloop as fast

    with asyncio.Runner(loop_factory=fast.new_event_loop) as runner:
        return runner.run(coro)
