"""Run every arm x seed of the factorial in order, in the background, resumably.

Each run is one ``python -m training train ... --resume`` child process (the command lines of
:mod:`benchmarks.imta.plan`), so the launcher holds no training state of its own: a run killed or
paused at any point continues from its last finished epoch (``RUN/last.pt``, written atomically).
A run counts as finished once its checkpoint says ``complete``; the launcher then writes
``RUN/finished.json`` and skips the run on every later launch.

Files in the runs directory: ``plan.json`` (the runs, their commands and epochs), ``launcher.log``
(progress), ``launcher.pid`` (the process group to pause / continue / stop), ``launcher.lock``
(one launcher per runs directory); per run ``train.log`` (the child's output).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from benchmarks.imta.plan import Run

FINISHED, PLAN, LOG = "finished.json", "plan.json", "launcher.log"
RUNNING = "running"  # marker in a run dir while the launcher trains it (for ``status``)
PID, LOCK = "launcher.pid", "launcher.lock"
REPO = Path(__file__).resolve().parents[2]

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


def subprocess_runner(repo: Path) -> Runner:
    """Run training as a child process in ``repo`` (same process group: pausing the launcher's
    group pauses the child too), its output appended to ``log_file``."""

    def run(argv: list[str], log_file: Path) -> int:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as out:
            child = subprocess.run(
                [sys.executable, "-m", "training", *argv], cwd=repo, stdout=out, stderr=out
            )
        return child.returncode

    return run


def expected_epochs(argv: list[str], repo: Path) -> int:
    """The epochs the run will train, from the same config the training CLI builds from ``argv``
    (the YAML, the flags and ``--set``): a typo in a config fails here, before any run starts."""
    from training.cli import build_parser, train_flags
    from training.config import load_config

    args = build_parser().parse_args(argv)
    config = args.config if args.config is None or args.config.is_absolute() else repo / args.config
    cfg = load_config(config, list(args.set), values=train_flags(args))
    stage2 = cfg.stage2_epochs if cfg.recipe == "two-stage" else 0
    return cfg.epochs + stage2


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED).is_file()


def checkpoint_complete(run_dir: Path) -> bool:
    from training.checkpoint import LAST, load_checkpoint

    return (run_dir / LAST).is_file() and bool(load_checkpoint(run_dir / LAST).get("complete"))


def log_line(runs_dir: Path, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    line = f"{stamp} UTC {text}"
    print(line, flush=True)
    with open(runs_dir / LOG, "a") as f:
        f.write(line + "\n")


def write_plan(s: LaunchSettings) -> None:
    """``plan.json``: what the launcher will run, for ``status`` and ``evaluate``."""
    epochs = s.epochs_of or (lambda argv: expected_epochs(argv, s.repo))
    runs = []
    for r in s.runs:
        argv = r.train_argv(s.runs_dir, s.overrides, s.threads)
        runs.append(
            {
                "key": r.key,
                "arm": r.arm.name,
                "seed": r.seed,
                "stage": r.arm.stage,
                "run_dir": str(r.run_dir(s.runs_dir)),
                "epochs": epochs(argv),
                "command": ["python", "-m", "training", *argv],
            }
        )
    seeds = sorted({r.seed for r in s.runs})
    body = {"overrides": list(s.overrides), "jobs": s.jobs, "seeds": seeds, "runs": runs}
    (s.runs_dir / PLAN).write_text(json.dumps(body, indent=2) + "\n")


def launch(s: LaunchSettings, runner: Runner) -> int:
    """Run every unfinished run in plan order, ``s.jobs`` at a time; returns how many runs this
    call finished. A stage-2 run waits for its stage-1 parent; the next runnable run goes first.

    Raises:
        LauncherError: another launcher holds the runs directory, or a run failed (the log names
            it and its ``train.log``; launching again resumes it). Runs already under way finish
            their current call first.
    """
    s.runs_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(s.runs_dir / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        found = read_pid(s.runs_dir)
        raise LauncherError(f"another launcher is running on {s.runs_dir} ({found})") from None
    previous = signal.signal(signal.SIGTERM, _stop_requested)
    try:
        (s.runs_dir / PID).write_text(f"{os.getpid()} {os.getpgid(0)}\n")
        write_plan(s)
        with ThreadPoolExecutor(max_workers=s.jobs) as pool:
            done, complete = _schedule(s, runner, pool)
        if complete:
            log_line(s.runs_dir, f"all {len(s.runs)} runs finished")
        return done
    finally:
        signal.signal(signal.SIGTERM, previous)
        (s.runs_dir / PID).unlink(missing_ok=True)
        lock.release()


def _schedule(s: LaunchSettings, runner: Runner, pool: ThreadPoolExecutor) -> tuple[int, bool]:
    """Keep ``s.jobs`` runs going; returns the runs finished and whether none is left."""
    pending = [r for r in s.runs if not is_finished(r.run_dir(s.runs_dir))]
    for r in s.runs:  # markers left by a launcher that was killed
        (r.run_dir(s.runs_dir) / RUNNING).unlink(missing_ok=True)
    running: dict[Future[int], tuple[Run, float]] = {}
    done, stopped_early, in_flight = 0, False, ""
    try:
        while running or (pending and not stopped_early):
            while len(running) < s.jobs and pending and not stopped_early:
                nxt = _next_runnable(s, pending, running)
                if nxt is None:
                    break
                pending.remove(nxt)
                in_flight = ", ".join([*(r.key for r, _ in running.values()), nxt.key])
                running[_start(s, nxt, runner, pool)] = (nxt, time.time())
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                r, start = running.pop(future)
                done += _settle(s, r, start, future.result(), running, pending)
                stopped_early = stopped_early or not is_finished(r.run_dir(s.runs_dir))
    except StopRequested:
        # The signal may land anywhere in this loop (a run's thread can finish first): the
        # runs last started or waited for are the ones it stopped.
        log_line(s.runs_dir, f"stopped (SIGTERM) during {in_flight}; start again to resume")
        raise
    return done, not (stopped_early or pending)


def _settle(
    s: LaunchSettings,
    r: Run,
    start: float,
    code: int,
    running: dict[Future[int], tuple[Run, float]],
    pending: list[Run],
) -> int:
    """Record one run's end: 1 when it finished; 0 when it stopped before its last epoch.

    Raises:
        LauncherError: it failed (after the other runs under way end their calls).
    """
    run_dir = r.run_dir(s.runs_dir)
    (run_dir / RUNNING).unlink(missing_ok=True)
    if code != 0:
        log_line(s.runs_dir, f"{r.key} failed (exit {code}); see {run_dir / 'train.log'}")
        pending.clear()
        _drain(running)
        raise LauncherError(f"{r.key} exited {code}; see {run_dir / 'train.log'}")
    if not checkpoint_complete(run_dir):
        log_line(s.runs_dir, f"{r.key} stopped before its last epoch; launch again to resume")
        return 0
    (run_dir / FINISHED).write_text(
        json.dumps({"finished_utc": time.time(), "this_call_seconds": time.time() - start}) + "\n"
    )
    log_line(s.runs_dir, f"{r.key} finished ({time.time() - start:.0f} s in this call)")
    return 1


def _start(s: LaunchSettings, r: Run, runner: Runner, pool: ThreadPoolExecutor) -> Future[int]:
    argv = r.train_argv(s.runs_dir, s.overrides, s.threads)
    run_dir = r.run_dir(s.runs_dir)
    verb = "resuming" if (run_dir / "last.pt").is_file() else "starting"
    command = f"python -m training {' '.join(argv)}"
    log_line(s.runs_dir, f"[{s.runs.index(r) + 1}/{len(s.runs)}] {verb} {r.key}: {command}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUNNING).touch()
    return pool.submit(runner, argv, run_dir / "train.log")


def _next_runnable(
    s: LaunchSettings, pending: list[Run], running: dict[Future[int], tuple[Run, float]]
) -> Run | None:
    """The first pending run whose parent (if any) is finished; None while parents still train.

    Raises:
        LauncherError: a run's parent is neither finished, nor running, nor planned.
    """
    in_flight = {r.key for r, _ in running.values()} | {r.key for r in pending}
    for r in pending:
        parent = r.parent()
        if parent is None or is_finished(parent.run_dir(s.runs_dir)):
            return r
        if parent.key not in in_flight:
            raise LauncherError(f"{r.key} needs {parent.key} finished first; it is not")
    return None


def _drain(running: dict[Future[int], tuple[Run, float]]) -> None:
    """Wait for the runs still under way (a failure elsewhere does not kill them mid-epoch)."""
    for future in running:
        future.exception()


class StopRequested(SystemExit):
    """SIGTERM reached the launcher (``stop``): leave through the ``finally`` clauses."""


def _stop_requested(signum: int, frame: object) -> None:
    raise StopRequested(128 + signum)


def read_pid(runs_dir: Path) -> tuple[int, int] | None:
    """``(pid, process group)`` of the running launcher, or None when none is running."""
    path = runs_dir / PID
    if not path.is_file():
        return None
    pid, pgid = (int(v) for v in path.read_text().split())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid, pgid


def process_state(pid: int) -> str:
    """``running``, ``paused`` (stopped by SIGSTOP) or ``gone``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return "gone"
    return "paused" if fields[0] in ("T", "t") else "running"


