"""Where and when a run happened: the machine, the commit, the command, the load on the cores."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def machine() -> str:
    """``<CPU model>, <n> logical CPUs, <OS>, torch <version>``."""
    import torch

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}, torch {torch.__version__}"


def commit() -> str:
    """The short commit, ``+dirty`` when the benchmarks or configs differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "benchmarks", "configs",
                    ":(exclude)benchmarks/results")  # fmt: skip
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def command(module: str, argv: list[str] | None) -> str:
    """The command line that ran ``module`` with ``argv`` (the process's own when None)."""
    return f"python -m {module} {shlex.join(argv if argv is not None else sys.argv[1:])}".strip()


def display(path: Path) -> str:
    """``path`` relative to the repository when inside it (the reports are read there)."""
    p = path.resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class Sitting:
    """One run's provenance: started now, :meth:`meta` at its end. The cores may be shared (a
    training run, tests): the load before and after says so."""

    def __init__(self, module: str, argv: list[str] | None) -> None:
        self.command, self.t0 = command(module, argv), time.time()
        self.load0, self.uptime0 = os.getloadavg()[0], uptime()

    def meta(self, **extra: Any) -> dict[str, Any]:
        return {
            "command": self.command,
            "machine": machine(),
            "commit": commit(),
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime(self.t0)),
            "wall_seconds": round(time.time() - self.t0, 1),
            "loadavg_1m": [self.load0, os.getloadavg()[0]],
            "uptime_before": self.uptime0,
            "uptime_after": uptime(),
            **extra,
        }
