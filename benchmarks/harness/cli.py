"""The command line every suite starts from: its name, its description, the package it measures."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.harness.provenance import REPO


def suite_parser(
    module: str, doc: str | None, *, package: bool = True, data: bool = True
) -> argparse.ArgumentParser:
    """``python -m <module>``'s parser, described by the first paragraph of its docstring ``doc``,
    with ``--package`` (default ``packages/default``) and ``--data-dir`` (where its training data
    is, for the held test images) unless told otherwise."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n\n")[0])
    if package:
        p.add_argument("--package", type=Path, default=REPO / "packages" / "default")
    if data:
        p.add_argument(
            "--data-dir", help="CIFAR-10 JPEG archive or tree (default: the package config's)"
        )
    return p
