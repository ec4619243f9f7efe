"""A missing tool skips locally and fails under CI, as root or not."""

from __future__ import annotations

import pytest

from tests.tools import missing_tool, require_binary


@pytest.mark.parametrize(
    ("env", "fails"),
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "1"}, True),
        ({"REQUIRE_DEPLOY_TOOLS": "1"}, True),
        ({"CI": "false"}, False),
    ],
)
def test_a_missing_tool_fails_only_under_ci(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fails: bool
) -> None:
    for name in ("CI", "REQUIRE_DEPLOY_TOOLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    outcome = pytest.fail.Exception if fails else pytest.skip.Exception
    with pytest.raises(outcome, match="no-such-tool not installed: apt-get install no-such-package"):
        require_binary("no-such-tool", "no-such-package")
    with pytest.raises(outcome, match="gone"):
        missing_tool("gone")


def test_a_present_tool_is_found() -> None:
    assert require_binary("sh", "dash").endswith("/sh")
