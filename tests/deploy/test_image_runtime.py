"""What the images run, checked without a Docker engine.

Fast: every ``ANYTIME_*`` variable set by the Dockerfiles, compose and the k8s manifests names a
real service setting with a valid value (pydantic-settings ignores unknown names silently, so a
typo would otherwise go unnoticed). Slow: the project installed as the images install it (a
non-editable wheel, outside the source tree) serves the images' layout with the images'
settings, and the Dockerfiles' own HEALTHCHECK command reports it ready, and not when it is gone.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from service.settings import ServiceSettings
from tests.conftest import make_package
from tests.deploy.promql import DOCKER, ROOT
from tests.deploy.servers import LOOPBACK, run_service
from tests.deploy.test_images_compose import DOCKERFILES, _instructions

IMAGE_HOME = "/opt/anytime"


def _runtime_env(dockerfile: Path) -> dict[str, str]:
    """``ANYTIME_*`` variables of the Dockerfile's last (runtime) stage."""
    ins = _instructions(dockerfile)
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    env: dict[str, str] = {}
    for word, args in ins[last:]:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=('[^']*'|\"[^\"]*\"|\S+)", args):
                env[key] = value.strip("'\"")
    return {k: v for k, v in env.items() if k.startswith("ANYTIME_")}


def _healthcheck(dockerfile: Path) -> list[str]:
    args = next(a for w, a in _instructions(dockerfile) if w == "HEALTHCHECK")
    cmd: list[str] = json.loads(args.split(" CMD ", 1)[1])
    return cmd


def _compose_env() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env: dict[str, str] = {}
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("ANYTIME_"):
                env[key] = re.sub(r"\$\{\w+:-(.*)\}", r"\1", str(value))  # compose's ${VAR:-default}
    return env


def _k8s_env(name: str) -> dict[str, str]:
    """``ANYTIME_*`` entries of every container ``env`` list in a manifest."""
    env: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("name", "")).startswith("ANYTIME_") and "value" in node:
                env[node["name"]] = str(node["value"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(yaml.safe_load((DOCKER / "k8s" / name).read_text()))
    return env


def _known(env_name: str) -> bool:
    """Whether ``ANYTIME_A__B`` names the setting ``a.b`` of ServiceSettings."""
    parts = env_name.removeprefix("ANYTIME_").lower().split("__")
    fields: dict[str, Any] = ServiceSettings.model_fields
    for i, part in enumerate(parts):
        if part not in fields:
            return False
        annotation = fields[part].annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            fields = annotation.model_fields
    return True


SOURCES: dict[str, Callable[[], dict[str, str]]] = {
    **{f.name: functools.partial(_runtime_env, f) for f in DOCKERFILES},
    "docker-compose.yml": _compose_env,
    **{f"k8s/{n}": functools.partial(_k8s_env, n) for n in ("deployment.yaml", "inferenceservice.yaml")},
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_settings_in_deployment_files_are_real(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = SOURCES[source]()
    assert env, f"{source}: no ANYTIME_ settings found"
    unknown = [k for k in env if not _known(k)]
    assert not unknown, f"{source} sets variables that are no service setting: {unknown}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ServiceSettings()  # validates every value (JSON list, literals, bools, ints)
    assert settings.models and all(m.endswith("packages/default") for m in settings.models)


def test_unknown_setting_is_flagged() -> None:
    assert _known("ANYTIME_BATCHING__MAX_BATCH_SIZE") and _known("ANYTIME_JSON_LOGS")
    assert not _known("ANYTIME_JSON_LOG") and not _known("ANYTIME_BATCHING__MAX_BATCH")


def _install_like_the_image(dockerfile: Path, work: Path) -> Path:
    """The project as the image's builder stage installs it: the files its ``COPY`` lines take
    from the context, then ``pip install .`` (here: a wheel, unpacked). Built from that copy,
    so a source file the Dockerfile forgets to copy fails here, and the checkout stays clean."""
    src = work / "src"
    src.mkdir(parents=True)
    for word, args in _instructions(dockerfile):
        parts = args.split()
        if word == "COPY" and not any(p.startswith("--") for p in parts) and parts[-1].startswith("./"):
            for name in parts[:-1]:
                copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
                copy(ROOT / name, src / Path(name).name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(src)]
    if importlib.util.find_spec("setuptools"):
        cmd.insert(4, "--no-build-isolation")  # offline when setuptools is already here
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=work)
    assert r.returncode == 0, r.stderr
    (wheel,) = work.glob("anytime-*.whl")
    site = work / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    assert {"models", "training", "service"} <= {p.name for p in site.iterdir()}
    return site


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_installed_project_serves_with_the_image_settings(tmp_path: Path, dockerfile: Path) -> None:
    site = _install_like_the_image(dockerfile, tmp_path / "wheel")
    home = tmp_path / "opt-anytime"  # stands for /opt/anytime: the image's WORKDIR
    shutil.copytree(make_package(tmp_path, "msdnet", isc=True), home / "packages" / "default")
    env = {k: v.replace(IMAGE_HOME, str(home)) for k, v in _runtime_env(dockerfile).items()}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the checkout
    with run_service(home, tmp_path, "image", env=env, cwd=home) as svc:
        probe = subprocess.run(
            [sys.executable, "-c", "import service; print(service.__file__)"],
            env={"PYTHONPATH": str(site)}, cwd=home, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert probe.stdout.startswith(str(site)), probe.stdout + probe.stderr
        port = svc.url.rsplit(":", 1)[1]
        check = _healthcheck(dockerfile)
        assert check[0] == "python"
        cmd = [sys.executable, *check[1:]]
        ready = subprocess.run(
            cmd, env={"ANYTIME_PORT": port}, capture_output=True, text=True, timeout=30
        )
        assert ready.returncode == 0, ready.stderr
        assert json.loads(svc.log.read_text().splitlines()[-1])  # ANYTIME_JSON_LOGS: JSON lines
    gone = subprocess.run(cmd, env={"ANYTIME_PORT": port}, capture_output=True, text=True, timeout=30)
    assert gone.returncode != 0
    assert LOOPBACK in svc.url
