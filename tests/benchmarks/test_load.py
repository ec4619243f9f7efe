"""The load drivers and the HTTP client against tiny targets, and the serving targets computed
from hand-made rows."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.harness.data import encode_pngs
from benchmarks.harness.http import Classify, check_loopback
from benchmarks.harness.load import Answer, Failed, closed_loop, open_loop, run, thread_loop
from benchmarks.serving import headline


def test_only_loopback_targets() -> None:
    check_loopback("http://127.0.0.1:8000")
    with pytest.raises(ValueError, match=r"only targets 127\.0\.0\.1"):
        Classify("http://10.1.2.3:8000", "m", 1.0, [b""])


def test_open_loop_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        run(open_loop(Classify("http://127.0.0.1:1", "m", 1.0, [b""]), 0.0, 10, 1.0))


def test_failed_requests_are_counted_by_kind() -> None:
    # Port 1 on the loopback: nothing listens, every connection is refused.
    t = run(closed_loop(Classify("http://127.0.0.1:1", "m", 1.0, [b"png"], [0]), 2, 5, 5.0))
    s = t.summary()
    assert s["requests"] == 0 and s["errors"] == 5
    assert s["error_kinds"] == {"ConnectionRefusedError": 5}


async def _answer(i: int) -> Answer:
    await asyncio.sleep(0.002)
    if i % 5 == 4:
        raise Failed("HTTP 503")
    return Answer(images=2, fraction=1.5, correct=i % 2)


def test_closed_loop_keeps_its_clients_busy_and_tallies_every_answer() -> None:
    t = run(closed_loop(_answer, 3, 20, 10.0))
    s = t.summary()
    assert s["requests"] == 16 and s["error_kinds"] == {"HTTP 503": 4}
    assert s["images"] == 32 and s["mean_compute_fraction"] == pytest.approx(0.75)
    assert s["accuracy"] == pytest.approx(8 / 32)
    assert s["p50_ms"] >= 2.0 and s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]


def test_open_loop_counts_latency_from_the_scheduled_arrival() -> None:
    """A target slower than the arrivals: requests pile up, and each latency includes the time
    its arrival waited behind the others (no coordinated omission)."""
    lock = asyncio.Lock()

    async def serial(i: int) -> Answer:
        async with lock:  # one at a time, 20 ms each
            await asyncio.sleep(0.02)
        return Answer()

    t = run(open_loop(serial, 200.0, 20, 10.0, seed=3))
    assert len(t.latencies) == 20 and t.peak > 1
    assert max(t.latencies) > 0.2  # the last arrivals waited behind the earlier ones


def test_thread_loop_blocks_each_client_on_its_request() -> None:
    def call(i: int) -> Answer:
        time.sleep(0.005)
        return Answer(images=1, fraction=0.5)

    t = thread_loop(call, 4, 10**9, 0.2)
    s = t.summary(labelled=False)
    assert s["requests"] > 8 and s["accuracy"] is None and s["mean_compute_fraction"] == 0.5
    assert 4 / 0.005 * 1.2 > s["images_per_s"] > 0  # four clients of 5 ms each, at most


def test_encoded_pngs_decode_to_the_same_pixels() -> None:
    x = torch.randint(0, 256, (3, 3, 8, 6), dtype=torch.uint8)
    out = encode_pngs(x, torch.tensor([4, 1, 7]), 2)
    assert out.labels == [4, 1]
    back = np.asarray(Image.open(io.BytesIO(out.blobs[1])))
    assert back.shape == (8, 6, 3) and np.array_equal(back, x[1].permute(1, 2, 0).numpy())


def _row(budget: float, acc: float, ips: float, p50: float = 10.0, p99: float = 20.0) -> dict[str, Any]:
    return {"budget": budget, "accuracy": acc, "images_per_s": ips, "p50_ms": p50, "p99_ms": p99,
            "requests": 9}  # fmt: skip


def test_headline_picks_the_fastest_budget_within_half_a_point() -> None:
    loads = {
        "closed_loop": [_row(1.0, 0.900, 100), _row(0.5, 0.896, 250), _row(0.25, 0.850, 400)],
        "open_loop": [_row(1.0, 0.9, 50, 10, 25), _row(0.5, 0.9, 125, 8, 40)],
    }
    grid = [
        {"mode": m, "backend": "torch", "batching": "on", "budget": 1.0, "images_per_s": v}
        for m, v in (("engine", 200.0), ("http", 170.0))
    ]
    h = headline(loads, grid)
    s = h["speedup_within_half_point"]
    assert s["budget"] == 0.5 and s["throughput_ratio"] == pytest.approx(2.5)
    assert s["accuracy_delta_points"] == pytest.approx(-0.4)
    assert h["p99_over_p50_at_half_load"]["1.0"] == pytest.approx(2.5)
    assert h["p99_over_p50_at_half_load"]["0.5"] == pytest.approx(5.0)
    assert h["http_over_engine"]["torch/batching on/budget 1.0"] == pytest.approx(0.85)
    assert "0.75" in h["budgets_not_served"]


@pytest.mark.parametrize(("expiry_s", "errors"), [(0.1, 0), (60.0, 1)], ids=["expired", "stale"])
def test_connections_idle_past_the_servers_keepalive_are_not_reused(
    monkeypatch: pytest.MonkeyPatch, expiry_s: float, errors: int
) -> None:
    """A server that drops idle connections after 0.2 s (uvicorn does after 5 s): reusing one is
    a client artefact ("stale", the control case), so the connection must reconnect first."""
    import benchmarks.harness.http as http

    monkeypatch.setattr(http, "KEEPALIVE_EXPIRY_S", expiry_s)
    body = b'{"predictions": [{"class_index": 0, "compute_fraction": 1.0}]}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=0.2)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError):
            writer.close()

    async def scenario() -> list[str]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        send = Classify(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "m", 1.0, [b"x"], [0])
        outcomes = []
        for i in range(2):
            try:
                outcomes.append("right" if (await send(i)).correct else "wrong")
            except Exception as e:
                outcomes.append(type(e).__name__)
            await asyncio.sleep(0.5)  # the server has closed the idle connection by now
        await send.close()
        server.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes.count("right") == 2 - errors and len(outcomes) == 2
