"""The model package: the on-disk contract between training (writes) and the service (reads).

Layout of a package directory (or the same files in one ``.tar``)::

    manifest.json           the Manifest below (pydantic): everything needed to rebuild and serve
    weights.safetensors     the model's state dict
    onnx/stage_k.onnx       one graph per stage (see models/onnx_export.py)

``load_package`` validates everything before it returns, so a damaged package never loads
half-way: missing file, checksum mismatch, unknown schema version, unregistered architecture or
a budget table inconsistent with the exits (or with itself: exit fractions that are not shares)
each raise one :class:`PackageError` naming it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load_file, save_file

from models.flops import cumulative_flops
from models.multi_exit import MultiExitNet
from models.onnx_export import StageGraph, export_stages
from models.quantize import QuantizeConfig
from models.registry import UnknownModelError, create_model
from models.validation import describe_validation_error

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


class PackageError(Exception):
    """A model package is missing, damaged or inconsistent; the message says what and where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchitectureSpec(_Strict):
    """Registry name + constructor arguments: the package rebuilds its model from these alone."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Preprocessing(_Strict):
    """How to turn a decoded image into the network's input tensor ``[3, H, W]``."""

    input_size: tuple[int, int] = Field(description="(H, W) fed to the network")
    channel_order: Literal["RGB"] = "RGB"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = Field(None, description="resize the shorter side to this before the crop")
    center_crop: bool = Field(True, description="center-crop to input_size after the resize")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"


class ExitSpec(_Strict):
    index: int
    flops: int = Field(description="cumulative FLOPs of stages 0..index for one image")
    compute_fraction: float = Field(description="flops / flops of the last exit")


class BudgetEntry(_Strict):
    """One row of the budget table written by calibration."""

    budget: float = Field(gt=0, le=1, description="target mean fraction of the full network's FLOPs")
    thresholds: list[float] = Field(description="per-exit confidence thresholds; >1 disables")
    expected_compute_fraction: float = Field(ge=0, le=1)
    exit_fractions: list[float] | None = None
    accuracy: float | None = Field(None, description="accuracy on the held test split")


class Int8Stages(_Strict):
    """int8 stage graphs beside the fp32 ones (``models/quantize.py``), with their own budget
    table: int8 moves the exits' confidences, so its thresholds are fitted on int8 logits."""

    onnx: list[StageGraph] = Field(description="one int8 graph per stage, same tensor names")
    budgets: list[BudgetEntry] = Field(description="the budget table fitted on int8 logits")
    exit_accuracy: list[float] = Field(description="per-exit accuracy on the held test split")
    fp32_agreement: list[float] = Field(
        description="per exit: share of test images whose int8 class is the fp32 graphs' class"
    )
    quantization: QuantizeConfig
    onnxruntime: str = Field(description="version of the ONNX Runtime that quantized them")


class Provenance(BaseModel):
    """Where the weights came from. Open-ended on purpose: training adds what it knows."""

    model_config = ConfigDict(extra="allow", frozen=True)

    training_config: dict[str, Any] | None = None
    dataset: str | None = None
    split_seed: int | None = None
    split: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    code_version: str | None = None
    created_at: str = Field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = "1"
    architecture: ArchitectureSpec
    classes: list[str] = Field(min_length=2)
    preprocessing: Preprocessing
    exits: list[ExitSpec] = Field(min_length=1)
    budgets: list[BudgetEntry] = Field(default_factory=list)
    default_budget: float | None = None
    onnx: list[StageGraph] = Field(default_factory=list)
    int8: Int8Stages | None = Field(None, description="int8 graphs and their budget table")
    provenance: Provenance = Field(default_factory=Provenance)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256")

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        k = len(self.exits)
        if [e.index for e in self.exits] != list(range(k)):
            raise ValueError("exits must be indexed 0..K-1 in order")
        flops = [e.flops for e in self.exits]
        if any(b <= a for a, b in itertools.pairwise(flops)):
            raise ValueError(f"exit FLOPs must increase along the exits, got {flops}")
        for e in self.exits:
            if not math.isclose(e.compute_fraction, e.flops / flops[-1], rel_tol=1e-6):
                raise ValueError(f"exit {e.index}: compute_fraction != flops / final flops")
        seen: set[float] = set()
        for row in self.budgets:
            if len(row.thresholds) != k:
                raise ValueError(f"budget {row.budget}: {len(row.thresholds)} thresholds for {k} exits")
            if row.exit_fractions is not None:
                _check_exit_fractions(row.budget, row.exit_fractions, k)
            if row.budget in seen:
                raise ValueError(f"budget {row.budget} appears twice in the budget table")
            seen.add(row.budget)
        if self.default_budget is not None and self.default_budget not in seen:
            raise ValueError(
                f"default_budget {self.default_budget} is not in the budget table {sorted(seen)}"
            )
        if self.onnx and len(self.onnx) != k:
            raise ValueError(f"{len(self.onnx)} ONNX stage graphs for {k} exits")
        if self.int8 is not None:
            q = self.int8
            if not self.onnx or len(q.onnx) != k or len(q.exit_accuracy) != k:
                raise ValueError(f"int8: needs the fp32 graphs and {k} graphs and accuracies")
            if sorted(r.budget for r in q.budgets) != self.budget_values:
                raise ValueError("int8: its budget table must have the fp32 table's budgets")
            if any(len(r.thresholds) != k for r in q.budgets):
                raise ValueError(f"int8: every budget row needs {k} thresholds")
        return self

    def budget_entry(self, budget: float) -> BudgetEntry:
        """The table row ``budget`` runs with (:func:`governing_row`).

        Raises:
            KeyError: no row governs ``budget`` (all are above it, or it is 1.0 without a 1.0 row).
        """
        row = governing_row(self.budget_values, budget)
        if row is None:
            raise KeyError(f"no row governs budget {budget}; table has {self.budget_values}")
        return next(r for r in self.budgets if r.budget == row)

    @property
    def budget_values(self) -> list[float]:
        """The budget table's budgets, ascending."""
        return sorted(r.budget for r in self.budgets)


