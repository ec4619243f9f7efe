"""The device-aware defaults and the CUDA-graph capture fallback: the CUDA paths a CPU can check."""

from __future__ import annotations

import logging

import pytest
import torch

from models.package import ModelPackage
from service.engine import backends, build_engine
from service.engine.backends import BackendError, TorchBackend, resolve_device
from service.engine.factory import (
    CPU_MAX_BATCH,
    CUDA_MAX_BATCH,
    default_buckets,
    default_max_batch,
    engine_config,
)
from service.engine.graphs import PaddedStages, bucket_sizes
from service.settings import ServiceSettings


def test_each_device_gets_its_batch_size_and_buckets() -> None:
    assert (default_max_batch("cpu"), default_max_batch("cuda")) == (CPU_MAX_BATCH, CUDA_MAX_BATCH)
    assert (CPU_MAX_BATCH, CUDA_MAX_BATCH) == (32, 256)
    assert default_buckets("cpu", 32) == ()  # no padding on a CPU: it would only add work
    assert default_buckets("cuda", 256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert default_buckets("cuda", 48) == bucket_sizes(48) == (1, 2, 4, 8, 16, 32, 48)


def test_settings_pin_the_batch_size_else_the_device_decides() -> None:
    unpinned = ServiceSettings()
    assert engine_config(unpinned, "cpu").max_batch_size == 32
    assert engine_config(unpinned, "cuda").max_batch_size == 256
    pinned = ServiceSettings(batching={"max_batch_size": 8})  # type: ignore[arg-type]
    assert engine_config(pinned, "cpu").max_batch_size == engine_config(pinned, "cuda").max_batch_size
    assert engine_config(pinned, "cuda").max_batch_size == 8
    simulated = ServiceSettings(simulated_device={"enabled": True})  # type: ignore[arg-type]
    assert engine_config(simulated, "cpu").max_batch_size == 256  # it stands in for a GPU


def test_auto_device_is_cuda_only_where_a_kernel_really_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "cuda_works", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(BackendError, match="device 'cuda' was requested but CUDA does not work"):
        resolve_device("cuda")
    monkeypatch.setattr(backends, "cuda_works", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"


def test_an_engine_built_for_a_device_takes_its_defaults(reference_package: ModelPackage) -> None:
    engine = build_engine(reference_package, "torch", warmup=False, start=False)
    assert engine.config.max_batch_size == 32
    assert isinstance(engine.backend, TorchBackend) and engine.backend.padded is None


def test_a_failed_cuda_graph_capture_falls_back_to_the_padded_eager_path(
    reference_package: ModelPackage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_capture(self: PaddedStages, num_stages: int) -> None:
        self._graphs[0, 1] = object()  # type: ignore[assignment]  # a capture that got part-way
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(PaddedStages, "_capture", broken_capture)
    model = reference_package.model
    with caplog.at_level(logging.ERROR, logger="service.engine"):
        padded = PaddedStages(model.forward_stage, model.num_exits, (3, 32, 32), (1, 2, 4), "cpu",
                              capture=True)  # fmt: skip
    assert not padded.captured and padded._graphs == {}  # nothing half-captured is replayed
    assert "CUDA graph capture failed; stages run eagerly at padded sizes" in caplog.text
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    state, eager_state = (x,), (x,)
    with torch.inference_mode():
        for k in range(model.num_exits):
            state, logits = padded.run(k, state)  # 3 images in the bucket of 4
            eager_state, eager_logits = model.forward_stage(k, eager_state)
            assert logits.shape == eager_logits.shape == (3, 10)
            torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)
