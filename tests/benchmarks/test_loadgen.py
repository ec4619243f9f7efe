"""Load generator edges and the serving targets computed from hand-made rows."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.loadgen import (
    Labelled,
    LoadError,
    check_loopback,
    closed_loop,
    encode_pngs,
    open_loop,
)
from benchmarks.serving_suite import headline


def test_only_loopback_targets() -> None:
    check_loopback("http://127.0.0.1:8000")
    with pytest.raises(LoadError, match=r"only targets 127\.0\.0\.1"):
        check_loopback("http://10.1.2.3:8000")


def test_open_loop_rejects_a_non_positive_rate() -> None:
    data = Labelled([b""], [0])
    with pytest.raises(LoadError, match="rate must be positive"):
        asyncio.run(open_loop("http://127.0.0.1:1", "m", 1.0, data, 0.0, 10, 1.0))


def test_failed_requests_are_counted_by_kind() -> None:
    # Port 1 on the loopback: nothing listens, every connection is refused.
    data = Labelled([b"png"], [0])
    r = asyncio.run(closed_loop("http://127.0.0.1:1", "m", 1.0, data, 2, 5, 5.0))
    assert r.requests == 0 and r.errors == 5
    assert r.error_kinds == {"ConnectionRefusedError": 5}


def test_encoded_pngs_decode_to_the_same_pixels() -> None:
    x = torch.randint(0, 256, (3, 3, 8, 6), dtype=torch.uint8)
    y = torch.tensor([4, 1, 7])
    out = encode_pngs(x, y, 2)
    assert out.labels == [4, 1]
    back = np.asarray(Image.open(io.BytesIO(out.blobs[1])))
    assert back.shape == (8, 6, 3) and np.array_equal(back, x[1].permute(1, 2, 0).numpy())


def _row(budget: float, acc: float, ips: float, p50: float = 10.0, p99: float = 20.0) -> dict[str, Any]:
    return {
        "budget": budget,
        "accuracy": acc,
        "images_per_s": ips,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": 9,
    }


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
    import benchmarks.http_client as http_client
    import benchmarks.loadgen as loadgen

    monkeypatch.setattr(http_client, "KEEPALIVE_EXPIRY_S", expiry_s)
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

    async def scenario() -> loadgen._Tally:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tally = loadgen._Tally()
        client = loadgen._Client(f"http://127.0.0.1:{port}", "m", 1.0, Labelled([b"x"], [0]), tally)
        await client.send(0, 0.0)
        await asyncio.sleep(0.5)  # the server has closed the idle connection by now
        await client.send(1, 0.0)
        await client.close()
        server.close()
        return tally

    tally = asyncio.run(scenario())
    assert tally.errors == errors
    assert tally.correct == 2 - errors