def _check_exit_fractions(budget: float, fractions: list[float], k: int) -> None:
    """A row's ``exit_fractions`` are shares of images, one per exit: ``k`` entries, none
    negative, summing to 1 (service/budget_times.py turns them into expected latency)."""
    if len(fractions) != k:
        raise ValueError(f"budget {budget}: exit_fractions must have {k} entries")
    total = math.fsum(fractions)
    if min(fractions) < 0 or not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(
            f"budget {budget}: exit_fractions are the shares of images leaving at each exit, so "
            f"none may be negative and they must sum to 1; got {fractions} (sum {total:g})"
        )


def governing_row(row_budgets: Iterable[float], budget: float) -> float | None:
    """The budget of the table row whose thresholds ``budget`` runs with, or None if none does.

    An exact match, else the largest row not above ``budget``: a budget between two rows never
    spends more than asked. None when every row is above ``budget``, and for budget 1.0 on a table
    without a 1.0 row: that budget runs every image to the last exit, with no row's thresholds.
    """
    rows = sorted(row_budgets)
    fitting = [b for b in rows if b <= budget + 1e-9]
    if not fitting or (budget >= 1.0 - 1e-9 and fitting[-1] < 1.0 - 1e-9):
        return None
    return fitting[-1]


@dataclass
class ModelPackage:
    """A loaded, validated package: its manifest, the rebuilt model (eval, CPU) and file paths."""

    root: Path
    manifest: Manifest
    model: MultiExitNet
    onnx_paths: list[Path] = field(default_factory=list)
    _tmpdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)


# -- writing -------------------------------------------------------------------------------------
def describe_exits(model: MultiExitNet, input_size: tuple[int, int]) -> list[ExitSpec]:
    """Exit table for a model: cumulative FLOPs and fraction of the full network per exit."""
    flops = cumulative_flops(model, input_size)
    return [ExitSpec(index=i, flops=f, compute_fraction=f / flops[-1]) for i, f in enumerate(flops)]


def new_manifest(
    model: MultiExitNet,
    *,
    name: str,
    classes: list[str],
    preprocessing: Preprocessing,
    version: str = "1",
    budgets: list[BudgetEntry] | None = None,
    default_budget: float | None = None,
    provenance: Provenance | None = None,
) -> Manifest:
    """A manifest for ``model`` with its exits measured; files and ONNX are filled on save."""
    if not model.arch_name:
        raise PackageError("model was not built by models.create_model: its architecture is unknown")
    return Manifest(
        name=name,
        version=version,
        architecture=ArchitectureSpec(name=model.arch_name, kwargs=model.arch_kwargs),
        classes=classes,
        preprocessing=preprocessing,
        exits=describe_exits(model, preprocessing.input_size),
        budgets=budgets or [],
        default_budget=default_budget,
        provenance=provenance or Provenance(),
    )


