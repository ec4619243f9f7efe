"""The wrk harness: output parsing, and the Lua script's accuracy accounting against a tiny server.

The server answers with the class written in each "image" (its first byte), after a random
delay, so answers on different connections come back out of order: the accounting is right only
if every answer is paired with the image its own connection sent.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.wrk_load import (
    WrkError,
    parse_wrk_output,
    run_repeats,
    run_wrk,
    summarise,
    to_result,
    write_image_set,
)

RAW = {
    "duration_us": 2_000_000, "requests": 110, "bytes": 5000, "ok": 100, "correct": 90,
    "bad_status": 4, "unparsed": 1, "lost": 2,
    "socket_errors": {"connect": 0, "read": 1, "write": 0, "status": 4, "timeout": 2},
    "latency_us": {"mean": 1500.0, "max": 9000, "p50": 1200, "p90": 2500, "p95": 3000, "p99": 7000},
}  # fmt: skip


def test_parse_finds_the_script_line_among_wrk_text() -> None:
    out = "Running 2s test @ http://127.0.0.1:1\n  16 threads\nWRK_JSON " + json.dumps(RAW) + "\n"
    assert parse_wrk_output(out + "Requests/sec: 55.0\n") == RAW
    with pytest.raises(WrkError, match="no WRK_JSON line"):
        parse_wrk_output("Running 2s test\n")


def test_result_units_and_failures() -> None:
    r = to_result(RAW)
    assert r.seconds == 2.0 and r.images_per_s == 50.0 and r.accuracy == 0.9
    assert (r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms) == (1.2, 2.5, 7.0, 1.5)
    assert r.failed == 4 + 1 + 2 + 3  # wrk's status errors are the script's bad_status


def test_summary_is_the_median_run_and_pooled_accuracy() -> None:
    runs = [to_result(RAW | {"ok": ok, "correct": c}) for ok, c in ((100, 90), (300, 150), (200, 200))]
    s = summarise(runs)
    assert s["images_per_s"] == 100.0 and s["images_per_s_range"] == [50.0, 150.0]
    assert s["answers"] == 600 and s["accuracy"] == pytest.approx(440 / 600)


def test_image_set_needs_labels(tmp_path: Path) -> None:
    with pytest.raises(WrkError, match="as many labels"):
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
        time.sleep(random.uniform(0, 0.004))  # answers of different connections overtake
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
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (make bench-tools)")
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
    assert s["failed"] >= 1 and all(r["failed"] == r["requests"] - r["ok"] for r in s["runs"])
