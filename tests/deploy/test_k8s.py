"""deploy/k8s/: valid against the Kubernetes 1.33 schemas (offline), and consistent with the image, CLI and Settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.api.app import create_app
from service.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
CORE = {"deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "networkpolicy.yaml"}


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((K8S / name).read_text())
    assert isinstance(doc, dict)
    return doc


def container_schema_check(container: dict[str, Any]) -> None:
    """Validate one container as the core/v1 Container of a Pod (the strict schema refuses unknown fields)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_the_manifests_are_the_expected_set() -> None:
    """deploy/k8s holds the Deployment, Service, HPA, PDB, NetworkPolicy and the KServe InferenceService."""
    assert {p.name for p in K8S.glob("*.yaml")} == CORE | {"inferenceservice.yaml"}


@pytest.mark.parametrize("name", sorted(CORE))
def test_manifest_validates_against_the_kubernetes_schema(name: str) -> None:
    """Each core manifest validates, strictly (no unknown field), against the stated Kubernetes version's schema."""
    kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_wrong_manifest() -> None:
    """The check can fail: a misspelled field and a wrong type are refused."""
    bad = load("deployment.yaml")
    bad["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    bad = load("service.yaml")
    bad["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def _pod(name: str) -> dict[str, Any]:
    doc = load(name)
    pod: dict[str, Any] = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]["predictor"]
    return pod


@pytest.mark.parametrize("name", ["deployment.yaml", "inferenceservice.yaml"])
def test_pods_are_hardened_and_match_the_image_and_settings(name: str) -> None:
    """Non-root (the image's uid), read-only root, no privilege escalation, no capabilities, resources set; the
    image is compose's, the port is GSHAP_PORT, every env var is a Settings field and the probes are routes."""
    pod = _pod(name)
    [container] = pod["containers"]
    if name == "inferenceservice.yaml":
        container_schema_check(container)
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    uid = re.search(r"^USER (\d+):(\d+)", dockerfile, re.MULTILINE)
    assert uid is not None
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == tuple(map(int, uid.groups()))
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert container["image"] == compose["services"]["gshap"]["image"]
    assert set(container["resources"]) == {"requests", "limits"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    fields = {f"{ENV_PREFIX}{n.upper()}" for n in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    port = int(env["GSHAP_PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert port == Settings.model_fields["port"].default  # the service's (and the image's) port
    routes = set(create_app(Settings()).openapi()["paths"])
    probes = [
        container[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in container
    ]
    assert {"/healthz", "/readyz"} <= set(probes) <= routes
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["args"][:2] == ["gshap", "serve"]


def test_the_objects_point_at_each_other() -> None:
    """Service, PDB and NetworkPolicy select the Deployment's pods; the HPA scales it; the Service's target port is
    the container's named port."""
    deployment = load("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert load("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = load("networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == port["name"]
    target = load("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_inference_service_structure() -> None:
    """The KServe InferenceService (v1beta1) runs the same container as a custom predictor; its predictor fields are
    a PodSpec's plus KServe's own (no CRD schema is available offline, so the structure is checked here)."""
    isvc = load("inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert set(isvc["spec"]) == {"predictor"}
    predictor = dict(isvc["spec"]["predictor"])
    kserve_fields = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
    assert predictor["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    pod_spec = {k: v for k, v in predictor.items() if k not in kserve_fields}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    deployment_container = _pod("deployment.yaml")["containers"][0]
    assert predictor["containers"][0]["image"] == deployment_container["image"]


def test_the_database_url_comes_from_a_secret_and_egress_reaches_only_the_database() -> None:
    """GSHAP_DATABASE_URL (it holds the password) is a Secret reference, never a literal value, in the Deployment;
    the NetworkPolicy lets the pods out only to PostgreSQL's port and to the cluster DNS."""
    [container] = _pod("deployment.yaml")["containers"]
    [entry] = [e for e in container["env"] if e["name"] == "GSHAP_DATABASE_URL"]
    assert "value" not in entry
    ref = entry["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"], ref["optional"]) == ("gshap-database", "url", False)
    egress = load("networkpolicy.yaml")["spec"]["egress"]
    ports = sorted((p["port"], p["protocol"]) for rule in egress for p in rule["ports"])
    assert ports == [(53, "TCP"), (53, "UDP"), (5432, "TCP")]
