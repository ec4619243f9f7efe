"""``pack`` / ``unpack``: carry the factorial's runs to another machine as one file.

The runs take days of background time; a machine can be lost with everything on it. ``pack``
writes one tar of what resuming and scoring the runs need: per run ``last.pt`` (model, optimiser,
schedule and RNG states: the exact resume point), ``stage1.pt`` (a stage-2 run's frozen network),
``log.jsonl``, ``train.log`` and ``finished.json``, plus the launcher's ``plan.json`` and
``launcher.log``. Left out: what ``evaluate`` writes again (``logits.pt``, ``evaluation.json``) and
the live launcher's markers (pid, lock, ``running``). Checkpoints are written atomically (a
rename), so a pack taken while runs train holds each run's last finished epoch; the epoch under
way is trained again after ``unpack`` and ``start``.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from benchmarks.imta.launcher import FINISHED, LOG, PLAN, LauncherError, read_pid

RUN_FILES = ("last.pt", "stage1.pt", "log.jsonl", "train.log", FINISHED)


def packed_paths(runs_dir: Path) -> list[Path]:
    """The files ``pack`` takes, relative to ``runs_dir``, in a fixed order."""
    if not (runs_dir / PLAN).is_file():
        raise FileNotFoundError(f"{runs_dir / PLAN} not found: not a runs directory")
    found = [Path(name) for name in (PLAN, LOG) if (runs_dir / name).is_file()]
    for run in sorted(p.parent for p in runs_dir.glob("*/seed*/log.jsonl")):
        found += [f.relative_to(runs_dir) for name in RUN_FILES if (f := run / name).is_file()]
    return found


def pack(runs_dir: Path, out: Path) -> list[Path]:
    """Write ``out`` (an uncompressed tar: checkpoints are float tensors that barely compress);
    returns the paths packed. The tar is written next to ``out`` and renamed, so an interrupted
    pack never leaves a truncated file under the final name."""
    paths = packed_paths(runs_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for rel in paths:
            tar.add(runs_dir / rel, arcname=rel.as_posix())
    partial.replace(out)
    return paths


def unpack(archive: Path, runs_dir: Path, force: bool = False) -> list[str]:
    """Extract a ``pack`` file into ``runs_dir``; ``plan.json`` is rewritten for the new place
    (``start`` rewrites it anyway). Refused while a launcher runs on ``runs_dir``, and into a
    directory that already holds runs unless ``force`` (its files would be overwritten)."""
    if read_pid(runs_dir) is not None:
        raise LauncherError(f"a launcher is running on {runs_dir}: stop it first")
    if not force and any(runs_dir.glob("*/seed*/log.jsonl")):
        raise LauncherError(f"{runs_dir} already holds runs: pass --force to overwrite them")
    runs_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(runs_dir, filter="data")  # "data": no absolute paths, links or devices
    _relocate_plan(runs_dir)
    return names


def _relocate_plan(runs_dir: Path) -> None:
    """Point ``plan.json``'s paths (run directories, stage 2's ``--init-from``) at ``runs_dir``."""
    path = runs_dir / PLAN
    if not path.is_file():
        return
    plan = json.loads(path.read_text())
    new_root = str(runs_dir.resolve())
    for run in plan["runs"]:
        old_root = str(Path(run["run_dir"]).parent.parent)  # run_dir is <root>/<arm>/seed<N>
        run["run_dir"] = f"{new_root}/{run['key']}"
        run["command"] = [
            new_root + part[len(old_root) :] if part.startswith(old_root + "/") else part
            for part in run["command"]
        ]
    path.write_text(json.dumps(plan, indent=2) + "\n")
