"""Dashboard and alert rules name only what the service exports; Prometheus' own tools accept them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from service.metrics import ServiceMetrics
from tests.deploy.promql import (
    ALERTS,
    CONTRACT,
    DOCKER,
    PROMETHEUS_CONFIG,
    ROOT,
    alert_rules,
    allowed_labels,
    allowed_series,
    dashboard,
    dashboard_queries,
    label_names,
    series_names,
)
from tests.tools import require_binary


def _exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    """What a fresh app's registry really registers: name as scraped -> (type, labels)."""
    out = {}
    for metric in vars(ServiceMetrics()).values():
        if not hasattr(metric, "_labelnames"):
            continue  # the registry itself
        kind = metric._type
        name = metric._name + ("_total" if kind == "counter" else "")
        out[name] = (kind, tuple(metric._labelnames))
    return out


def test_contract_matches_the_service_registry() -> None:
    assert _exported() == CONTRACT


@pytest.mark.parametrize("guide", ["deployment.md", "service.md"])
def test_the_guides_name_every_exported_metric(guide: str) -> None:
    text = (ROOT / "docs" / guide).read_text()
    assert [name for name in CONTRACT if f"`{name}`" not in text] == []


def test_series_extraction_flags_unknown_metrics() -> None:
    # The checks below are only as good as this parser: it must see through functions,
    # grouping clauses, matchers, ranges and numbers, and keep the metric names.
    expr = 'sum by (le) (rate(foo_seconds_bucket{a="x{y}", b=~"1e3"}[$__rate_interval])) / 1e-9 > bar'
    assert series_names(expr) == {"foo_seconds_bucket", "bar"}
    assert label_names(expr) == {"le", "a", "b"}
    assert not series_names(expr) <= allowed_series()


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_name_only_exported_metrics_and_labels(source: str) -> None:
    if source == "dashboard":
        queries = [q for _, q in dashboard_queries()]
    else:
        queries = [rule["expr"] for rule in alert_rules()]
    assert queries
    for q in queries:
        unknown = series_names(q) - allowed_series()
        assert not unknown, f"{source} query names metrics the service does not export: {unknown}: {q}"
        assert series_names(q), f"{source} query selects no metric: {q}"
        bad = label_names(q) - allowed_labels()
        assert not bad, f"{source} query uses labels the service does not export: {bad}: {q}"


# Panels the dashboard must have: a word of the title -> series its queries must read.
WANTED_PANELS = {
    "request rate": {"anytime_request_duration_seconds_count"},
    "latency": {"anytime_request_duration_seconds_bucket"},
    "error rate by status": {"anytime_request_duration_seconds_count"},
    "exit mix": {"anytime_exit_images_total"},
    "compute fraction": {"anytime_image_compute_fraction_sum"},
    "flops saved": {"anytime_flops_saved_total"},
    "batch size": {"anytime_batch_size_sum"},
    "queue depth": {"anytime_queue_depth"},
    "in flight": {"anytime_requests_in_flight"},
}


def test_dashboard_has_every_wanted_panel() -> None:
    by_title: dict[str, set[str]] = {}
    for title, q in dashboard_queries():
        by_title.setdefault(title.lower(), set()).update(series_names(q))
    for word, series in WANTED_PANELS.items():
        hits = [t for t in by_title if word in t and series <= by_title[t]]
        assert hits, f"no panel titled '*{word}*' reading {series}; panels: {sorted(by_title)}"
    latency = [q for t, q in dashboard_queries() if t.lower().startswith("latency")]
    assert {q.split("(")[1].split(",")[0] for q in latency} == {"0.5", "0.95", "0.99"}
    # Every metric of the contract shows somewhere on the dashboard.
    used = {
        re.sub(r"_(bucket|count|sum)$", "", n) for _, q in dashboard_queries() for n in series_names(q)
    }
    assert set(CONTRACT) <= used, set(CONTRACT) - used


def test_the_model_variable_filters_every_per_model_series() -> None:
    # The dashboard's one variable is the model: a panel that ignores it shows every model's
    # series while the operator thinks they are looking at one.
    per_model = {
        name + suffix
        for name, (kind, labels) in CONTRACT.items()
        if "model" in labels
        for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))
    }
    for title, q in dashboard_queries():
        for name in series_names(q) & per_model:
            for selector in re.findall(rf"{name}(\{{[^}}]*\}})?", q):
                assert 'model=~"$model"' in selector, f"{title}: {name} unfiltered in {q}"


def test_the_deployment_guide_lists_every_panel_and_its_queries() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) == 2 and cells[1].startswith("`"):
            rows[cells[0]] = [q.strip().strip("`") for q in cells[1].split("<br>")]
    panels: dict[str, list[str]] = {}
    for title, q in dashboard_queries():
        panels.setdefault(title, []).append(q)
    assert {t: rows.get(t) for t in panels} == panels


def test_dashboard_uses_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = dashboard()
    panel_uids = {p["datasource"]["uid"] for p in dash["panels"]}
    target_uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert panel_uids == target_uids == {uid}
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/anytime.yml").read_text())
    compose = yaml.safe_load((DOCKER.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./docker/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


def test_alerts_cover_the_four_conditions() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert "up" in series_names(rules["AnytimeServiceDown"]["expr"])
    assert "histogram_quantile(0.99" in rules["AnytimeHighP99Latency"]["expr"]
    assert '"5.."' in rules["AnytimeHighErrorRate"]["expr"]
    assert "anytime_rejections_total" in series_names(rules["AnytimeQueueSaturated"]["expr"])
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def _tool(name: str) -> str:
    return require_binary(name, "prometheus")


def test_promtool_accepts_config_and_rules() -> None:
    promtool = _tool("promtool")
    for args in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(ALERTS)]):
        r = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    # The check above would be worthless if promtool accepted anything.
    promtool = _tool("promtool")
    bad = tmp_path / "bad.yml"
    bad.write_text(ALERTS.read_text().replace("> 0.05", "> > 0.05"))
    r = subprocess.run(
        [promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0


def test_dashboard_layout_is_well_formed() -> None:
    # Grafana is not installable here (not in Debian); check what it would reject or garble.
    dash = dashboard()
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"model"}
    assert dash["uid"] and dash["schemaVersion"] >= 36
