"""Fixtures of the service unit tests: one calibrated package per test session, apps built on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.package import ModelPackage
from service.app import create_app
from service.settings import ServiceSettings
from tests.service.fixtures import load, sample_images, session_package


@pytest.fixture(scope="session")
def calibrated_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_package(tmp_path_factory)


@pytest.fixture(scope="session")
def reference_package(calibrated_package: Path) -> ModelPackage:
    return load(calibrated_package)


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    """The calibration images (the budget table splits exactly these)."""
    return sample_images(24)


def make_settings(package: Path, **overrides: object) -> ServiceSettings:
    # intra_op_threads=0: leave torch's global thread count alone for the rest of the test session.
    base: dict[str, object] = dict(
        models=[str(package)], backend="torch", device="cpu", intra_op_threads=0
    )
    return ServiceSettings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(calibrated_package: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(calibrated_package))) as c:
        yield c
