"""The wrk harness: output parsing, and the Lua script's accuracy accounting against a tiny server.

The server answers with the class written in each "image" (its first byte), after a random
delay, so answers on different connections come back out of order: the accounting is right only
if every answer is paired with the image its own connection sent.
"""

from __future__ import annotations

import json
import random
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.harness.data import write_image_set
from benchmarks.harness.wrk import (
    LateStartError,
    WrkError,
    parse_wrk_output,
    run_repeats,
    run_wrk,
    summarise,
    to_result,
)
from tests.tools import require_binary

RAW = {
    "window_us": 2_000_000, "wrk_duration_us": 3_010_000, "late_threads": 0,
    "thread_start_spread_us": 4_000, "requests": 160, "bytes": 5000, "answered": 105, "ok": 100,
    "correct": 90, "bad_status": 4, "unparsed": 1, "lost": 2, "outside_window": 55,
    "socket_errors": {"connect": 0, "read": 1, "write": 0, "status": 4, "timeout": 2},
    "latency_us": {"mean": 1500.0, "max": 9000, "p50": 1200, "p90": 2500, "p95": 3000, "p99": 7000},
}  # fmt: skip


def test_parse_finds_the_script_line_among_wrk_text() -> None:
    out = "Running 2s test @ http://127.0.0.1:1\n  16 threads\nWRK_JSON " + json.dumps(RAW) + "\n"
    assert parse_wrk_output(out + "Requests/sec: 55.0\n") == RAW
    with pytest.raises(WrkError, match="no WRK_JSON line"):
        parse_wrk_output("Running 2s test\n")


def test_result_units_and_failures() -> None:
    r = to_result(RAW, connections=4)
    assert r.seconds == 2.0 and r.images_per_s == 50.0 and r.accuracy == 0.9
    assert (r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms) == (1.2, 2.5, 7.0, 1.5)
    assert r.failed == 4 + 1 + 2 + 3  # wrk's status errors are the script's bad_status
    assert r.in_flight == pytest.approx(105 / 2.0 * 0.0015)
    assert r.thread_start_spread_ms == 4.0


def test_a_thread_that_started_inside_the_window_is_refused() -> None:
    with pytest.raises(LateStartError, match=r"2 of wrk's threads .* longer warm-up"):
        to_result(RAW | {"late_threads": 2}, connections=4)


def test_more_in_flight_than_connections_is_refused() -> None:
    # 105 answers in 2 s at 200 ms each: 10.5 requests in flight, impossible on 4 connections.
    slow = RAW | {"latency_us": RAW["latency_us"] | {"mean": 200_000.0}}
    with pytest.raises(WrkError, match=r"10\.5 requests in flight on 4 connections"):
        to_result(slow, connections=4)
    assert to_result(slow, connections=16).in_flight == pytest.approx(10.5)


def test_summary_is_the_median_run_and_pooled_accuracy() -> None:
    runs = [
        to_result(RAW | {"ok": ok, "correct": c}, 4) for ok, c in ((100, 90), (300, 150), (200, 200))
    ]
    s = summarise(runs)
    assert s["images_per_s"] == 100.0 and s["images_per_s_range"] == [50.0, 150.0]
    assert s["answers"] == 600 and s["accuracy"] == pytest.approx(440 / 600)
    assert "server_cpu_ms_per_image" not in s
    # the CPU is the median run's (the one at 100 images/s), not the median of the CPU figures
    with_cpu = summarise(runs, cpu_ms=[1.0, 2.0, 3.0])
    assert with_cpu["server_cpu_ms_per_image"] == 3.0  # the median of the figures would be 2.0
    assert with_cpu["server_cpu_ms_per_image_all"] == [1.0, 2.0, 3.0]


def test_image_set_needs_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="as many labels"):
        write_image_set([b"a", b"b"], [1], tmp_path)


