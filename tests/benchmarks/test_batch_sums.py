"""The stage-run histogram read the same way from an engine's registry and from ``/metrics``."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness.engine import batch_sums
from service.metrics import ServiceMetrics


def test_batch_sums_per_stage_over_versions_from_either_source() -> None:
    metrics = ServiceMetrics()
    runs = {("m", "1", 0): [8, 8], ("m", "2", 0): [4], ("m", "1", 1): [3, 1], ("other", "1", 0): [32]}
    for (model, version, stage), sizes in runs.items():
        for size in sizes:
            metrics.batch_size.labels(model, version, str(stage)).observe(size)
    # stage -> (images run, stage runs), both versions of model "m" summed
    assert batch_sums(metrics.registry.collect(), "m") == {0: (20.0, 3.0), 1: (4.0, 2.0)}
    page = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    assert batch_sums(page) == {0: (52.0, 4.0), 1: (4.0, 2.0)}  # every model, as a /metrics page
