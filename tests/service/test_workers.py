"""The worker factory rebuilds the parent's settings from its command line and the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service import workers
from service.engine import backends, load_model
from service.engine.backends import StageBackend
from service.engine.choices import BackendChoices
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings
from tests.service.conftest import make_settings


def test_worker_app_has_the_parents_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("request_timeout_s: 7\nguard:\n  fraction: 0.1\n")
    monkeypatch.setenv("ANYTIME_BATCHING__MAX_BATCH_SIZE", "8")
    argv = ["--workers", "2", "--config-file", str(config), "--models", '["pkg-a"]']
    argv += ["--log-level", "debug"]
    parent = ServiceSettings(_cli_parse_args=argv)
    monkeypatch.setenv(workers.ARGV_ENV, json.dumps(argv))
    monkeypatch.delenv(workers.METRICS_DIR_ENV, raising=False)
    logging_calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(workers, "configure_logging", lambda *a: logging_calls.append(a))

    app = workers.create_worker_app()

    settings = app.state.anytime.settings
    assert settings == parent
    # every source reached the worker: command line, environment, settings file
    assert (settings.workers, settings.models, settings.batching.max_batch_size) == (2, ["pkg-a"], 8)
    assert (settings.request_timeout_s, settings.guard.fraction) == (7, 0.1)
    assert logging_calls == [("debug", False)]
    assert app.state.anytime.metrics.multiprocess_dir is None


def test_worker_metrics_aggregate_in_the_parents_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(workers.ARGV_ENV, json.dumps(["--workers", "2"]))
    monkeypatch.setenv(workers.METRICS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(workers, "configure_logging", lambda *a: None)
    assert workers.create_worker_app().state.anytime.metrics.multiprocess_dir == tmp_path


def test_workers_serve_the_backend_the_first_one_measured(
    calibrated_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers whose measurements would disagree: the second builds the first one's choice."""
    measured: list[str] = []

    def disagreeing(backend: StageBackend, *args: object, **kwargs: object) -> float:
        winner = ["torch", "onnxruntime"][len(measured) // 2 % 2]  # a pass times both backends
        measured.append(backend.name)
        return 0.001 if backend.name == winner else 0.002

    monkeypatch.setattr(backends, "time_full_pass", disagreeing)
    settings = make_settings(calibrated_package, backend="auto", warmup=False)
    alone = [load_model(calibrated_package, settings, ServiceMetrics()) for _ in range(2)]
    assert [m.engine.backend.name for m in alone] == ["torch", "onnxruntime"]  # the noise

    choices = BackendChoices(tmp_path)
    measured.clear()
    shared = [load_model(calibrated_package, settings, ServiceMetrics(), choices) for _ in range(2)]
    assert [m.engine.backend.name for m in shared] == ["torch", "torch"]
    assert len(measured) == 2  # only the first worker measured
    assert choices.get(calibrated_package) == "torch fp32"  # backend and precision, shared
    pinned = make_settings(calibrated_package, backend="onnxruntime", warmup=False)
    assert load_model(calibrated_package, pinned, ServiceMetrics(), choices).engine.backend.name == (
        "onnxruntime"  # a named backend is what it says, whatever auto chose
    )
    for m in alone + shared:
        m.engine.stop()


def test_the_cli_module_is_light_at_import() -> None:
    """Each spawned worker imports it again before it can answer uvicorn's 5 s health check."""
    import subprocess
    import sys

    code = "import sys, service.__main__; print(sorted({'torch', 'fastapi'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_defaults_use_the_machine() -> None:
    """``make serve`` with no options: one worker per core, the topology measured for the device."""
    s = ServiceSettings()
    assert (s.workers, s.engine_topology) == ("auto", "auto")


def test_the_cli_hands_n_workers_to_uvicorns_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    import uvicorn
    from uvicorn.supervisors.multiprocess import SIGNALS

    import service.__main__ as cli

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(workers.tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.delenv(workers.ARGV_ENV, raising=False)
    monkeypatch.delenv(workers.METRICS_DIR_ENV, raising=False)
    monkeypatch.delenv(workers.CHOICES_DIR_ENV, raising=False)
    seen: list[tuple[uvicorn.Config, str, str]] = []

    def run(self: workers._Supervisor) -> None:
        metrics_dir = os.environ[workers.METRICS_DIR_ENV]
        assert Path(metrics_dir).is_dir() and Path(metrics_dir).parent == tmp_path
        choices_dir = os.environ[workers.CHOICES_DIR_ENV]
        assert Path(choices_dir).is_dir() and Path(choices_dir).parent == tmp_path
        seen.append((self.config, os.environ[workers.ARGV_ENV], metrics_dir))

    monkeypatch.setattr(workers._Supervisor, "run", run)
    argv = ["--port", "0", "--grpc-port", "0", "--workers", "3"]
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}  # the supervisor takes them over
    try:
        assert cli.main(argv) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    ((config, passed, _),) = seen
    # The workers get the gRPC port the parent holds, not 0 (each would pick its own).
    *given, flag, port = json.loads(passed)
    assert given == argv and flag == "--grpc-port" and int(port) > 0
    assert (config.app, config.factory, config.workers) == (workers.WORKER_APP, True, 3)
    assert (config.loop, config.http) == ("uvloop", "httptools")
    # the parent leaves nothing behind: no metrics or choices directory, no variables
    assert list(tmp_path.iterdir()) == []
    for name in (workers.ARGV_ENV, workers.METRICS_DIR_ENV, workers.CHOICES_DIR_ENV):
        assert name not in os.environ


def test_core_groups_give_each_worker_its_own_cores() -> None:
    assert workers.core_groups([0, 1], 2) == [[0], [1]]
    assert workers.core_groups([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3, 4]]
    assert workers.core_groups([4, 6, 8, 10], 4) == [[4], [6], [8], [10]]
    # More workers than cores: they share cores round-robin.
    assert workers.core_groups([0, 1], 3) == [[0], [1], [0]]


def test_pin_process_binds_every_thread_of_a_running_process() -> None:
    import os
    import subprocess
    import sys
    import time

    core = min(os.sched_getaffinity(0))
    script = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); input()"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        tasks = Path(f"/proc/{child.pid}/task")
        deadline = time.monotonic() + 30
        while len(list(tasks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the child's second thread is up
        assert len(list(tasks.iterdir())) == 2
        workers.pin_process(child.pid, [core])
        for task in tasks.iterdir():
            assert os.sched_getaffinity(int(task.name)) == {core}, task
    finally:
        child.kill()
        child.wait()
