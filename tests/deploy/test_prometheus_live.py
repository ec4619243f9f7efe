"""Slow: the real service scraped by a real Prometheus (Debian's package) on loopback.

The project's own prometheus.yml and alerts.yml are used, with only the scrape target (and the
intervals, to keep the test short) rewritten. Traffic with known exits goes in; Prometheus' HTTP
API must then show the exact counts, and every dashboard and alert query must evaluate.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import yaml

from models.package import load_package
from tests.conftest import make_package
from tests.deploy.promql import (
    ALERTS,
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard_queries,
    resolve_grafana_variables,
)
from tests.deploy.servers import png_bytes, run_prometheus, run_service, wait_until
from tests.tools import require_binary

pytestmark = pytest.mark.slow

EARLY, FULL = 12, 8  # images forced out at exit 0 (threshold 0) and run to the end (budget 1.0)


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _value(prom: str, expr: str) -> float:
    result = _query(prom, expr)
    assert len(result) == 1, f"{expr}: expected one series, got {result}"
    return float(result[0]["value"][1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Service + Prometheus scraping it every second, after two waves of known traffic."""
    require_binary("prometheus", "prometheus")
    work = tmp_path_factory.mktemp("prom")
    package = make_package(work, "msdnet", isc=True)
    with run_service(package, work) as svc:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        anytime = next(j for j in config["scrape_configs"] if j["job_name"] == "anytime")
        anytime["static_configs"] = [{"targets": [svc.url.removeprefix("http://")]}]
        config["scrape_configs"] = [anytime]
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        shutil.copy(ALERTS, work / "alerts.yml")  # rule_files is relative to the config
        with run_prometheus(work / "prometheus.yml", work) as prom:
            wait_until(lambda: _query(prom, 'up{job="anytime"} == 1') != [], 30, "first scrape")
            name = load_package(package).manifest.name
            # Two waves some scrapes apart, so that rate() over the window sees an increase.
            for wave in range(2):
                _send_traffic(svc.url, name, wave)
                time.sleep(3)
            wait_until(
                lambda: _query(prom, f"sum(anytime_exit_images_total) == {2 * (EARLY + FULL)}") != [],
                30,
                "scrape of the traffic",
            )
            yield {"prom": prom, "package": package, "name": name, "url": svc.url}


def _send_traffic(url: str, name: str, wave: int) -> None:
    classify = f"{url}/v1/models/{name}/classify"

    def one(i: int) -> int:
        params = {"threshold": "0"} if i < EARLY else {"budget": "1.0"}
        files = {"files": (f"{i}.png", png_bytes(100 * wave + i), "image/png")}
        r = httpx.post(classify, params=params, files=files, timeout=30)
        assert r.status_code == 200, r.text
        expected_exit = 0 if i < EARLY else r.json()["predictions"][0]["exit"]
        assert r.json()["predictions"][0]["exit"] == expected_exit
        return r.status_code

    with ThreadPoolExecutor(8) as pool:  # concurrent, so that the batcher forms batches > 1
        assert list(pool.map(one, range(EARLY + FULL))) == [200] * (EARLY + FULL)
    # Errors with known statuses: an unknown model (404) and a bad option (422).
    assert httpx.post(f"{url}/v1/models/no-such-model/classify", timeout=10).status_code == 404
    bad = httpx.post(
        classify, params={"budget": "7"}, files={"files": ("x.png", png_bytes(1), "image/png")}
    )
    assert bad.status_code == 422


def test_exit_counters_and_compute(stack: dict[str, Any]) -> None:
    prom, name = stack["prom"], stack["name"]
    manifest = load_package(stack["package"]).manifest
    last = manifest.num_exits - 1
    by_exit = {
        r["metric"]["exit"]: float(r["value"][1])
        for r in _query(prom, f'sum by (exit) (anytime_exit_images_total{{model="{name}"}})')
    }
    # Every exit's series exists from start-up (at 0 until an image leaves there).
    expected = {str(k): 0.0 for k in range(manifest.num_exits)} | {"0": 2 * EARLY, str(last): 2 * FULL}
    assert by_exit == expected
    flops = [e.flops for e in manifest.exits]
    n_early, n_full = 2 * EARLY, 2 * FULL
    assert _value(prom, f'anytime_flops_total{{model="{name}"}}') == pytest.approx(
        n_early * flops[0] + n_full * flops[-1]
    )
    assert _value(prom, f'anytime_flops_saved_total{{model="{name}"}}') == pytest.approx(
        n_early * (flops[-1] - flops[0])
    )
    fraction_sum = _value(prom, f'anytime_image_compute_fraction_sum{{model="{name}"}}')
    assert fraction_sum == pytest.approx(n_early * manifest.exits[0].compute_fraction + n_full, rel=1e-6)
    info = _query(prom, "anytime_model_info")
    assert [(i["metric"]["model"], i["metric"]["num_exits"], i["value"][1]) for i in info] == [
        (name, str(manifest.num_exits), "1")
    ]


