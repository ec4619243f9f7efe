"""wrk, the C load generator, with labelled images: images/s, latency percentiles and accuracy.

A Python load generator on a 2-core machine steals the CPU it measures; wrk spends a few percent.
``benchmarks/wrk/classify.lua`` sends one image per request (raw ``image/jpeg``, a multipart form
or a KServe v2 binary body) cycling through an image set on disk, and scores every answer
against its image's label (the script says how requests and answers are paired).

    .venv/bin/python -m benchmarks.wrk_load --url http://127.0.0.1:8000 \\
        --path '/v1/models/NAME/classify?budget=0.5' --images DIR --seconds 5 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadgen import check_loopback

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "classify.lua"
BODIES = ("raw", "multipart", "v2")
MARKER = "WRK_JSON "


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no result; the message says which."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: ``ok`` answers with a class, ``correct`` of them the image's label."""

    seconds: float
    requests: int  # responses wrk read, any status
    ok: int
    correct: int
    failed: int  # non-200, unparsable answers, lost requests and socket errors
    images_per_s: float  # ok answers per second
    accuracy: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


def wrk_executable() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        raise WrkError("wrk is not installed: `make bench-tools` installs Debian's wrk")
    return exe


def write_image_set(blobs: list[bytes], labels: list[int], out: Path, suffix: str = "jpg") -> Path:
    """Write ``blobs`` and ``labels.txt`` (``file label`` per line) into ``out`` for the Lua script."""
    if len(blobs) != len(labels) or not blobs:
        raise WrkError(f"an image set needs as many labels as images (>0): {len(blobs)}, {len(labels)}")
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (blob, label) in enumerate(zip(blobs, labels, strict=True)):
        name = f"{i:05d}.{suffix}"
        (out / name).write_bytes(blob)
        lines.append(f"{name} {label}")
    (out / "labels.txt").write_text("\n".join(lines) + "\n")
    return out


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The JSON line ``done()`` of the Lua script printed (wrk's own summary is ignored)."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            parsed: dict[str, Any] = json.loads(line[len(MARKER) :])
            return parsed
    raise WrkError(f"wrk printed no {MARKER.strip()} line; its output ends: {stdout[-400:]!r}")


def to_result(raw: dict[str, Any]) -> WrkResult:
    """Images/s, accuracy and latency (ms) from the script's raw counts (microseconds)."""
    seconds = raw["duration_us"] / 1e6
    ok = raw["ok"]
    # wrk's "status" errors are the non-2xx answers the script already counts as bad_status.
    socket = sum(v for k, v in raw["socket_errors"].items() if k != "status")
    lat = raw["latency_us"]
    return WrkResult(
        seconds=seconds,
        requests=raw["requests"],
        ok=ok,
        correct=raw["correct"],
        failed=raw["bad_status"] + raw["unparsed"] + raw["lost"] + socket,
        images_per_s=ok / seconds if seconds > 0 else 0.0,
        accuracy=raw["correct"] / ok if ok else float("nan"),
        p50_ms=lat["p50"] / 1e3,
        p90_ms=lat["p90"] / 1e3,
        p99_ms=lat["p99"] / 1e3,
        mean_ms=lat["mean"] / 1e3,
    )


def wrk_command(
    url: str, path: str, body: str, images: Path, seconds: float, connections: int, offset: int = 0
) -> list[str]:
    """One thread per connection: each Lua state then owns one connection (accuracy pairing)."""
    if body not in BODIES:
        raise WrkError(f"body {body!r} is not one of {BODIES}")
    return [
        wrk_executable(), f"-t{connections}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "30s", "-s", str(LUA_SCRIPT), url,
        "--", str(images), path, body, str(connections), str(offset),
    ]  # fmt: skip


def run_wrk(
    url: str,
    path: str,
    body: str,
    images: Path,
    seconds: float,
    connections: int = 16,
    offset: int = 0,
) -> WrkResult:
    """Load ``url`` + ``path`` with ``connections`` closed-loop clients for ``seconds``."""
    check_loopback(url)
    cmd = wrk_command(url, path, body, images, seconds, connections, offset)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode != 0:
        raise WrkError(f"wrk exited {proc.returncode}: {proc.stderr[-400:]}")
    return to_result(parse_wrk_output(proc.stdout))


def run_repeats(
    url: str,
    path: str,
    body: str,
    images: Path,
    seconds: float,
    repeats: int,
    connections: int = 16,
) -> dict[str, Any]:
    """``repeats`` runs (each starting at other images) and the median run by images/s."""
    n_images = sum(1 for line in (images / "labels.txt").read_text().splitlines() if line.strip())
    runs = [
        run_wrk(url, path, body, images, seconds, connections, offset=r * n_images // max(repeats, 1))
        for r in range(repeats)
    ]
    return summarise(runs)


def summarise(runs: list[WrkResult]) -> dict[str, Any]:
    """The runs, their median by images/s, and the accuracy over every answer of every run."""
    ranked = sorted(runs, key=lambda r: r.images_per_s)
    median = ranked[len(ranked) // 2]
    ok = sum(r.ok for r in runs)
    return {
        "runs": [asdict(r) for r in runs],
        "images_per_s": statistics.median(r.images_per_s for r in runs),
        "images_per_s_range": [ranked[0].images_per_s, ranked[-1].images_per_s],
        "p50_ms": median.p50_ms,
        "p99_ms": median.p99_ms,
        "answers": ok,
        "accuracy": sum(r.correct for r in runs) / ok if ok else float("nan"),
        "failed": sum(r.failed for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.wrk_load", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--path", required=True, help="request path with its query")
    p.add_argument("--images", type=Path, required=True, help="a folder with labels.txt")
    p.add_argument("--body", choices=BODIES, default="raw")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args(argv)
    try:
        out = run_repeats(
            args.url, args.path, args.body, args.images, args.seconds, args.repeats, args.connections
        )
    except WrkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
