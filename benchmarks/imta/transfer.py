"""``pack`` / ``unpack``: carry the factorial's runs to another machine as one file.

The runs take days of background time; a machine can be lost with everything on it. ``pack``
writes one gzipped tar of what resuming and scoring the runs need: per run ``last.pt``,
``stage1.pt`` (a stage-2 run's frozen network), ``log.jsonl``, ``train.log`` and
``finished.json``, plus the launcher's ``plan.json`` and ``launcher.log``. An unfinished run's
``last.pt`` goes as it is (model, optimiser, schedule and RNG states: the exact resume point); a
finished run's without its optimiser, schedule, scaler and RNG states, which only a resume reads
and a finished run never resumes (half the size). Left out: what ``evaluate`` writes again
(``logits.pt``, ``evaluation.json``) and the live launcher's markers (pid, lock, ``running``).
Checkpoints are written atomically (a rename), so a pack taken while runs train holds each run's
last finished epoch; the epoch under way is trained again after ``unpack`` and ``start``.

``--part-mib N`` cuts the file into ``FILE.part00``, ``FILE.part01``, ... of at most N MiB (for
stores that limit a file's size); ``unpack FILE`` joins them when ``FILE`` itself is absent.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import torch

from benchmarks.imta.launcher import FINISHED, LOG, PLAN, LauncherError, read_pid

RUN_FILES = ("last.pt", "stage1.pt", "log.jsonl", "train.log", FINISHED)
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng")  # what only a resume reads


def packed_paths(runs_dir: Path) -> list[Path]:
    """The files ``pack`` takes, relative to ``runs_dir``, in a fixed order."""
    if not (runs_dir / PLAN).is_file():
        raise FileNotFoundError(f"{runs_dir / PLAN} not found: not a runs directory")
    found = [Path(name) for name in (PLAN, LOG) if (runs_dir / name).is_file()]
    for run in sorted(p.parent for p in runs_dir.glob("*/seed*/log.jsonl")):
        found += [f.relative_to(runs_dir) for name in RUN_FILES if (f := run / name).is_file()]
    return found


def pack(runs_dir: Path, out: Path, part_mib: int | None = None) -> list[Path]:
    """Write ``out`` (a gzipped tar), or its parts with ``part_mib``; returns the paths packed.
    Everything is written under temporary names first and renamed into place once complete."""
    paths = packed_paths(runs_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        for rel in paths:
            source = runs_dir / rel
            if rel.name == "last.pt" and (source.parent / FINISHED).is_file():
                _add_bytes(tar, rel, _weights_only(source))
            else:
                tar.add(source, arcname=rel.as_posix())
    finals = [(partial, out)]
    if part_mib is not None:
        data, size = partial.read_bytes(), part_mib * 2**20
        finals = []
        for i in range(0, len(data), size):
            final = out.with_name(f"{out.name}.part{i // size:02d}")
            tmp = final.with_name(final.name + ".partial")
            tmp.write_bytes(data[i : i + size])
            finals.append((tmp, final))
        partial.unlink()
    for tmp, final in finals:
        tmp.replace(final)
    written = {final for _, final in finals}
    for stale in [out, *_parts(out)]:  # the previous pack's other form or surplus parts
        if stale not in written:
            stale.unlink(missing_ok=True)
    return paths


def _parts(archive: Path) -> list[Path]:
    """``archive``'s ``.partNN`` files, in order."""
    pattern = re.compile(re.escape(archive.name) + r"\.part\d+")
    return sorted(p for p in archive.parent.glob(archive.name + ".part*") if pattern.fullmatch(p.name))


def _weights_only(checkpoint: Path) -> bytes:
    blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
    buffer = io.BytesIO()
    torch.save({k: v for k, v in blob.items() if k not in RESUME_ONLY}, buffer)
    return buffer.getvalue()


def _add_bytes(tar: tarfile.TarFile, rel: Path, data: bytes) -> None:
    info = tarfile.TarInfo(rel.as_posix())
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def parts_of(archive: Path) -> list[Path]:
    """``archive`` itself, else its ``.partNN`` files in order (none: FileNotFoundError)."""
    if archive.is_file():
        return [archive]
    parts = _parts(archive)
    if not parts:
        raise FileNotFoundError(f"{archive} not found, nor its parts {archive.name}.part00, ...")
    return parts


def unpack(archive: Path, runs_dir: Path, force: bool = False) -> list[str]:
    """Extract a ``pack`` file (or its parts) into ``runs_dir``; ``plan.json`` is rewritten for
    the new place (``start`` rewrites it anyway). Refused while a launcher runs on ``runs_dir``,
    and into a directory that already holds runs unless ``force`` (they would be overwritten)."""
    if read_pid(runs_dir) is not None:
        raise LauncherError(f"a launcher is running on {runs_dir}: stop it first")
    if not force and any(runs_dir.glob("*/seed*/log.jsonl")):
        raise LauncherError(f"{runs_dir} already holds runs: pass --force to overwrite them")
    data = b"".join(part.read_bytes() for part in parts_of(archive))  # tens of MiB
    runs_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
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
