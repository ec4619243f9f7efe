"""Prometheus metrics on a registry owned by the app (never module globals: tests build many apps).

The names and labels are a contract with the Grafana dashboard and the alert rules. Every series
that names a model also names its ``version`` (the repository's), so two versions served side by
side, or one replacing the other, never share a series.

With several server processes (``workers`` > 1) every process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, chosen when it is imported)
and ``/metrics`` aggregates them, so any process answers a scrape with the totals of all. Each
gauge's ``multiprocess_mode`` says how; the ``live`` modes drop an exited process's values. In a
single process the modes are ignored.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
FRACTION_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class ServiceMetrics:
    """Every metric of one app instance, registered on its own :class:`CollectorRegistry`.

    Args:
        multiprocess_dir: prometheus_client's ``PROMETHEUS_MULTIPROC_DIR`` when this is one of
            several server processes: :meth:`render` then aggregates every process's values.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.request_duration = Histogram(
            "anytime_request_duration_seconds",
            "HTTP request latency by route template, model and status code.",
            ["route", "model", "version", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "anytime_requests_in_flight",
            "HTTP requests being handled.",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",  # requests of all processes
        )
        self.queue_wait = Histogram(
            "anytime_queue_wait_seconds",
            "Time an image waits in the queue before its first stage runs.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "anytime_queue_depth",
            "Images waiting for their first stage.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",  # images of all processes' queues
        )
        self.batch_size = Histogram(
            "anytime_batch_size",
            "Images in each stage run (the batch shrinks at each exit).",
            ["model", "version", "stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.exit_images = Counter(
            "anytime_exit_images",
            "Images answered at each exit.",
            ["model", "version", "exit"],
            registry=r,
        )
        self.compute_fraction = Histogram(
            "anytime_image_compute_fraction",
            "FLOPs an image used over the full network's.",
            ["model", "version"],
            buckets=FRACTION_BUCKETS,
            registry=r,
        )
        self.flops = Counter(
            "anytime_flops", "FLOPs spent on answered images.", ["model", "version"], registry=r
        )
        self.flops_saved = Counter(
            "anytime_flops_saved",
            "Full-network FLOPs minus FLOPs spent, over answered images.",
            ["model", "version"],
            registry=r,
        )
        self.rejections = Counter(
            "anytime_rejections",
            "Requests or images refused or dropped, by reason.",
            ["model", "version", "reason"],
            registry=r,
        )
        # Anytime deadlines, the SLO controller and the accuracy guard.
        self.deadline_exits = Counter(
            "anytime_deadline_exits",
            "Images answered at an earlier exit because the next stage would miss their deadline.",
            ["model", "version"],
            registry=r,
        )
        self.effective_budget = Gauge(
            "anytime_effective_budget",
            "Budget given to requests that pin none (the SLO controller lowers it under load).",
            ["model", "version"],
            registry=r,
            # each process has its own SLO controller; the dashboard's max across instances
            multiprocess_mode="livemax",
        )
        self.exit_threshold = Gauge(
            "anytime_exit_threshold",
            "Confidence threshold of each exit at the effective budget (guard tightening included).",
            ["model", "version", "exit"],
            registry=r,
            # the guard only raises thresholds: the tightest process's
            multiprocess_mode="livemax",
        )
        self.exit_agreement = Gauge(
            "anytime_exit_agreement_ratio",
            "Share of audited early answers that agree with the final exit (sliding window).",
            ["model", "version", "exit"],
            registry=r,
            # the worst process's agreement, as the dashboard's min across instances
            multiprocess_mode="livemin",
        )
        self.model_info = Gauge(
            "anytime_model_info",
            "Loaded model packages (value 1).",
            ["model", "version", "backend", "device", "num_exits"],
            registry=r,
            # 1 per loaded package, not one per process
            multiprocess_mode="livemax",
        )
        self.load_failures = Counter(
            "anytime_model_load_failures",
            "Model versions that failed to load (validation, backend, parity, warm-up).",
            ["model", "version"],
            registry=r,
        )
        # Measured at start-up on the serving device (service/budget_times.py).
        self.budget_latency = Gauge(
            "anytime_budget_expected_latency_seconds",
            "Expected compute of one image sent alone at each budget-table row.",
            ["model", "version", "budget"],
            registry=r,
            # each process measures its own; the slowest, as the dashboard's max
            multiprocess_mode="livemax",
        )
        self.budget_throughput = Gauge(
            "anytime_budget_expected_images_per_second",
            "Expected images/s of one engine worker in full batches at each budget-table row.",
            ["model", "version", "budget"],
            registry=r,
            # per engine worker, not a sum: as the dashboard's max
            multiprocess_mode="livemax",
        )

    def render(self) -> bytes:
        """The text exposition format of this registry (of every process's, with several)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        return generate_latest(registry)
