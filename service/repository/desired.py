"""What should be served: the ``models`` list and a fresh scan of the repository, over what was."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.repository.scan import ModelConfig, scan_repository
from service.repository.shared import DesiredState
from service.repository.states import Desired

Mode = Literal["none", "poll", "explicit"]


@dataclass(frozen=True)
class ControlConfig:
    mode: Mode
    repository: Path | None
    models: Desired  # the ``models`` list, each package one version of its name
    poll_secs: float
    timeout_s: float


def scanned_state(
    config: ControlConfig,
    base: DesiredState,
    stamp: Callable[[str], str],
    only: str | None = None,
    override: ModelConfig | None = None,
) -> DesiredState:
    """``base`` updated from the list and a fresh scan: every model, or ``only`` that one (a load
    request, with ``override`` in place of its config); ``stamp``: a package path's fingerprint.

    What cannot be read now keeps what ``base`` had, stamps included (no reload): a model whose
    directory is unreadable, or every model when the repository itself is (the serving versions
    stay)."""
    scan = scan_repository(config.repository) if config.repository else None
    found: Desired = dict(config.models)
    kept: set[str] = set()
    errors: dict[str, str] = {}
    if scan is not None:
        errors = scan.errors()
        overrides = {only: override} if only and override else None
        for name, versions in scan.desired(overrides).items():
            if name in config.models:
                errors[name] = f"{name!r} is both in the models list and the repository"
            else:
                found[name] = versions
        unreadable = {n for n, m in scan.models.items() if not m.versions and m.errors}
        if scan.error:
            unreadable = set(base.models) - set(config.models)
        kept = {n for n in unreadable if n in base.models}
        found.update({n: base.models[n] for n in kept})
    models = found
    if only is not None:  # a load request changes that model only
        models = {n: v for n, v in base.models.items() if n != only}
        if only in found:
            models[only] = found[only]
        errors = {
            **{n: e for n, e in base.errors.items() if n != only},
            **{n: e for n, e in errors.items() if n in (only, "")},
        }
    stamps = {
        p: base.stamps.get(p, "") if n in kept else stamp(p)
        for n, vs in models.items()
        for p in vs.values()
    }
    return DesiredState(base.generation, models, stamps, errors, [only] if only else [])
