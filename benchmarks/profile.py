"""Sampling profile (py-spy) of the HTTP server while it is saturated: where a missed serving target
spends its time, so that a miss is reported with its cause.

py-spy samples every thread of the server process from outside, so the event loop, the batcher
and the inference worker are all seen without changing the server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter (installed by the test extra), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.is_file() else shutil.which("py-spy")


def start_profile(pid: int, seconds: float, raw_out: Path) -> subprocess.Popen[bytes] | None:
    """Record ``seconds`` of collapsed stacks of process ``pid`` into ``raw_out`` (None: no py-spy)."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "200"]
    cmd += ["--format", "raw", "--threads", "--nonblocking", "--output", str(raw_out)]
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
    """Share of samples per thread (the first frame of each collapsed stack names the thread)."""
    threads: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            # "thread (27541): AnyIO worker thread" -> one row per thread name, not per id.
            threads[re.sub(r"\s*\(\d+\)", "", stack.split(";")[0]).strip()] += int(count)
    total = sum(threads.values()) or 1
    return [(t, c / total) for t, c in threads.most_common(6)]