def signal_launcher(runs_dir: Path, action: str) -> str:
    """``pause`` (SIGSTOP), ``continue`` (SIGCONT) or ``stop`` (SIGTERM) the launcher's process
    group: the launcher and its training child together. A stopped run resumes from its last
    finished epoch when the launcher is started again."""
    found = read_pid(runs_dir)
    if found is None:
        raise LauncherError(f"no launcher is running on {runs_dir}")
    pid, pgid = found
    if pgid != os.getpgid(pid) or pgid == os.getpgid(0):
        raise LauncherError(f"launcher {pid} does not lead its own process group; signal it by hand")
    if action == "pause":
        os.killpg(pgid, signal.SIGSTOP)
    elif action == "continue":
        os.killpg(pgid, signal.SIGCONT)
    elif action == "stop":
        os.killpg(pgid, signal.SIGTERM)
        os.killpg(pgid, signal.SIGCONT)  # a paused group handles SIGTERM only once it runs
    else:
        raise ValueError(f"unknown action {action!r}: pause, continue or stop")
    return f"{action}: sent to process group {pgid} (launcher pid {pid})"


def start_background(argv: list[str], runs_dir: Path, repo: Path, wait_s: float = 60.0) -> int:
    """Start ``python -m benchmarks.imta run <argv>`` detached, in its own session and process
    group (what ``pause`` signals); returns its pid once it has written its plan. Output goes to
    ``launcher.out``.

    Raises:
        LauncherError: it exited before that (a bad config, another launcher running, ...).
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    out_file = runs_dir / "launcher.out"
    begun = time.time()
    with open(out_file, "a") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.imta", "run", *argv],
            cwd=repo,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    plan_file = runs_dir / PLAN
    while time.time() - begun < wait_s:
        if child.poll() is not None:
            tail = out_file.read_text().strip().splitlines()[-3:]
            raise LauncherError(f"the launcher exited ({child.returncode}): " + " / ".join(tail))
        if plan_file.is_file() and plan_file.stat().st_mtime >= begun:
            break
        time.sleep(0.2)
    return child.pid
