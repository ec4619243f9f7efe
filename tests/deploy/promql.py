"""The metric contract between service/metrics.py and docker/ (dashboard, alerts), and PromQL helpers.

``CONTRACT`` lists every metric the service exports, its type and its labels.
The dashboard and the alert rules may name only these (histograms with ``_bucket``/``_count``/
``_sum``) and Prometheus' own ``up``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "anytime.json"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
NGINX_CONFIG = DOCKER / "nginx" / "nginx.conf"

CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "anytime_request_duration_seconds": ("histogram", ("route", "model", "version", "status")),
    "anytime_requests_in_flight": ("gauge", ("route",)),
    "anytime_queue_wait_seconds": ("histogram", ("model", "version")),
    "anytime_queue_depth": ("gauge", ("model", "version")),
    "anytime_batch_size": ("histogram", ("model", "version", "stage")),
    "anytime_exit_images_total": ("counter", ("model", "version", "exit")),
    "anytime_image_compute_fraction": ("histogram", ("model", "version")),
    "anytime_flops_total": ("counter", ("model", "version")),
    "anytime_flops_saved_total": ("counter", ("model", "version")),
    "anytime_rejections_total": ("counter", ("model", "version", "reason")),
    "anytime_model_info": ("gauge", ("model", "version", "backend", "device", "num_exits")),
    # Deadline exits, the SLO controller and the accuracy guard.
    "anytime_deadline_exits_total": ("counter", ("model", "version")),
    "anytime_effective_budget": ("gauge", ("model", "version")),
    "anytime_exit_threshold": ("gauge", ("model", "version", "exit")),
    "anytime_exit_agreement_ratio": ("gauge", ("model", "version", "exit")),
    # Each budget row in time, measured at start-up.
    "anytime_budget_expected_latency_seconds": ("gauge", ("model", "version", "budget")),
    "anytime_budget_expected_images_per_second": ("gauge", ("model", "version", "budget")),
    "anytime_model_load_failures_total": ("counter", ("model", "version")),
}
# Series Prometheus adds to every scrape target, and the labels it attaches.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}


def allowed_series() -> set[str]:
    """Every series name a query may use: gauges/counters as is, histograms' three series."""
    names = set(PROMETHEUS_SERIES)
    for name, (kind, _) in CONTRACT.items():
        names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
    return names


def allowed_labels() -> set[str]:
    return {label for _, labels in CONTRACT.values() for label in labels} | TARGET_LABELS | {"le"}


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_NUMBER = re.compile(r"(?<![A-Za-z_:0-9])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def series_names(expr: str) -> set[str]:
    """Metric (series) names a PromQL expression selects: identifiers not called as functions."""
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub(" ", s)
    s = _RANGE.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    s = _NUMBER.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        if s[m.end() :].lstrip().startswith("(") or m.group() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def label_names(expr: str) -> set[str]:
    """Label names used in matchers ``{l="v"}`` and in ``by (...)`` / ``on (...)`` clauses."""
    s = _STRING.sub('""', expr)
    labels = set()
    for body in _MATCHERS.findall(s):
        labels |= {m.group(1) for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body)}
    for _, body in _GROUPING.findall(s):
        labels |= {part.strip() for part in body.split(",") if part.strip()}
    return labels


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana variables still in."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def resolve_grafana_variables(expr: str, rate_interval: str = "1m") -> str:
    """Substitute what Grafana substitutes before it sends a query: ``$model`` = All = ``.*``."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", ".*")
