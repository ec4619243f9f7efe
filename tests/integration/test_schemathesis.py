"""Schemathesis against a real server: every default check, over every documented operation.

The committed schemathesis.toml names the served model (so ``{name}`` routes run past 404) and
declares each operation's expected statuses from the same table as the OpenAPI (service/contract.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, launch, wait_ready
from tests.service.fixtures import make_calibrated_package, sample_images

CONFIG = ROOT / "schemathesis.toml"


@pytest.mark.slow
def test_schemathesis_default_checks_find_no_failure(tmp_path: Path) -> None:
    name = tomllib.loads(CONFIG.read_text())["parameters"]["path.name"]
    package = make_calibrated_package(tmp_path, sample_images(24), name)
    server = wait_ready(launch(package, tmp_path, "schemathesis", "--backend", "torch"))
    try:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
             f"{server.url}/openapi.json", "--seed", "1", "--no-color"],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        server.stop()
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    print(summary)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    assert selected and selected[1] == selected[2], "every operation is selected"
    assert f"Tested: {selected[1]}" in summary
    assert " passed" in summary and "failure" not in summary.lower()