class _Classifier(BaseHTTPRequestHandler):
    """Answers the class in the image's first byte; byte 255 answers HTTP 500."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        kind = self.headers["Content-Type"]
        if kind.startswith("multipart/form-data"):
            image = body.split(b"\r\n\r\n", 1)[1]
        elif kind == "application/octet-stream":
            header_len = int(self.headers["Inference-Header-Content-Length"])
            (n,) = struct.unpack("<I", body[header_len : header_len + 4])
            image = body[header_len + 4 : header_len + 4 + n]
        else:
            image = body
        # Answers of different connections overtake; byte 254 answers after a fixed 20 ms.
        time.sleep(0.02 if image[0] == 254 else random.uniform(0, 0.004))
        if image[0] == 254:
            image = bytes([0])
        if image[0] == 255:
            self._send(500, b'{"error": "bad"}')
            return
        if kind == "application/octet-stream":
            out = {"outputs": [{"name": "class_index", "datatype": "INT64", "data": [image[0]]}]}
        else:
            out = {"predictions": [{"class_index": image[0], "top_k": [{"class_index": 99}]}]}
        self._send(200, json.dumps(out).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk closes its connections mid-keep-alive when the run ends


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    require_binary("wrk", "wrk")
    httpd = _QuietServer(("127.0.0.1", 0), _Classifier)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("body", ["raw", "multipart", "v2"])
def test_every_answer_is_scored_against_its_own_image(server: str, body: str, tmp_path: Path) -> None:
    labels = [i % 10 for i in range(23)]
    images = write_image_set([bytes([c]) + b"jpeg" for c in labels], labels, tmp_path)
    r = run_wrk(server, "/classify", body, images, seconds=1, connections=4)
    assert r.ok > 20 and r.failed == 0
    assert r.correct == r.ok  # every answer matched the label of the image it answers


def test_wrong_answers_and_errors_are_counted(server: str, tmp_path: Path) -> None:
    # Images 0..9 carry their label, images 10..19 carry another class, image 20 fails.
    blobs = [bytes([i % 10]) for i in range(10)] + [bytes([(i + 1) % 10]) for i in range(10)]
    images = write_image_set([*blobs, b"\xff"], [*range(10), *range(10), 0], tmp_path)
    s = run_repeats(server, "/classify", "raw", images, seconds=1, repeats=2, connections=3)
    assert len(s["runs"]) == 2 and s["answers"] > 40
    # Half of the images answer right; each thread sends a contiguous cycle, so the share of
    # right answers stays within one cycle per connection of a half.
    assert 0.3 < s["accuracy"] < 0.7
    assert s["failed"] >= 1 and all(r["failed"] == r["answered"] - r["ok"] for r in s["runs"])


def test_only_answers_inside_the_window_count(server: str, tmp_path: Path) -> None:
    # Every answer takes 20 ms: 4 connections can be answered at most 200 times a second, and
    # the warm-up's and the tail's answers are read but not counted.
    images = write_image_set([bytes([254])] * 8, [0] * 8, tmp_path)
    r = run_wrk(server, "/classify", "raw", images, seconds=1.5, connections=4, warmup=0.5)
    assert r.seconds == 1.5
    assert 0 < r.images_per_s <= 4 / 0.020
    assert r.mean_ms >= 20.0 and r.in_flight <= 4 * 1.05
    assert r.requests > r.ok + r.failed  # answers outside the window were read, not counted
    assert r.correct == r.ok and r.thread_start_spread_ms < 500
    assert r.warmup_s == 0.5


def test_a_window_that_opened_before_the_threads_started_is_measured_again(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = write_image_set([bytes([3])] * 4, [3] * 4, tmp_path)
    r = run_wrk(server, "/classify", "raw", images, seconds=1, connections=2, warmup=0)
    assert "first request after the measured window opened" in capsys.readouterr().err
    assert r.seconds == 1.0 and r.ok > 0 and r.correct == r.ok
    assert r.warmup_s >= 1.0  # the retry's own warm-up is recorded with the run
