"""wrk, the C load generator, with labelled images: images/s, latency percentiles and accuracy.

A Python load generator on a 2-core machine steals the CPU it measures; wrk spends a few percent.
``benchmarks/wrk/classify.lua`` sends one image per request (raw ``image/jpeg``, a multipart form
or a KServe v2 binary body) cycling through an image set on disk, and scores every answer
against its image's label (the script says how requests and answers are paired). Only answers
that arrive inside a window on the wall clock count, opened after a warm-up: wrk's own duration
leaves out its threads' start-up, during which the first threads already load the server.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness.http import check_loopback

LUA_SCRIPT = Path(__file__).resolve().parents[1] / "wrk" / "classify.lua"
BODIES = ("raw", "multipart", "v2")
MARKER = "WRK_JSON "
WARMUP_S = 2.0  # seconds between wrk's start and the window: its threads start one after another


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no result; the message says which."""


class LateStartError(WrkError):
    """wrk's threads were still starting when the measured window opened."""

    def __init__(self, late: int, spread_s: float) -> None:
        super().__init__(
            f"{late} of wrk's threads sent their first request after the measured window "
            f"opened (threads started over {spread_s * 1e3:.0f} ms): give the run a longer warm-up"
        )
        self.spread_s = spread_s


@dataclass(frozen=True)
class WrkResult:
    """One run's window (``seconds`` long): ``requests`` read in the whole run, ``answered`` in the
    window (any status), ``ok`` with a class, ``correct`` the label's; ``failed``: non-200,
    unparsable, lost and socket errors; ``in_flight``: answers/s x mean latency (Little's law, at
    most the connections); the spread of the threads' first requests; the warm-up given."""

    seconds: float
    requests: int
    answered: int
    ok: int
    correct: int
    failed: int
    images_per_s: float
    accuracy: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    in_flight: float
    thread_start_spread_ms: float
    warmup_s: float


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The JSON line ``done()`` of the Lua script printed (wrk's own summary is ignored)."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            parsed: dict[str, Any] = json.loads(line[len(MARKER) :])
            return parsed
    raise WrkError(f"wrk printed no {MARKER.strip()} line; its output ends: {stdout[-400:]!r}")


def to_result(raw: dict[str, Any], connections: int, warmup_s: float = WARMUP_S) -> WrkResult:
    """Images/s, accuracy and latency (ms) of the window from the script's raw counts (µs);
    ``warmup_s`` is the warm-up the run was given, recorded with it.

    Raises:
        WrkError: a thread began after the window opened (a longer warm-up is needed), or the
            figures break Little's law: more requests in flight than ``connections`` means that
            answers from outside the window were counted.
    """
    if raw["late_threads"]:
        raise LateStartError(raw["late_threads"], raw["thread_start_spread_us"] / 1e6)
    seconds, ok, lat = raw["window_us"] / 1e6, raw["ok"], raw["latency_us"]
    # wrk's "status" errors are the non-2xx answers the script already counts as bad_status.
    socket = sum(v for k, v in raw["socket_errors"].items() if k != "status")
    in_flight = raw["answered"] / seconds * lat["mean"] / 1e6 if seconds > 0 else 0.0
    if in_flight > connections * 1.05:
        raise WrkError(
            f"{raw['answered']} answers in {seconds:.2f} s at a mean latency of "
            f"{lat['mean'] / 1e3:.1f} ms would need {in_flight:.1f} requests in flight on "
            f"{connections} connections: the run counted answers from outside its window"
        )
    failed = raw["bad_status"] + raw["unparsed"] + raw["lost"] + socket
    ms = {k: lat[k] / 1e3 for k in ("p50", "p90", "p99", "mean")}
    return WrkResult(
        seconds, raw["requests"], raw["answered"], ok, raw["correct"], failed,
        ok / seconds if seconds > 0 else 0.0, raw["correct"] / ok if ok else float("nan"),
        ms["p50"], ms["p90"], ms["p99"], ms["mean"], in_flight, raw["thread_start_spread_us"] / 1e3,
        warmup_s,
    )  # fmt: skip


def wrk_command(
    url: str, path: str, body: str, images: Path, window: tuple[float, float], connections: int,
    offset: int = 0,
) -> list[str]:  # fmt: skip
    """wrk for the wall-clock ``window`` (``time.time()`` seconds: start, end), run from now
    until a second past its end. One thread per connection: each Lua state then owns one
    connection (accuracy pairing)."""
    if body not in BODIES:
        raise WrkError(f"body {body!r} is not one of {BODIES}")
    exe = shutil.which("wrk")
    if exe is None:
        raise WrkError("wrk is not installed: `make bench-tools` installs Debian's wrk")
    return [
        exe, f"-t{connections}", f"-c{connections}", f"-d{math.ceil(window[1] - time.time()) + 1}s",
        "--timeout", "30s", "-s", str(LUA_SCRIPT), url,
        "--", str(images), path, body, str(connections), str(offset),
        str(round(window[0] * 1e6)), str(round(window[1] * 1e6)),
    ]  # fmt: skip


def run_wrk(
    url: str, path: str, body: str, images: Path, seconds: float, connections: int = 16,
    offset: int = 0, warmup: float = WARMUP_S,
) -> WrkResult:  # fmt: skip
    """Load ``url`` + ``path`` with ``connections`` closed-loop clients; count ``seconds`` of
    answers after ``warmup`` seconds (every thread sending, connections open).

    A run whose threads were still starting when the window opened is run again once, with a
    warm-up of twice that start-up plus a second (beside a busy server 16 threads took 1.3-2.0 s).
    """
    check_loopback(url)
    for attempt in range(2):
        start = time.time() + warmup
        cmd = wrk_command(url, path, body, images, (start, start + seconds), connections, offset)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=warmup + seconds + 120)
        if proc.returncode != 0:
            raise WrkError(f"wrk exited {proc.returncode}: {proc.stderr[-400:]}")
        try:
            return to_result(parse_wrk_output(proc.stdout), connections, warmup)
        except LateStartError as e:
            if attempt:
                raise
            warmup = max(2 * warmup, 2 * e.spread_s + 1.0)
            print(f"wrk: {e}; running again with {warmup:.1f} s", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def run_repeats(
    url: str, path: str, body: str, images: Path, seconds: float, repeats: int,
    connections: int = 16, warmup: float = WARMUP_S,
) -> dict[str, Any]:  # fmt: skip
    """``repeats`` runs (each starting at other images) and the median run by images/s."""
    n_images = sum(1 for line in (images / "labels.txt").read_text().splitlines() if line.strip())
    offsets = [r * n_images // max(repeats, 1) for r in range(repeats)]
    return summarise(
        [run_wrk(url, path, body, images, seconds, connections, o, warmup) for o in offsets]
    )


def summarise(runs: list[WrkResult], cpu_ms: list[float] | None = None) -> dict[str, Any]:
    """The runs, their median by images/s, and the accuracy over every answer of every run.

    ``cpu_ms``: the server's CPU per answer of each run; the row takes the median run's, so that
    its images/s and its CPU come from one run (medians taken apart can pair a fast run's rate
    with a slow run's CPU, a product above the machine's cores)."""
    order = sorted(range(len(runs)), key=lambda i: runs[i].images_per_s)
    ranked = [runs[i] for i in order]
    median, ok = ranked[len(ranked) // 2], sum(r.ok for r in runs)
    cpu = {}
    if cpu_ms is not None:
        cpu = {"server_cpu_ms_per_image": cpu_ms[order[len(order) // 2]],
               "server_cpu_ms_per_image_all": [round(c, 3) for c in cpu_ms]}  # fmt: skip
    return cpu | {
        "runs": [asdict(r) for r in runs],
        "images_per_s": statistics.median(r.images_per_s for r in runs),
        "images_per_s_range": [ranked[0].images_per_s, ranked[-1].images_per_s],
        "p50_ms": median.p50_ms,
        "p99_ms": median.p99_ms,
        "answers": ok,
        "accuracy": sum(r.correct for r in runs) / ok if ok else float("nan"),
        "failed": sum(r.failed for r in runs),
    }