def save_package(
    model: MultiExitNet,
    manifest: Manifest,
    out_dir: str | Path,
    *,
    export_onnx: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a complete package directory atomically (a temp dir renamed into place).

    Returns:
        ``out_dir``. With a ``.tar`` suffix, a tar archive of the package is written instead.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise PackageError(f"{out} already exists (pass overwrite=True to replace it)")
    if len(manifest.classes) != model.num_classes:
        raise PackageError(f"{len(manifest.classes)} class names for a {model.num_classes}-class model")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        work = Path(tmp) / "package"
        work.mkdir()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(work / WEIGHTS))
        graphs = export_stages(model, manifest.preprocessing.input_size, work) if export_onnx else []
        files = {rel: sha256_file(work / rel) for rel in [WEIGHTS, *(g.file for g in graphs)]}
        final = manifest.model_copy(update={"onnx": graphs, "files": files})
        Manifest.model_validate(final.model_dump())  # re-check the completed manifest
        (work / MANIFEST).write_text(final.model_dump_json(indent=2) + "\n")
        if out.suffix == ".tar":
            tmp_tar = Path(tmp) / out.name
            pack_package(work, tmp_tar)
            _replace(tmp_tar, out)
        else:
            _replace(work, out)
    return out


def pack_package(package_dir: str | Path, tar_path: str | Path) -> Path:
    """Archive a package directory as one uncompressed ``.tar`` (files at the archive root)."""
    src, dst = Path(package_dir), Path(tar_path)
    with tarfile.open(dst, "w") as tar:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            tar.add(path, arcname=path.relative_to(src).as_posix())
    return dst


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed last."""
    if not dst.exists():
        os.replace(src, dst)
        return
    backup = dst.with_name(f".{dst.name}.old")
    _remove(backup)  # left by an overwrite that was killed before its clean-up
    os.replace(dst, backup)
    try:
        os.replace(src, dst)
    except OSError:
        os.replace(backup, dst)  # keep the old package rather than none
        raise
    _remove(backup)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- reading -------------------------------------------------------------------------------------
def read_manifest(root: Path) -> Manifest:
    """Parse and validate ``root/manifest.json`` (schema version first, then the full model)."""
    path = root / MANIFEST
    if not path.is_file():
        raise PackageError(f"{root}: missing {MANIFEST}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise PackageError(f"{path}: expected a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PackageError(
            f"{path}: unknown schema_version {version!r} (this code reads version {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        problems = describe_validation_error(e, "manifest")
        raise PackageError(f"{path}: invalid manifest: {problems}") from None


def load_package(path: str | Path, *, verify_checksums: bool = True) -> ModelPackage:
    """Load and validate a package directory or ``.tar``; the model comes back in eval mode.

    Raises:
        PackageError: one message naming the first problem found.
    """
    src = Path(path)
    if not src.exists():
        raise PackageError(f"model package not found: {src}")
    tmp: tempfile.TemporaryDirectory[str] | None = None
    root = src
    if src.is_file():
        tmp = tempfile.TemporaryDirectory(prefix="anytime-pkg-")
        root = Path(tmp.name)
        try:
            with tarfile.open(src) as tar:
                tar.extractall(root, filter="data")
        except (tarfile.TarError, OSError) as e:
            tmp.cleanup()
            raise PackageError(f"{src}: not a readable package archive ({e})") from None
    try:
        manifest = read_manifest(root)
        _check_files(root, manifest, verify_checksums)
        model = _rebuild_model(root, manifest)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return ModelPackage(
        root=root,
        manifest=manifest,
        model=model,
        onnx_paths=[root / g.file for g in manifest.onnx],
        _tmpdir=tmp,
    )


def _check_files(root: Path, manifest: Manifest, verify: bool) -> None:
    int8 = manifest.int8.onnx if manifest.int8 is not None else []
    required = [WEIGHTS, *(g.file for g in [*manifest.onnx, *int8])]
    for rel in required:
        if rel not in manifest.files:
            raise PackageError(f"{root}: manifest lists no checksum for {rel}")
    for rel, digest in manifest.files.items():
        p = root / rel
        if not p.is_file():
            raise PackageError(f"{root}: missing file {rel}")
        if verify and sha256_file(p) != digest:
            raise PackageError(f"{root}: checksum mismatch for {rel} (file damaged or altered)")


def _rebuild_model(root: Path, manifest: Manifest) -> MultiExitNet:
    arch = manifest.architecture
    try:
        model = create_model(arch.name, **arch.kwargs)
    except UnknownModelError as e:
        raise PackageError(f"{root}: architecture not registered: {e}") from None
    except (TypeError, ValueError) as e:
        raise PackageError(f"{root}: cannot build {arch.name!r} from {arch.kwargs}: {e}") from None
    if model.num_exits != manifest.num_exits:
        raise PackageError(
            f"{root}: manifest has {manifest.num_exits} exits, {arch.name} builds {model.num_exits}"
        )
    if model.num_classes != len(manifest.classes):
        raise PackageError(
            f"{root}: manifest has {len(manifest.classes)} classes, model has {model.num_classes}"
        )
    try:
        state = load_file(str(root / WEIGHTS))
        model.load_state_dict(state, strict=True)
    except Exception as e:  # safetensors and torch raise assorted types for bad weights
        raise PackageError(f"{root}: weights do not fit the architecture: {e}") from None
    model.eval()
    return model