def test_latency_histogram_series(stack: dict[str, Any]) -> None:
    prom, name = stack["prom"], stack["name"]
    sel = f'model="{name}", status="200"'
    count = _value(prom, f"sum(anytime_request_duration_seconds_count{{{sel}}})")
    assert count == 2 * (EARLY + FULL)
    buckets = _query(prom, f"anytime_request_duration_seconds_bucket{{{sel}}}")
    les = sorted(float(b["metric"]["le"]) for b in buckets)
    assert les[-1] == math.inf and len(les) >= 10
    # Buckets are cumulative and the +Inf bucket holds every request.
    values = [float(b["value"][1]) for b in sorted(buckets, key=lambda b: float(b["metric"]["le"]))]
    assert values == sorted(values) and values[-1] == count
    routes = {
        r["metric"]["route"] for r in _query(prom, f"anytime_request_duration_seconds_count{{{sel}}}")
    }
    assert routes == {"/v1/models/{name}/classify"}
    assert _value(prom, 'sum(anytime_request_duration_seconds_count{status="404"})') == 2
    assert _value(prom, 'sum(anytime_request_duration_seconds_count{status="422"})') == 2
    rate = f"rate(anytime_request_duration_seconds_bucket{{{sel}}}[1m])"
    p99 = _value(prom, f"histogram_quantile(0.99, sum by (le) ({rate}))")
    assert 0 < p99 < 30


def test_queue_and_batch_metrics(stack: dict[str, Any]) -> None:
    prom, name = stack["prom"], stack["name"]
    images = 2 * (EARLY + FULL) + 2  # the 422 request's image is rejected before the queue
    waited = _value(prom, f'anytime_queue_wait_seconds_count{{model="{name}"}}')
    assert 2 * (EARLY + FULL) <= waited <= images
    assert _value(prom, f'anytime_queue_depth{{model="{name}"}}') == 0  # all answered
    stage0 = _value(prom, f'anytime_batch_size_sum{{model="{name}", stage="0"}}')
    assert stage0 == waited  # every image runs stage 0 exactly once
    # Only the images that did not leave at exit 0 reach stage 1: the batch shrank.
    assert _value(prom, f'anytime_batch_size_sum{{model="{name}", stage="1"}}') == 2 * FULL


def test_every_dashboard_and_alert_query_evaluates(stack: dict[str, Any]) -> None:
    prom = stack["prom"]
    queries = [(f"panel {t}", resolve_grafana_variables(q)) for t, q in dashboard_queries()]
    queries += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    empty = []
    for label, expr in queries:
        if not _query(prom, expr):  # _query asserts status "success" (no PromQL error)
            empty.append(label)
    # With traffic and errors sent, only the alerts (nothing is wrong) and the panels of things
    # that did not happen (no rejections, nothing in flight between requests) may be empty.
    # The traffic carries no deadlines and the accuracy guard is off (its default), so the
    # panels for those have no series here; tests/integration/test_engine_modes.py
    # checks those metrics on a server that uses them; no load fails here
    # (tests/service/test_repository.py checks that counter).
    allowed_empty = {
        "panel Rejections by reason",
        "panel Model versions that failed to load",
        "panel Deadline exits per second",
        "panel Exit agreement with the final exit (accuracy guard)",
    } | {lbl for lbl, _ in queries if lbl.startswith("alert")}
    assert set(empty) <= allowed_empty, f"empty results: {sorted(set(empty) - allowed_empty)}"
    mix_query = next(q for t, q in dashboard_queries() if t.startswith("Exit mix"))
    exit_mix = _query(prom, resolve_grafana_variables(mix_query))
    assert sum(float(r["value"][1]) for r in exit_mix) == pytest.approx(1.0)


def test_prometheus_loaded_the_project_rules(stack: dict[str, Any]) -> None:
    body = httpx.get(f"{stack['prom']}/api/v1/rules", timeout=10).json()
    rules = {r["name"]: r for g in body["data"]["groups"] for r in g["rules"]}
    assert set(rules) == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" for r in rules.values()), json.dumps(rules, indent=1)[:2000]
    assert rules["AnytimeServiceDown"]["state"] == "inactive"
    targets = httpx.get(f"{stack['prom']}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]


def test_scrape_target_path_is_the_service_metrics(stack: dict[str, Any]) -> None:
    # The config's metrics_path must be the service's real /metrics route (text format).
    r = httpx.get(f"{stack['url']}/metrics", timeout=10)
    assert r.status_code == 200 and "anytime_model_info" in r.text
    assert (
        yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]["metrics_path"] == "/metrics"
    )
    # After real traffic (every metric has series), promtool's linter accepts the exposition.
    promtool = require_binary("promtool", "prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=r.text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
