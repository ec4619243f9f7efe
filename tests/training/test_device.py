"""The autocast and memory-layout choices of ``amp: auto`` / ``channels_last: auto``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.helpers import tiny_config
from training import device as device_mod
from training.config import validate_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_follows_the_cpus_native_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: native_bf16)
    cfg = validate_config(tiny_config(tmp_path))
    assert device_mod.pick_amp(cfg, CPU) == ("bf16" if native_bf16 else "none")
    assert device_mod.use_channels_last(cfg, CPU) is native_bf16


def test_explicit_settings_win_over_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    cfg = validate_config(tiny_config(tmp_path, amp="none", channels_last="on"))
    assert device_mod.pick_amp(cfg, CPU) == "none"
    assert device_mod.use_channels_last(cfg, CPU) is True
    # channels_last auto follows the autocast the run uses: fp32 here, so the default layout.
    fp32 = validate_config(tiny_config(tmp_path, amp="none"))
    assert device_mod.use_channels_last(fp32, CPU) is False


def test_bf16_asked_for_on_a_cpu_without_it_trains_in_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    cfg = validate_config(tiny_config(tmp_path, amp="bf16"))
    with pytest.warns(UserWarning, match="no native bf16"):
        assert device_mod.pick_amp(cfg, CPU) == "none"
