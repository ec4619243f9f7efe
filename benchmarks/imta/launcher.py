"""Run every arm x seed of the factorial in order, resumably.

Each run is one ``python -m training train ... --resume`` child process (the command lines of
:mod:`benchmarks.imta.plan`), so the launcher holds no training state: a run killed at any point
continues from its last finished epoch (``RUN/last.pt``, written atomically) when the launcher
runs again. Once its checkpoint says ``complete`` the launcher writes ``RUN/finished.json`` and
skips it from then on. Files in the runs directory: ``plan.json`` (runs, commands, epochs),
``launcher.log``, ``launcher.lock``; per run ``train.log`` (the child's output).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from benchmarks.harness.provenance import REPO
from benchmarks.imta.plan import Run

FINISHED, PLAN, LOG, LOCK = "finished.json", "plan.json", "launcher.log", "launcher.lock"

Runner = Callable[[list[str], Path], int]
"""``runner(training_argv, log_file) -> exit code``: runs ``python -m training <argv>``."""


class LauncherError(RuntimeError):
    """The launcher cannot go on (a run failed, another launcher is running, ...)."""


@dataclass(frozen=True)
class LaunchSettings:
    runs_dir: Path
    runs: tuple[Run, ...]
    overrides: tuple[str, ...] = ()  # extra `train` arguments for every run (smoke tests)
    repo: Path = REPO  # where `python -m training` runs: the relative config paths resolve here
    epochs_of: Callable[[list[str]], int] | None = None  # default: expected_epochs in ``repo``
    jobs: int = 1  # runs trained at the same time
    threads: int | None = None  # torch threads per run (None: the config's)

    def argv(self, r: Run) -> list[str]:
        return r.train_argv(self.runs_dir, self.overrides, self.threads)


def subprocess_runner(repo: Path) -> Runner:
    """Training as a child in ``repo``, its output appended to ``log_file``."""

    def run(argv: list[str], log_file: Path) -> int:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as out:
            return subprocess.run(
                [sys.executable, "-m", "training", *argv], cwd=repo, stdout=out, stderr=out
            ).returncode

    return run


def expected_epochs(argv: list[str], repo: Path) -> int:
    """The epochs the run will train, from the config the training CLI builds from ``argv``: a typo
    in a config fails here, before any run starts."""
    from training.cli import build_parser, train_flags
    from training.config import load_config

    args = build_parser().parse_args(argv)
    config = args.config if args.config is None or args.config.is_absolute() else repo / args.config
    cfg = load_config(config, list(args.set), values=train_flags(args))
    return cfg.epochs + (cfg.stage2_epochs if cfg.recipe == "two-stage" else 0)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED).is_file()


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of ``RUN/log.jsonl``, one per (stage, epoch): an epoch logged, then
    redone after a kill before its checkpoint was written, counts once (the later record)."""
    path = run_dir / "log.jsonl"
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            r = json.loads(line)
            records[(r.get("stage", ""), r["epoch"])] = r
    return list(records.values())


def load_plan(runs_dir: Path) -> dict[str, Any]:
    path = runs_dir / PLAN
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the runs first (run)")
    plan: dict[str, Any] = json.loads(path.read_text())
    return plan


def checkpoint_complete(run_dir: Path) -> bool:
    from training.checkpoint import LAST, load_checkpoint

    return (run_dir / LAST).is_file() and bool(load_checkpoint(run_dir / LAST).get("complete"))


def log_line(runs_dir: Path, text: str) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC {text}"
    print(line, flush=True)
    with open(runs_dir / LOG, "a") as f:
        f.write(line + "\n")


def write_plan(s: LaunchSettings) -> None:
    """``plan.json``: what the launcher will run, for ``evaluate``."""
    epochs = s.epochs_of or (lambda argv: expected_epochs(argv, s.repo))
    runs = [{"key": r.key, "arm": r.arm.name, "seed": r.seed, "stage": r.arm.stage,
             "run_dir": str(r.run_dir(s.runs_dir)), "epochs": epochs(s.argv(r)),
             "command": ["python", "-m", "training", *s.argv(r)]} for r in s.runs]  # fmt: skip
    body = {"overrides": list(s.overrides), "jobs": s.jobs, "seeds": sorted({r.seed for r in s.runs})}
    (s.runs_dir / PLAN).write_text(json.dumps(body | {"runs": runs}, indent=2) + "\n")


