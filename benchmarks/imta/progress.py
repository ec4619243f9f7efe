"""``status``: which runs are finished, which one runs, and the time left from measured epochs.

The time left is the remaining epochs of every unfinished run times the median measured epoch
time (``epoch_s`` of the runs' ``log.jsonl``, training only, without the per-epoch validation
pass) of runs of the same stage (the median: an epoch during which the launcher was paused
counts the pause), divided by the runs trained at the same time (``--jobs``; their epoch times
already count the sharing); stage-2 runs with none measured yet borrow the stage-1 mean,
an upper bound (their backbone is frozen). Figures are as fast as the machine was while they ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.imta.launcher import PLAN, RUNNING, is_finished, process_state, read_pid


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of ``RUN/log.jsonl``, one per (stage, epoch): an epoch logged, then
    redone after a kill before its checkpoint was written, counts once (the later record)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[(r.get("stage", ""), r["epoch"])] = r
    return list(records.values())


def load_plan(runs_dir: Path) -> dict[str, Any]:
    path = runs_dir / PLAN
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: start the launcher first (run or start)")
    plan: dict[str, Any] = json.loads(path.read_text())
    return plan


def run_rows(runs_dir: Path) -> list[dict[str, Any]]:
    """One row per planned run: key, stage, state, epochs done and planned, measured epoch s."""
    rows = []
    for r in load_plan(runs_dir)["runs"]:
        run_dir = Path(r["run_dir"])
        log = read_log(run_dir)
        times = [e["epoch_s"] for e in log if "epoch_s" in e]
        state = "finished" if is_finished(run_dir) else ("partial" if log else "pending")
        rows.append(
            {
                "key": r["key"],
                "arm": r["arm"],
                "seed": r["seed"],
                "under_way": (run_dir / RUNNING).is_file(),
                "stage": r["stage"],
                "state": state,
                "done": len(log),
                "epochs": r["epochs"],
                "epoch_s": median(times) if times else None,
            }
        )
    return rows


def _epoch_seconds(rows: list[dict[str, Any]]) -> dict[int, float] | None:
    """Seconds per epoch of each stage: the median over its runs' measured epochs, a stage with
    none borrowing the other's; None while no epoch is measured."""
    by_stage = {
        st: [r["epoch_s"] for r in rows if r["stage"] == st and r["epoch_s"] is not None]
        for st in (1, 2)
    }
    if not by_stage[1] and not by_stage[2]:
        return None
    per_epoch = {st: median(v) for st, v in by_stage.items() if v}
    per_epoch.setdefault(2, per_epoch.get(1, 0.0))
    per_epoch.setdefault(1, per_epoch[2])
    return per_epoch


def _run_left(row: dict[str, Any], per_epoch: dict[int, float]) -> float:
    """Training seconds left of one run (0 once finished)."""
    if row["state"] == "finished":
        return 0.0
    return max(row["epochs"] - row["done"], 0) * per_epoch[row["stage"]]


def seconds_left(rows: list[dict[str, Any]]) -> tuple[float | None, bool]:
    """Training seconds left and whether a stage-2 figure is the stage-1 stand-in."""
    per_epoch = _epoch_seconds(rows)
    if per_epoch is None:
        return None, False
    borrowed = not any(r["stage"] == 2 and r["epoch_s"] is not None for r in rows) and any(
        r["stage"] == 2 and r["state"] != "finished" for r in rows
    )
    return sum(_run_left(r, per_epoch) for r in rows), borrowed


def status_text(runs_dir: Path) -> str:
    rows = run_rows(runs_dir)
    found = read_pid(runs_dir)
    launcher = "not running" if found is None else f"{process_state(found[0])} (pid {found[0]})"
    lines = [f"launcher: {launcher}", "run                      state     epochs   s/epoch"]
    if found is not None:  # the launcher marks the runs it trains now
        for r in rows:
            if r["under_way"] and r["state"] != "finished":
                r["state"] = process_state(found[0])
    for r in rows:
        per = f"{r['epoch_s']:.0f}" if r["epoch_s"] is not None else "-"
        lines.append(f"{r['key']:<24} {r['state']:<9} {r['done']:>3}/{r['epochs']:<4} {per:>7}")
    finished = sum(r["state"] == "finished" for r in rows)
    left, borrowed = seconds_left(rows)
    jobs = int(load_plan(runs_dir).get("jobs", 1))
    eta = "unknown (no epoch measured yet)" if left is None else f"{_duration(left / jobs)} of training"
    eta += f" ({jobs} runs at a time)" if jobs > 1 and left is not None else ""
    note = " (stage 2 timed as stage 1: an upper bound)" if borrowed else ""
    lines.append(f"{finished}/{len(rows)} runs finished; time left: {eta}{note}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
