"""Sampling profile (py-spy) of the HTTP server while it is saturated: where a missed serving target
spends its time, and the CPU milliseconds one request costs per component.

py-spy samples every thread of the server process from outside, so the event loop, the batcher
and the inference worker are all seen without changing the server.

    .venv/bin/python -m benchmarks.profile --budget 1.0 --seconds 10   # the component table

Method of the component table: while wrk holds the server at saturation (16 connections, one
held test JPEG per request), py-spy records every thread's Python stack 200 times a second,
leaving out idle threads (blocked on a lock, a selector or a sleep), and /proc gives every
thread's CPU time over the same window. Each sample goes to the component of its innermost
frame that COMPONENTS recognises (rows tried in order, first match wins). A thread's measured
CPU time is split over the components in proportion to its samples (samples alone would also
count time a runnable thread waited for a core), and divided by the images answered in the
window: ms of CPU per one-image request. The rows are module and function patterns, so they
keep working when the routes are rewritten; "other" shows what they no longer recognise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

RATE_HZ = 200

# (component, regular expression over one py-spy frame "function (path:line)"), tried in order.
COMPONENTS: list[tuple[str, str]] = [
    ("response encoding", r"json/encoder|orjson|jsonable_encoder|serialize_response|render \("
     r"|_prepare_response_content|\.model_dump|dump_json|\bencode_\w+ \(service/"),
    ("decode", r"^(decode_image|decode_images?|_to_rgb) |^(ImageFile\.load|Image\.open|Image\.convert"
     r"|Image\.draft|\w+ImageFile\.\w+|_open|_accept) \(PIL/"),
    ("preprocessing", r"^(preprocess\w*|images_to_batch|\w*normali[sz]e\w*) "
     r"|^Image\.(resize|crop|reduce|thumbnail) \(PIL/"),
    ("decode", r"\(PIL/"),
    ("body / multipart parse", r"multipart|formparsers|^Request\.(form|body|stream|json) "
     r"|read_body|body_limit|\bdecode_\w+ \(service/routes/|v2_codec"),
    ("engine", r"\(service/engine/(stage|executor|backends|guard|costs)\.py|\(models/|\(torch/"
     r"|onnxruntime"),
    ("queueing and thread hops", r"\(service/engine/|concurrent/futures|\(anyio/|run_in_threadpool"
     r"|to_thread|wrap_future|call_soon_threadsafe|\(queue\.py|\(threading\.py"),
    ("metrics and logging", r"prometheus_client|\(service/(metrics|logs)\.py|\(logging/"),
    ("routing, middleware, validation", r"\(fastapi/|\(starlette/|pydantic|\(service/"),
    ("connection + HTTP parse", r"\(uvicorn/|httptools|\(h11/|uvloop|\(asyncio/|selectors\.py"
     r"|\(socket\.py|\(ssl\.py"),
]  # fmt: skip
_COMPILED = [(name, re.compile(rx)) for name, rx in COMPONENTS]
OTHER = "other"
NATIVE = "threads without a Python stack"


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter (installed by the test extra), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.is_file() else shutil.which("py-spy")


def start_profile(pid: int, seconds: float, raw_out: Path) -> subprocess.Popen[bytes] | None:
    """Record ``seconds`` of collapsed stacks of process ``pid`` into ``raw_out`` (None: no py-spy)."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    cmd += ["--rate", str(RATE_HZ), "--format", "raw", "--threads", "--nonblocking", "--subprocesses"]
    cmd += ["--output", str(raw_out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def top_frames(raw: Path, n: int = 12) -> list[tuple[str, float]]:
    """The ``n`` leaf frames with the largest share of all samples in a py-spy ``raw`` file.

    Each line of the collapsed format is ``frame;frame;...;leaf count``; the leaf is where the
    sample found the thread (self time). py-spy leaves out idle samples (threads blocked on a
    lock, a selector or a sleep), so the shares are of the time a thread was running.
    """
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            leaves[stack.split(";")[-1].strip()] += int(count)
    total = sum(leaves.values()) or 1
    return [(frame, c / total) for frame, c in leaves.most_common(n)]


def top_threads(raw: Path) -> list[tuple[str, float]]:
    """Share of samples per thread (the first frame of each collapsed stack names the thread, after
    the process with ``--subprocesses``)."""
    threads: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            name = frames[1] if frames[0].startswith("process ") and len(frames) > 1 else frames[0]
            # "thread (27541): AnyIO worker thread" -> one row per thread name, not per id.
            threads[re.sub(r"\s*\(\d+\)", "", name).strip()] += int(count)
    total = sum(threads.values()) or 1
    return [(t, c / total) for t, c in threads.most_common(6)]


_THREAD = re.compile(r"^thread \((\d+)\)")


def samples(raw: Path) -> list[tuple[int | None, list[str], int]]:
    """``(OS thread id, frames outermost first, count)`` per collapsed stack of a py-spy ``raw``
    file (``--threads``; with ``--subprocesses`` each line starts with its process)."""
    out = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not (stack and count.isdigit()):
            continue
        frames = [f.strip() for f in stack.split(";")]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        tid = None
        if frames and (m := _THREAD.match(frames[0])):
            tid, frames = int(m.group(1)), frames[1:]
        out.append((tid, frames, int(count)))
    return out


def component_of(frames: list[str]) -> str:
    """The component of the innermost frame :data:`COMPONENTS` recognises, else ``"other"``."""
    for frame in reversed(frames):
        for name, rx in _COMPILED:
            if rx.search(frame):
                return name
    return OTHER


def attribute(raw: Path) -> dict[int | None, Counter[str]]:
    """Samples per component, per OS thread, in a py-spy ``raw`` file."""
    by_thread: dict[int | None, Counter[str]] = {}
    for tid, frames, n in samples(raw):
        by_thread.setdefault(tid, Counter())[component_of(frames)] += n
    return by_thread


def thread_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pids``, by OS thread id, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def component_table(
    by_thread: dict[int | None, Counter[str]], cpu_s: dict[int, float], images: float
) -> list[dict[str, float | str]]:
    """Rows ``{component, ms_per_image, share}`` in :data:`COMPONENTS` order, then the rest.

    Each thread's CPU seconds in ``cpu_s`` are split over components in proportion to that
    thread's samples; ``share`` is the component's part of all samples. A thread without Python
    samples (a native pool) is its own row; samples of a thread ``cpu_s`` does not know are
    left out of the ms (their share still shows).
    """
    ms: dict[str, float] = dict.fromkeys([n for n, _ in COMPONENTS] + [OTHER, NATIVE], 0.0)
    total: Counter[str] = Counter()
    for tid, counts in by_thread.items():
        total.update(counts)
        n = sum(counts.values())
        if tid in cpu_s and n:
            for name, k in counts.items():
                ms[name] += 1e3 * cpu_s[tid] * k / n / max(images, 1e-9)
    for tid, seconds in cpu_s.items():
        if tid not in by_thread:
            ms[NATIVE] += 1e3 * seconds / max(images, 1e-9)
    all_samples = sum(total.values()) or 1
    return [{"component": n, "ms_per_image": v, "share": total[n] / all_samples} for n, v in ms.items()]


def profile_components(
    url: str, path: str, pids: Callable[[], list[int]], images: Path, seconds: float, raw: Path
) -> dict[str, Any]:
    """py-spy on the server's processes ``pids()`` for ``seconds`` while wrk saturates ``url`` +
    ``path`` (raw JPEG bodies, 16 connections), and every thread's CPU time over the same window:
    the component table (:func:`component_table`)."""
    from benchmarks.wrk_load import run_wrk

    result: dict[str, Any] = {}
    load = threading.Thread(
        target=lambda: result.update(wrk=run_wrk(url, path, "raw", images, seconds + 3))
    )
    load.start()
    time.sleep(1.0)  # the profile starts and ends inside the load
    procs = pids()
    t0, cpu0 = time.monotonic(), thread_cpu(procs)
    proc = start_profile(procs[0], seconds, raw)
    if proc is None:
        load.join()
        raise RuntimeError("py-spy is not installed (the test extra installs it)")
    _, err = proc.communicate(timeout=seconds + 60)
    t1, cpu1 = time.monotonic(), thread_cpu(procs)
    load.join()
    if proc.returncode != 0 or not raw.is_file():
        raise RuntimeError(f"py-spy exited {proc.returncode}: {err.decode(errors='replace')[-300:]}")
    w = result["wrk"]
    answered = w.images_per_s * (t1 - t0)  # the CPU window's share of the load's answers
    cpu = {tid: cpu1[tid] - cpu0.get(tid, 0.0) for tid in cpu1}
    rows = component_table(attribute(raw), cpu, answered)
    return {
        "seconds": round(t1 - t0, 2),
        "images_per_s": w.images_per_s,
        "accuracy": w.accuracy,
        "rows": rows,
        "cpu_ms_per_image": 1e3 * sum(cpu.values()) / max(answered, 1e-9),
        "raw": str(raw),
        "method": next(p for p in __doc__.split("\n\n") if p.startswith("Method")).replace("\n", " "),
    }


def markdown(prof: dict[str, Any]) -> list[str]:
    """The component table as markdown lines."""
    return [
        "| component | ms CPU per image | share of samples |",
        "|---|---|---|",
        *[
            f"| {r['component']} | {r['ms_per_image']:.2f} | {100 * r['share']:.1f}% |"
            for r in prof["rows"]
        ],
        f"| **server CPU from /proc** | **{prof['cpu_ms_per_image']:.2f}** | |",
    ]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.held_jpegs import write_held_set
    from benchmarks.launch import REPO, Server, free_port_block, service_spec
    from benchmarks.wrk_load import run_wrk
    from models.package import read_manifest

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--package", type=Path, default=REPO / "packages" / "default")
    p.add_argument("--data-dir", help="CIFAR-10 JPEG archive or tree (default: the package config's)")
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--server-args", default="", help="extra `python -m service` options")
    p.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "profile_components.json"
    )
    p.add_argument("--logs", type=Path, default=REPO / "runs" / "profile")
    args = p.parse_args(argv)
    images = write_held_set(args.package, args.logs / "images", args.data_dir)
    path = f"/v1/models/{read_manifest(args.package).name}/classify?budget={args.budget}"
    spec = service_spec(args.package, free_port_block(1), args.server_args.split())
    with Server(spec, args.logs / "service.log") as server:
        run_wrk(server.spec.url, path, "raw", images, 3)  # warm-up
        raw = args.out.with_name(args.out.stem + "_raw.txt")
        prof = profile_components(server.spec.url, path, server.pids, images, args.seconds, raw)
    prof |= {"budget": args.budget, "server_args": args.server_args, "raw": raw.name}
    args.out.write_text(json.dumps(prof, indent=2) + "\n")
    print(prof["method"], "\n")
    print(f"budget {args.budget}: {prof['images_per_s']:.1f} images/s during the profile\n")
    print("\n".join(markdown(prof)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