def launch(s: LaunchSettings, runner: Runner) -> int:
    """Run every unfinished run in plan order, ``s.jobs`` at a time (a stage-2 run waits for its
    stage-1 parent; the next runnable run goes first); returns how many this call finished.

    Raises:
        LauncherError: another launcher holds the runs directory, or a run failed (the log names
            its ``train.log``; launching again resumes it) once the runs under way have ended.
    """
    s.runs_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(s.runs_dir / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LauncherError(f"another launcher is running on {s.runs_dir}") from None
    try:
        write_plan(s)
        with ThreadPoolExecutor(max_workers=s.jobs) as pool:
            return _schedule(s, runner, pool)
    finally:
        lock.release()


def _schedule(s: LaunchSettings, runner: Runner, pool: ThreadPoolExecutor) -> int:
    """Keep ``s.jobs`` runs going; stop starting new ones once a run stops before its end."""
    pending = [r for r in s.runs if not is_finished(r.run_dir(s.runs_dir))]
    running: dict[Future[int], tuple[Run, float]] = {}
    done, stopped = 0, False
    while running or (pending and not stopped):
        while len(running) < s.jobs and not stopped and (nxt := _next_runnable(s, pending, running)):
            pending.remove(nxt)
            running[_start(s, nxt, runner, pool)] = (nxt, time.time())
        if not running:
            break
        for future in wait(running, return_when=FIRST_COMPLETED)[0]:
            r, start = running.pop(future)
            done += _settle(s, r, start, future.result(), running, pending)
            stopped = stopped or not is_finished(r.run_dir(s.runs_dir))
    if not (stopped or pending):
        log_line(s.runs_dir, f"all {len(s.runs)} runs finished")
    return done


def _settle(
    s: LaunchSettings, r: Run, start: float, code: int, running: dict[Future[int], tuple[Run, float]],
    pending: list[Run],
) -> int:  # fmt: skip
    """One run's end: 1 when it finished, 0 when it stopped before its last epoch; a failure
    raises :class:`LauncherError` once the other runs under way have ended their calls."""
    run_dir, took = r.run_dir(s.runs_dir), time.time() - start
    if code != 0:
        log_line(s.runs_dir, f"{r.key} failed (exit {code}); see {run_dir / 'train.log'}")
        pending.clear()
        for future in running:  # a failure elsewhere does not kill them mid-epoch
            future.exception()
        raise LauncherError(f"{r.key} exited {code}; see {run_dir / 'train.log'}")
    if not checkpoint_complete(run_dir):
        log_line(s.runs_dir, f"{r.key} stopped before its last epoch; launch again to resume")
        return 0
    (run_dir / FINISHED).write_text(
        json.dumps({"finished_utc": time.time(), "this_call_seconds": took}) + "\n"
    )
    log_line(s.runs_dir, f"{r.key} finished ({took:.0f} s in this call)")
    return 1


def _start(s: LaunchSettings, r: Run, runner: Runner, pool: ThreadPoolExecutor) -> Future[int]:
    run_dir = r.run_dir(s.runs_dir)
    verb = "resuming" if (run_dir / "last.pt").is_file() else "starting"
    command = f"python -m training {' '.join(s.argv(r))}"
    log_line(s.runs_dir, f"[{s.runs.index(r) + 1}/{len(s.runs)}] {verb} {r.key}: {command}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return pool.submit(runner, s.argv(r), run_dir / "train.log")


def _next_runnable(
    s: LaunchSettings, pending: list[Run], running: dict[Future[int], tuple[Run, float]]
) -> Run | None:
    """The first pending run whose parent (if any) is finished; None while parents still train.

    Raises:
        LauncherError: a run's parent is neither finished, nor running, nor planned.
    """
    in_flight = {r.key for r, _ in running.values()} | {r.key for r in pending}
    for r in pending:
        if (parent := r.parent()) is None or is_finished(parent.run_dir(s.runs_dir)):
            return r
        if parent.key not in in_flight:
            raise LauncherError(f"{r.key} needs {parent.key} finished first; it is not")
    return None
