"""Sampling profile (py-spy) of the HTTP server while it is saturated: the CPU milliseconds one
request costs per component.

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
The same CPU times by thread kind need no attribution: the event loop's thread is the front
end of a one-image request (HTTP, routing, a thumbnail's decoding and preprocessing, the
hand-off to the engine and the answer back), the engine's threads run the network.
"""

from __future__ import annotations

import dataclasses
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

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.data import write_held_set
from benchmarks.harness.output import table, write_json
from benchmarks.harness.provenance import REPO, RESULTS
from benchmarks.harness.servers import Server, cpu_seconds, service_spec, stat_fields
from benchmarks.harness.wrk import run_wrk
from models.package import read_manifest

RATE_HZ = 200
# (component, regular expression over one py-spy frame "function (path:line)"), tried in order.
COMPONENTS: list[tuple[str, str]] = [
    ("response encoding", r"json/encoder|orjson|jsonable_encoder|serialize_response|render \("
     r"|_prepare_response_content|\.model_dump|dump_json|\bencode_\w+ \(service/"),
    ("decode", r"^(decode_image|decode_images?|_decode\w*|is_thumbnail|_to_rgb) |\(service/jpeg\.py"
     r"|simplejpeg|^(ImageFile\.load|Image\.open|Image\.convert"
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
OTHER, NATIVE = "other", "threads without a Python stack"
_THREAD = re.compile(r"^thread \((\d+)\)")


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter (installed by the test extra), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.is_file() else shutil.which("py-spy")


def start_profile(pid: int, seconds: float, raw_out: Path) -> subprocess.Popen[bytes] | None:
    """Record ``seconds`` of collapsed stacks of process ``pid`` (and its children) into
    ``raw_out``; None without py-spy."""
    if (exe := py_spy()) is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
           "--rate", str(RATE_HZ), "--format", "raw", "--threads", "--nonblocking",
           "--subprocesses", "--output", str(raw_out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def samples(raw: Path) -> list[tuple[int | None, str, list[str], int]]:
    """``(OS thread id, thread name, frames outermost first, count)`` per collapsed stack of a
    py-spy ``raw`` file (``frame;frame;...;leaf count``; with ``--subprocesses`` and
    ``--threads`` each line starts with its process, then its thread)."""
    out = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not (stack and count.isdigit()):
            continue
        frames = [f.strip() for f in stack.split(";")]
        frames = frames[1:] if frames[0].startswith("process ") else frames
        tid, name = None, ""
        if frames and (m := _THREAD.match(frames[0])):
            # "thread (27541): AnyIO worker thread" -> one name per thread kind, not per id
            tid, name, frames = int(m.group(1)), re.sub(r"\s*\(\d+\)", "", frames[0]), frames[1:]
        out.append((tid, name, frames, int(count)))
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
    for tid, _, frames, n in samples(raw):
        by_thread.setdefault(tid, Counter())[component_of(frames)] += n
    return by_thread


def thread_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pids``, by OS thread id, from /proc."""
    tasks = [t / "stat" for pid in pids for t in Path(f"/proc/{pid}/task").glob("*")]
    return {int(t.parent.name): cpu_seconds(t) for t in tasks if stat_fields(t)}


def thread_table(raw: Path, cpu_s: dict[int, float], images: float) -> dict[str, float]:
    """ms of CPU per image by thread kind: ``event loop``, ``engine``, ``other`` (threads
    py-spy never saw, such as native pools, count as other)."""
    kinds = {tid: name for tid, name, _, _ in samples(raw) if tid is not None}
    out = dict.fromkeys(("event loop", "engine", "other"), 0.0)
    for tid, seconds in cpu_s.items():
        name = kinds.get(tid, "")
        kind = (
            "event loop" if name.endswith("MainThread") else "engine" if "engine-" in name else "other"
        )
        out[kind] += 1e3 * seconds / max(images, 1e-9)
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
    per_image = 1e3 / max(images, 1e-9)
    for tid, counts in by_thread.items():
        total.update(counts)
        n = sum(counts.values())
        for name, k in counts.items() if tid in cpu_s and n else ():
            ms[name] += per_image * cpu_s[tid] * k / n
    ms[NATIVE] += per_image * sum(s for tid, s in cpu_s.items() if tid not in by_thread)
    all_samples = sum(total.values()) or 1
    return [{"component": n, "ms_per_image": v, "share": total[n] / all_samples} for n, v in ms.items()]


def profile_components(
    url: str, path: str, pids: Callable[[], list[int]], images: Path, seconds: float, raw: Path
) -> dict[str, Any]:
    """py-spy on the server's processes ``pids()`` for ``seconds`` while wrk saturates ``url`` +
    ``path`` (raw JPEG bodies, 16 connections), and every thread's CPU time over the same window:
    the component table (:func:`component_table`)."""
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
    answered = result["wrk"].images_per_s * (t1 - t0)  # the CPU window's share of the answers
    cpu = {tid: cpu1[tid] - cpu0.get(tid, 0.0) for tid in cpu1}
    return {
        "seconds": round(t1 - t0, 2),
        "images_per_s": result["wrk"].images_per_s,
        "accuracy": result["wrk"].accuracy,
        "rows": component_table(attribute(raw), cpu, answered),
        "cpu_ms_per_image": 1e3 * sum(cpu.values()) / max(answered, 1e-9),
        "threads_ms_per_image": thread_table(raw, cpu, answered),
        "raw": raw.name,
        "method": next(p for p in __doc__.split("\n\n") if p.startswith("Method")).replace("\n", " "),
    }


def pin(pids: list[int], cpus: set[int]) -> None:
    """Bind every thread of ``pids`` to ``cpus`` (threads they start later inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)


def markdown(prof: dict[str, Any]) -> list[str]:
    """The component table as markdown lines."""
    rows = [
        (r["component"], f"{r['ms_per_image']:.2f}", f"{100 * r['share']:.1f}%") for r in prof["rows"]
    ]
    total = ("**server CPU from /proc**", f"**{prof['cpu_ms_per_image']:.2f}**", "")
    return table(("component", "ms CPU per image", "share of samples"), [*rows, total])


def main(argv: list[str] | None = None) -> int:
    p = suite_parser("benchmarks.profile", __doc__)
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--server-args", default="", help="extra `python -m service` options")
    p.add_argument("--out", type=Path, default=RESULTS / "profile_components.json")
    p.add_argument("--logs", type=Path, default=REPO / "runs" / "profile")
    p.add_argument(
        "--pin", action="store_true",
        help="the server on CPU 0 and wrk on the others, so that no load generator shares the "
        "server's core (its per-thread CPU is then the server's own)",
    )  # fmt: skip
    p.add_argument("--checkout", type=Path, help="serve from this checkout (a before/after)")
    args = p.parse_args(argv)
    images = write_held_set(args.package, args.logs / "images", args.data_dir)
    path = f"/v1/models/{read_manifest(args.package).name}/classify?budget={args.budget}"
    spec = service_spec(args.package, extra=args.server_args.split())
    if args.checkout is not None:
        spec = dataclasses.replace(spec, checkout=args.checkout.resolve())
    with Server(spec, args.logs / "service.log") as s:
        if args.pin:
            pin(s.pids(), {0})
            os.sched_setaffinity(0, os.sched_getaffinity(0) - {0})  # wrk inherits it
        run_wrk(s.url, path, "raw", images, 3)  # warm-up
        raw = args.logs / "profile_raw.txt"  # large, rewritten by every run: not a result
        prof = profile_components(s.url, path, s.pids, images, args.seconds, raw)
    checkout = str(args.checkout) if args.checkout else None
    run = {
        "budget": args.budget,
        "server_args": args.server_args,
        "pinned": args.pin,
        "checkout": checkout,
    }
    write_json(args.out, prof | run)
    print(
        prof["method"],
        f"\n\nbudget {args.budget}: {prof['images_per_s']:.1f} images/s during the profile\n",
    )
    print("\n".join(markdown(prof)))
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in prof["threads_ms_per_image"].items())
    print(f"\nms of CPU per image by thread (no sampling involved): {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
