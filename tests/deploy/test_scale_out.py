"""Slow: two service replicas behind the project's nginx config, one stopped under load.

Every request must either succeed or get a clear error (the JSON envelope with a status the
client can act on), and once nginx has noticed, traffic must go on through the survivor.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from models.package import load_package
from tests.conftest import make_package
from tests.deploy.servers import (
    LOOPBACK,
    free_port,
    png_bytes,
    run_nginx,
    run_service,
    stop,
)
from tests.deploy.test_images_compose import nginx_config_for
from tests.tools import require_binary

pytestmark = pytest.mark.slow

# Bounded load: at least REQUESTS requests and at least AFTER_S seconds past the stop, never
# more than MAX_REQUESTS, from CLIENTS concurrent clients.
REQUESTS = 160
MAX_REQUESTS = 1000
AFTER_S = 3.0
CLIENTS = 4
STOP_AFTER = 40  # stop one replica once this many have been answered
CLEAR_ERRORS = {429, 503, 504}  # the service's and nginx's own envelopes, with a retry hint


@dataclass
class Outcome:
    index: int
    sent: float
    status: int
    body: dict[str, object] | None
    error: str | None = None


def _classified(name: str, url: str) -> float:
    """Requests a replica answered for ``name`` (from its own /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("anytime_request_duration_seconds_count{") and f'model="{name}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_one_replica_stops_mid_run(tmp_path: Path, sig: signal.Signals) -> None:
    require_binary("nginx", "nginx")
    package = make_package(tmp_path, "msdnet", isc=True)
    name = load_package(package).manifest.name
    with run_service(package, tmp_path, "api-1") as a, run_service(package, tmp_path, "api-2") as b:
        ports = [int(s.url.rsplit(":", 1)[1]) for s in (a, b)]
        lb_port = free_port()
        lb = f"http://{LOOPBACK}:{lb_port}"
        with run_nginx(nginx_config_for(lb_port, ports, tmp_path), tmp_path, lb):
            # Metrics are per replica: the balancer refuses to mix them (docker/nginx/nginx.conf).
            mixed = httpx.get(f"{lb}/metrics", timeout=10)
            assert mixed.status_code == 404 and mixed.json()["error"]["code"] == "not_found"
            outcomes: list[Outcome] = []
            lock = threading.Lock()
            stopped_at: list[float] = []

            def one(i: int) -> None:
                sent = time.monotonic()
                files = {"files": (f"{i}.png", png_bytes(i), "image/png")}
                try:
                    r = httpx.post(f"{lb}/v1/models/{name}/classify", files=files, timeout=30)
                    body = r.json()
                    outcome = Outcome(i, sent, r.status_code, body)
                except (httpx.HTTPError, ValueError) as e:
                    outcome = Outcome(i, sent, 0, None, repr(e))
                with lock:
                    outcomes.append(outcome)
                    if len(outcomes) == STOP_AFTER:
                        stopped_at.append(time.monotonic())
                        a.proc.send_signal(sig)  # stop api-1 while requests are in flight

            served_by_b_before = _classified(name, b.url)
            issued = [0]

            def client() -> None:
                while True:
                    with lock:
                        i = issued[0]
                        late = bool(stopped_at) and time.monotonic() > stopped_at[0] + AFTER_S
                        if i >= MAX_REQUESTS or (i >= REQUESTS and late):
                            return
                        issued[0] += 1
                    one(i)

            with ThreadPoolExecutor(CLIENTS) as pool:
                for f in [pool.submit(client) for _ in range(CLIENTS)]:
                    f.result()
            stop(a.proc)
            served_by_b = _classified(name, b.url) - served_by_b_before
            # With no replica left, nginx answers the service's envelope itself, with a retry hint.
            stop(b.proc)
            down = httpx.post(f"{lb}/v1/models/{name}/classify", content=png_bytes(0), timeout=30,
                              headers={"Content-Type": "image/png"})  # fmt: skip
            assert down.status_code == 503 and down.headers["retry-after"] == "1"
            assert down.json()["error"]["code"] == "upstream_unavailable"

    assert len(outcomes) >= REQUESTS and stopped_at
    failures = [o for o in outcomes if o.status != 200]
    for o in outcomes:
        assert o.error is None, f"request {o.index}: no HTTP answer at all: {o.error}"
        assert isinstance(o.body, dict)
        if o.status == 200:
            predictions = o.body["predictions"]
            assert isinstance(predictions, list) and len(predictions) == 1
        else:
            # A clear error: a status that says "retry", and the one JSON envelope with a code.
            assert o.status in CLEAR_ERRORS, (o.status, o.body)
            error = o.body["error"]
            assert isinstance(error, dict) and error["code"] and error["message"]
    # Traffic went on through the survivor: everything sent a moment after the stop succeeded
    # (nginx retries a refused connection on the other replica), and it was api-2 that answered.
    after = [o for o in outcomes if o.sent > stopped_at[0] + 1.0]
    assert len(after) >= CLIENTS, "no load after the stop to judge"
    assert all(o.status == 200 for o in after), [
        (o.index, o.status, o.body) for o in after if o.status != 200
    ]
    assert served_by_b >= len(after)
    print(
        f"{sig.name}: {len(outcomes) - len(failures)}/{len(outcomes)} succeeded, "
        f"{len(failures)} clear errors, "
        f"{len(after)} sent after the stop all succeeded, api-2 answered {served_by_b:.0f}"
    )
