"""Kubernetes manifests validated against the real API schemas (kubernetes-validate, strict).

Custom resources (KServe InferenceService, Prometheus Operator ServiceMonitor) have no schema in
kubernetes-validate: their pod-shaped parts are validated as a core Pod, the rest checked by hand.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import DOCKER
from tests.tools import missing_tool

try:
    import kubernetes_validate
except ImportError:
    missing_tool("kubernetes-validate not installed (it is in the test extras)")
K8S = DOCKER / "k8s"
VERSION = "1.30.0"  # oldest Kubernetes still widely run that these manifests target


def _load(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert len(docs) == 1, f"{name}: one resource per file"
    doc: dict[str, Any] = docs[0]
    return doc


def _validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, VERSION, strict=True)


def _as_pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml"])
def test_core_manifests_are_valid(name: str) -> None:
    _validate(_load(name))


def test_validation_rejects_a_typo() -> None:
    # Strict mode is what makes the test above worth having: an unknown field must fail.
    broken = copy.deepcopy(_load("deployment.yaml"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken)


def test_deployment_probes_gpu_and_scrape() -> None:
    dep = _load("deployment.yaml")
    pod = dep["spec"]["template"]
    (api,) = pod["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert int(api["resources"]["limits"]["nvidia.com/gpu"]) == 1
    port = next(p for p in api["ports"] if p["name"] == "http")["containerPort"]
    env = {e["name"]: e["value"] for e in api["env"]}
    assert "packages/default" in env["ANYTIME_MODELS"]
    # A Service named "anytime" makes Kubernetes inject ANYTIME_PORT=tcp://<ip>:80, which the
    # settings would refuse: no service links, and the port set explicitly (explicit env wins).
    assert pod["spec"]["enableServiceLinks"] is False and int(env["ANYTIME_PORT"]) == port
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == port
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_service_hpa_and_servicemonitor_point_at_the_deployment() -> None:
    dep, svc, hpa, mon = (
        _load(n) for n in ("deployment.yaml", "service.yaml", "hpa.yaml", "servicemonitor.yaml")
    )
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert mon["apiVersion"] == "monitoring.coreos.com/v1" and mon["kind"] == "ServiceMonitor"
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in mon["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert all(e["path"] == "/metrics" for e in mon["spec"]["endpoints"])


# Fields of KServe's v1beta1 ComponentExtensionSpec that sit beside the pod spec in `predictor`.
KSERVE_COMPONENT_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
    "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
    "deploymentStrategy",
}  # fmt: skip


def test_kserve_inference_service() -> None:
    isvc = _load("inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert set(isvc["spec"]) == {"predictor"}
    predictor = isvc["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS}
    _validate(_as_pod("anytime-predictor", pod_spec))  # a custom predictor is a pod spec
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["ANYTIME_PORT"]) == container["ports"][0]["containerPort"]
    # The service answers the Open Inference Protocol's health routes itself.
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1


def test_every_manifest_is_checked() -> None:
    checked = {
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "servicemonitor.yaml",
        "inferenceservice.yaml",
    }
    assert {p.name for p in Path(K8S).glob("*.yaml")} == checked
