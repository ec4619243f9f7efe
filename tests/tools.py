"""External tools the tests need (promtool, prometheus, nginx, wrk, docker, ...): the one way a test
says one is missing.

Locally a missing tool skips its tests with the command that installs it. Under CI (``CI=true``,
as CI services set it, or ``REQUIRE_DEPLOY_TOOLS=1``, as ``.ci/run`` and ``docker/local.sh`` do)
it fails them instead, as root or not, so that CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def tools_required() -> bool:
    """True under CI: a missing tool is then a failure, not a skip."""
    ci = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
    return ci or os.environ.get("REQUIRE_DEPLOY_TOOLS") == "1"


def missing_tool(reason: str) -> NoReturn:
    """Skip for want of a tool (``reason`` names it and its fix), or fail under CI."""
    if tools_required():
        pytest.fail(f"{reason} (required under CI: CI=true or REQUIRE_DEPLOY_TOOLS=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_binary(name: str, package: str) -> str:
    """Path of the executable ``name``, or :func:`missing_tool` with its Debian ``package``."""
    path = shutil.which(name)
    if path is None:
        missing_tool(f"{name} not installed: apt-get install {package} (.ci/run does)")
    return path
