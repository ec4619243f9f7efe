"""Where a run computes: process placement under torchrun, device, memory layout and autocast."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from training.config import TrainConfig


@dataclass(frozen=True)
class DistInfo:
    """Process placement under torchrun (read from its environment at the CLI edge)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    # Measured (python -m training.speed): NHWC weights pay where the step runs in bf16. On an
    # H200, batch 256 / 1024 bf16 steps ran 1.7x / 2.2x faster; on a 2-core Xeon with AMX the
    # teacher's bf16 step ran at 522 images/s in NHWC (batch 128) against 270 in the default
    # layout (batch 256). In fp32 on an AVX2 EPYC it ran at 58% of the default layout's speed,
    # so "auto" follows the autocast the run uses.
    if cfg.channels_last != "auto":
        return cfg.channels_last == "on"
    return device.type == "cuda" or _effective_amp(cfg, device) == "bf16"


def _effective_amp(cfg: TrainConfig, device: torch.device) -> str:
    """The autocast a run uses (:func:`pick_amp` without its warning)."""
    if cfg.amp == "auto":
        return _auto_amp(device)
    if cfg.amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return "none"
    return cfg.amp


def _auto_amp(device: torch.device) -> str:
    # bf16 on CUDA and on a CPU that computes it natively (AVX-512 BF16 / AMX): there the
    # teacher's step ran 3.6x faster than fp32 (2-core Xeon, python -m training.speed). Elsewhere
    # oneDNN refuses bf16 convolutions and PyTorch runs its reference loops: 13x slower than fp32
    # on a 2-core AVX2 EPYC (docs/training.md), so such a CPU trains in fp32.
    if device.type == "cuda" or cpu_has_native_bf16():
        return "bf16"
    return "none"


def pick_amp(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.amp == "auto":
        return _auto_amp(device)
    if cfg.amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "amp bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 convolutions "
            "run many times slower than fp32; training in fp32 instead",
            stacklevel=2,
        )
        return "none"
    return cfg.amp


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 kernels on this CPU (AVX-512 BF16, AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
