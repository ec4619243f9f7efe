"""A process's registry and control, built from the settings; the start-up rules.

The ``models`` list must load: a package of it that fails stops start-up with one message (as
before there was a repository). A repository's versions that fail are reported in the index and
the log, and the server starts with the rest (as Triton with ``--exit-on-error=false``): one bad
package must not keep every other model of the repository from serving.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
from pathlib import Path

from models.package import PackageError
from service.engine.choices import BackendChoices
from service.metrics import ServiceMetrics
from service.repository.control import ControlConfig, Ordering, RepositoryControl
from service.repository.loading import fingerprint, load_version, package_identity
from service.repository.registry import Loader, ModelRegistry
from service.repository.shared import ControlDirectory
from service.repository.states import Desired
from service.settings import ServiceSettings


class ModelLoadError(RuntimeError):
    """A configured package could not be served (the message names it and why)."""


def models_list(settings: ServiceSettings) -> Desired:
    """The ``models`` list as a repository: each package is one version of its own name."""
    desired: Desired = {}
    for path in settings.models:
        try:
            name, version = package_identity(path)
        except PackageError as e:
            raise ModelLoadError(f"cannot serve model package {path}: {e}") from e
        if name in desired:
            raise ModelLoadError(f"two packages are named {name!r}; names must be unique")
        desired[name] = {version: path}
    return desired


def build_registry(
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    choices: BackendChoices | None,
    tracing: bool = False,
    loader: Loader | None = None,
) -> ModelRegistry:
    """A registry whose versions load as ``settings`` say (or as ``loader`` does), failures
    counted on ``metrics``; ``tracing``: their engines record stage runs for traced requests."""

    def failed(name: str, version: int, reason: str) -> None:
        metrics.load_failures.labels(name, str(version)).inc()

    return ModelRegistry(
        loader
        or partial(load_version, settings=settings, metrics=metrics, choices=choices, tracing=tracing),
        fingerprint=fingerprint,
        drain_timeout_s=settings.request_timeout_s + 5,
        on_failure=failed,
    )


def start_control(
    settings: ServiceSettings,
    registry: ModelRegistry,
    shared: Path | None,
    ordering: Ordering | None = None,
) -> RepositoryControl:
    """Load what is desired at start and keep following it (``shared``: the control directory of
    several worker processes; None: a private temporary one, removed at :func:`stop_control`;
    ``ordering``: the shared engine topology's, control.py)."""
    listed = models_list(settings)
    config = ControlConfig(
        mode=settings.model_control_mode,
        repository=settings.model_repository,
        models=listed,
        poll_secs=settings.repository_poll_secs,
        timeout_s=settings.model_load_timeout_s,
    )
    path = shared or Path(tempfile.mkdtemp(prefix="anytime-control-"))
    control = RepositoryControl(
        registry, config, ControlDirectory(path), private=shared is None, ordering=ordering
    )
    report = control.start()
    failed = {key: reason for key, reason in report.failed.items() if key[0] in listed}
    if failed:
        stop_control(control)
        (name, version), reason = next(iter(failed.items()))
        raise ModelLoadError(f"cannot serve model package {listed[name][version]}: {reason}")
    return control


def stop_control(control: RepositoryControl) -> None:
    """Stop following, then drain and stop every version."""
    control.stop()
    control.registry.close()
    if control.private:
        shutil.rmtree(control.directory.path, ignore_errors=True)
