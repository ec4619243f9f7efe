"""``pack`` / ``unpack``: carry training runs to another machine (or store) as one file.

Long recipes (a teacher, then a student) train for many hours in the background; a machine can be
lost with everything on it. ``pack`` writes one gzipped tar of what resuming the runs under a
directory needs: per run (any folder holding a ``log.jsonl``) its ``last.pt``, ``stage1.pt`` (a
stage-2 run's frozen network), ``log.jsonl`` and ``train.log``. An unfinished run's ``last.pt``
goes as it is (the exact resume point); a finished run's without the states only a resume reads
(:data:`training.checkpoint.RESUME_ONLY`: about half the size). Checkpoints are written
atomically, so a pack taken while runs train holds each run's last finished epoch; the epoch under
way is trained again after ``unpack``.

``--part-mib N`` cuts the file into ``FILE.part00``, ``FILE.part01``, ... of at most N MiB (for
stores that limit a file's size); ``unpack FILE`` joins them when ``FILE`` itself is absent.
"""

from __future__ import annotations

import argparse
import io
import re
import tarfile
from pathlib import Path

import torch

from training.checkpoint import LAST, RESUME_ONLY, STAGE1, CheckpointError

RUN_FILES = (LAST, STAGE1, "log.jsonl", "train.log")


def packed_paths(runs_dir: Path) -> list[Path]:
    """The files ``pack`` takes, relative to ``runs_dir``, in a fixed order."""
    runs = sorted({p.parent for p in runs_dir.rglob("log.jsonl")})
    if not runs:
        raise CheckpointError(f"{runs_dir}: no run (no folder with a log.jsonl) to pack")
    return [f.relative_to(runs_dir) for run in runs for name in RUN_FILES if (f := run / name).is_file()]


def pack(runs_dir: Path, out: Path, part_mib: int | None = None) -> list[Path]:
    """Write ``out`` (a gzipped tar), or its parts with ``part_mib``; returns the paths packed.
    Everything is written under temporary names first and renamed into place once complete."""
    paths = packed_paths(runs_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        for rel in paths:
            source = runs_dir / rel
            blob = (
                torch.load(source, map_location="cpu", weights_only=False) if rel.name == LAST else None
            )
            if blob is not None and blob.get("complete"):
                buffer = io.BytesIO()
                torch.save({k: v for k, v in blob.items() if k not in RESUME_ONLY}, buffer)
                info = tarfile.TarInfo(rel.as_posix())
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
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
    for stale in [out, *_parts(out)]:  # the previous pack's other form, or its surplus parts
        if stale not in written:
            stale.unlink(missing_ok=True)
    return paths


def _parts(archive: Path) -> list[Path]:
    pattern = re.compile(re.escape(archive.name) + r"\.part\d+")
    return sorted(p for p in archive.parent.glob(archive.name + ".part*") if pattern.fullmatch(p.name))


def unpack(archive: Path, runs_dir: Path, force: bool = False) -> list[str]:
    """Extract a ``pack`` file (or its parts, joined) into ``runs_dir``; refuses to overwrite
    existing files unless ``force``. Returns the names extracted."""
    parts = [archive] if archive.is_file() else _parts(archive)
    if not parts:
        raise CheckpointError(f"{archive} not found, nor its parts {archive.name}.part00, ...")
    data = b"".join(p.read_bytes() for p in parts)
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = tar.getnames()
            clashes = [n for n in names if (runs_dir / n).exists()]
            if clashes and not force:
                raise CheckpointError(
                    f"{runs_dir} already holds {clashes[0]} (and {len(clashes) - 1} more): "
                    "pass --force to overwrite"
                )
            runs_dir.mkdir(parents=True, exist_ok=True)
            tar.extractall(runs_dir, filter="data")  # "data": no absolute paths, links or devices
    except tarfile.TarError as e:
        raise CheckpointError(
            f"{archive}: not a readable pack ({e}); are all its parts there?"
        ) from None
    return names


def add_transfer_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pk = sub.add_parser(
        "pack",
        help="pack the runs under a directory into one file, to resume them elsewhere",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    pk.add_argument("--runs-dir", type=Path, required=True, help="the runs' common parent folder")
    pk.add_argument("--out", type=Path, required=True, help="the file to write (a .tar.gz)")
    pk.add_argument("--part-mib", type=int, help="cut into FILE.partNN of at most this many MiB")
    pk.set_defaults(handler=_run_pack)
    up = sub.add_parser("unpack", help="extract a pack (or its parts) into a runs directory")
    up.add_argument("archive", type=Path, help="the pack file; its .partNN files if it is absent")
    up.add_argument("--runs-dir", type=Path, required=True, help="where the runs go")
    up.add_argument("--force", action="store_true", help="overwrite files already there")
    up.set_defaults(handler=_run_unpack)


def _run_pack(args: argparse.Namespace) -> int:
    paths = pack(args.runs_dir, args.out, args.part_mib)
    print(
        f"packed {len(paths)} files of {args.runs_dir} into {args.out}"
        + (" (parts)" if args.part_mib else "")
    )
    return 0


def _run_unpack(args: argparse.Namespace) -> int:
    names = unpack(args.archive, args.runs_dir, args.force)
    print(f"unpacked {len(names)} files into {args.runs_dir}; resume each run with --resume")
    return 0
