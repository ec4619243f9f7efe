"""From a package path to a checked, warmed-up :class:`ServedVersion`, and what names one.

A version takes traffic only after this passed: the package validates (manifest, checksums), the
engine builds and warms up (``load_model``), and an ONNX backend's stages agree with the package's
own PyTorch model on a fixed input (a graph that loads but computes something else is refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import torch

from models.package import MANIFEST, PackageError, read_manifest
from service.budget_times import BudgetTime, budget_times
from service.engine import LoadedModel, load_model
from service.engine.choices import BackendChoices
from service.metrics import ServiceMetrics
from service.repository.registry import ServedVersion
from service.settings import ServiceSettings

# fp32 ONNX stages against eager PyTorch: float reassociation only (measured ~1e-6 on the tiny
# test network); a wrong or stale graph is off by whole units.
PARITY_ATOL = 1e-3


class ParityError(RuntimeError):
    """A backend's stage outputs disagree with the package's PyTorch model."""


def package_identity(path: str) -> tuple[str, int]:
    """``(name, version)`` a package of the ``models`` list is served as: its manifest's name, and
    its manifest's version when that is a positive integer, else 1.

    Raises:
        PackageError: no readable manifest.
    """
    src = Path(path)
    if src.is_file():
        try:
            with tarfile.open(src) as tar:
                member = tar.extractfile(MANIFEST)
                raw = json.loads(member.read()) if member is not None else None
        except (tarfile.TarError, KeyError, OSError, json.JSONDecodeError) as e:
            raise PackageError(f"{src}: no readable {MANIFEST} ({e})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise PackageError(f"{src}: {MANIFEST} names no model")
        name, version = raw["name"], str(raw.get("version", "1"))
    elif src.is_dir():
        m = read_manifest(src)
        name, version = m.name, m.version
    else:
        raise PackageError(f"model package not found: {src}")
    return name, int(version) if version.isdecimal() and int(version) > 0 else 1


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def fingerprint(path: str) -> str:
    """A change stamp of a package: a digest of the path, size and modification time of every
    entry in it (a tar: of the file). Any file written, replaced, added or removed changes it, as
    Triton's poll reloads a model whose files changed (its weights rewritten in place, say).
    Names starting with ``.`` are left out, as the scan leaves them: a file being written under
    such a name and then renamed into place changes the stamp once, when it is whole."""
    src = Path(path)
    entries = [src]
    if src.is_dir():
        entries += sorted(p for p in src.rglob("*") if not _hidden(p.relative_to(src)))
    digest = hashlib.sha256()
    for p in entries:
        st = os.stat(p)
        digest.update(f"{p.relative_to(src)}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def check_parity(loaded: LoadedModel) -> None:
    """Every fp32 ONNX stage's logits against the package's PyTorch model on one fixed batch.

    Raises:
        ParityError: an exit's logits differ by more than :data:`PARITY_ATOL`.
    """
    backend = loaded.engine.backend
    if backend.name != "onnxruntime" or loaded.precision != "fp32":
        return  # torch runs the model itself; int8 differs by design (its own budget table)
    h, w = loaded.package.manifest.preprocessing.input_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = loaded.package.model(x)
        state: tuple[torch.Tensor, ...] = (x,)
        for k, ref in enumerate(want):
            state, got = backend.run_stage(k, state)
            err = float((got.float().cpu() - ref).abs().max())
            if not err <= PARITY_ATOL:  # NaN fails too
                raise ParityError(
                    f"ONNX stage {k} disagrees with the package's weights: max |logit error| "
                    f"{err:.3g} > {PARITY_ATOL}"
                )


def time_budgets(loaded: LoadedModel, metrics: ServiceMetrics) -> dict[float, BudgetTime]:
    """Each budget row's expected time from the warm-up's stage timings, also as gauges."""
    times = budget_times(
        loaded.package.manifest.budgets, loaded.engine.costs, loaded.engine.config.max_batch_size
    )
    version = loaded.package.manifest.version
    for budget, t in times.items():
        metrics.budget_latency.labels(loaded.name, version, str(budget)).set(t.ms_per_image / 1000.0)
        metrics.budget_throughput.labels(loaded.name, version, str(budget)).set(t.images_per_s)
    return times


def load_version(
    name: str,
    version: int,
    path: str,
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    choices: BackendChoices | None = None,
    tracing: bool = False,
) -> ServedVersion:
    """Load, check and warm up ``path`` as ``name`` version ``version`` (not yet serving);
    ``tracing``: its engine records stage runs for traced requests.

    Raises:
        PackageError, BackendError, ParityError: the message says what is wrong.
    """
    loaded = load_model(path, settings, metrics, choices, name=name, version=str(version))
    try:
        check_parity(loaded)
    except Exception:
        loaded.engine.stop()
        raise
    loaded.engine.tracing = tracing
    return ServedVersion(name, version, loaded, path, time_budgets(loaded, metrics))
