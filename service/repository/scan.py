"""Reading a model repository directory (Triton's layout) into the versions to serve; pure.

::

    DIR/<name>/config.yaml        optional: {"version_policy": {"latest": {"num_versions": 2}}}
    DIR/<name>/<version>/         a model package (manifest.json, weights, ONNX stages), or
    DIR/<name>/<version>.tar      a packed one; versions are positive integers

The version policy is Triton's ``version_policy``: ``latest`` (the ``num_versions`` highest,
default 1), ``all``, or ``specific`` (the listed ``versions``). What cannot be read is reported
per entry (a version directory that is not an integer, a config that does not parse), never
raised: one bad entry must not stop the others from being served.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.repository.states import Desired

CONFIG_FILE = "config.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatestVersions(_Strict):
    num_versions: int = Field(1, ge=1, description="serve the highest N versions")


class AllVersions(_Strict):
    pass


class SpecificVersions(_Strict):
    versions: list[int] = Field(min_length=1, description="serve exactly these versions")

    @model_validator(mode="after")
    def _positive(self) -> SpecificVersions:
        if any(v < 1 for v in self.versions):
            raise ValueError(f"versions are positive integers, got {self.versions}")
        return self


class VersionPolicy(_Strict):
    """Triton's ``version_policy``: exactly one of ``latest``, ``all``, ``specific``."""

    latest: LatestVersions | None = None
    all: AllVersions | None = None
    specific: SpecificVersions | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        given = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of latest, all, specific; got {given}")
        return self

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions of ``available`` this policy serves, ascending."""
        have = sorted(set(available))
        if self.all is not None:
            return have
        if self.specific is not None:
            return [v for v in have if v in set(self.specific.versions)]
        n = self.latest.num_versions if self.latest is not None else 1
        return have[-n:]


class ModelConfig(_Strict):
    """``DIR/<name>/config.yaml``, or the ``config`` parameter of a load request."""

    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)


class ConfigError(ValueError):
    """A model config that does not parse or validate (the message says where and why)."""


def parse_config(text: str, where: str) -> ModelConfig:
    """A model config from YAML or JSON text (JSON is YAML)."""
    try:
        raw: Any = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML or JSON ({e})") from None
    try:
        return ModelConfig.model_validate(raw if raw is not None else {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


@dataclass
class ModelDir:
    """One model directory: its versions (version -> package path), policy, and what was wrong."""

    versions: dict[int, str] = field(default_factory=dict)
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    errors: list[str] = field(default_factory=list)


@dataclass
class Scan:
    """A repository as read: its models, and an error when the directory itself is unreadable."""

    root: str
    models: dict[str, ModelDir] = field(default_factory=dict)
    error: str = ""

    def desired(self, overrides: dict[str, ModelConfig] | None = None) -> Desired:
        """Name -> version -> path of what the policies select (``overrides``: per-model config
        given with a load request, in place of the model's own)."""
        out: Desired = {}
        for name, model in self.models.items():
            policy = overrides[name].version_policy if overrides and name in overrides else model.policy
            chosen = policy.select(model.versions)
            if chosen:
                out[name] = {v: model.versions[v] for v in chosen}
        return out

    def errors(self) -> dict[str, str]:
        """Name -> what is wrong in its directory ("" key: the repository itself)."""
        out = {name: "; ".join(m.errors) for name, m in self.models.items() if m.errors}
        if self.error:
            out[""] = self.error
        return out


def _version(entry: Path) -> int | None:
    stem = entry.name.removesuffix(".tar") if entry.is_file() else entry.name
    return int(stem) if stem.isdecimal() and int(stem) > 0 else None


def scan_model(path: Path) -> ModelDir:
    """One model directory: its integer version entries and its config."""
    model = ModelDir()
    config = path / CONFIG_FILE
    if config.is_file():
        try:
            model.policy = parse_config(config.read_text(), str(config)).version_policy
        except (ConfigError, OSError, UnicodeDecodeError) as e:
            model.errors.append(str(e))
    try:
        entries = sorted(path.iterdir())
    except OSError as e:
        model.errors.append(f"{path}: cannot list versions ({e.strerror or e})")
        return model
    for entry in entries:
        if entry.name == CONFIG_FILE or entry.name.startswith("."):
            continue
        version = _version(entry)
        if version is None:
            model.errors.append(
                f"{entry}: not a version (versions are positive integers: {path}/1, {path}/2, ...)"
            )
            continue
        if version in model.versions:
            model.errors.append(f"{entry}: version {version} is given twice")
            continue
        model.versions[version] = str(entry)
    return model


def scan_repository(root: Path) -> Scan:
    """Every model directory under ``root`` (see the module docstring)."""
    scan = Scan(str(root))
    try:
        names = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        scan.error = f"model repository {root} is unreadable: {e.strerror or e}"
        return scan
    for path in names:
        scan.models[path.name] = scan_model(path)
    return scan


def config_from_json(text: str) -> ModelConfig:
    """The ``config`` parameter of a load request (Triton's JSON model config)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"load parameter 'config' is not JSON: {e}") from None
    return parse_config(text, "load parameter 'config'")
