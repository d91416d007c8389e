"""The offline Kubernetes checks catch what the API server would refuse, and say where."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate.utils
import pytest

from tests.k8s import kube

LABELS = {"app.kubernetes.io/name": "imageiq", "app.kubernetes.io/instance": "imageiq"}

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "imageiq", "namespace": "imageiq", "labels": LABELS},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": LABELS},
        "template": {
            "metadata": {"labels": LABELS, "annotations": {"checksum/config": "abc123"}},
            "spec": {
                "containers": [
                    {
                        "name": "imageiq",
                        "image": "ghcr.io/example/imageiq:0.1.0",
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"name": "http", "containerPort": 3000, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                    }
                ]
            },
        },
    },
}
SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "imageiq", "labels": LABELS},
    "spec": {
        "type": "ClusterIP",
        "selector": LABELS,
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    },
}
HPA: dict[str, Any] = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "imageiq", "labels": LABELS},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "imageiq"},
        "minReplicas": 2,
        "maxReplicas": 6,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            }
        ],
    },
}
PDB: dict[str, Any] = {
    "apiVersion": "policy/v1",
    "kind": "PodDisruptionBudget",
    "metadata": {"name": "imageiq", "labels": LABELS},
    "spec": {"minAvailable": 1, "selector": {"matchLabels": LABELS}},
}
SERVICE_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "ServiceMonitor",
    "metadata": {"name": "imageiq", "labels": {**LABELS, "release": "prometheus"}},
    "spec": {
        "namespaceSelector": {"matchNames": ["imageiq"]},
        "selector": {"matchLabels": LABELS},
        "endpoints": [
            {
                "port": "http",
                "path": "/metrics",
                "interval": "30s",
                "scrapeTimeout": "10s",
                "relabelings": [
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_label_imageiq_dev_track"],
                        "targetLabel": "track",
                    }
                ],
            }
        ],
    },
}
PROMETHEUS_RULE: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "imageiq", "labels": LABELS},
    "spec": {
        "groups": [
            {
                "name": "imageiq.rules",
                "rules": [
                    {
                        "record": "imageiq:request_errors:ratio_rate5m",
                        "expr": "sum(rate(errors_total[5m])) / sum(rate(requests_total[5m]))",
                    },
                    {
                        "alert": "ImageIQHighErrorRate",
                        "expr": "imageiq:request_errors:ratio_rate5m > 0.05",
                        "for": "10m",
                        "labels": {"severity": "warning"},
                        "annotations": {"summary": "More than 5% of requests fail."},
                    },
                ],
            }
        ]
    },
}
VALID = [DEPLOYMENT, SERVICE, HPA, PDB, SERVICE_MONITOR, PROMETHEUS_RULE]


def broken(obj: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    copied = copy.deepcopy(obj)
    change(copied)
    return copied


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    return containers[0]


def test_target_version_has_bundled_schemas() -> None:
    assert kube.KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()
    # The schemas used are those of the target version, not an older fallback.
    assert kubernetes_validate.validate(DEPLOYMENT, kube.KUBERNETES_VERSION, strict=True) == "1.33"


def test_valid_objects_pass() -> None:
    assert kube.validate(VALID) == []


BROKEN = {
    "unknown field": (
        broken(DEPLOYMENT, lambda d: container(d).update(imagePullPolicyy="Always")),
        "Deployment/imageiq: spec.template.spec.containers[0]: Additional properties are not "
        "allowed ('imagePullPolicyy' was unexpected)",
    ),
    "wrong type": (
        broken(DEPLOYMENT, lambda d: d["spec"].update(replicas="two")),
        "Deployment/imageiq: spec.replicas: 'two' is not of type 'integer', 'null'",
    ),
    "bad enum": (
        broken(DEPLOYMENT, lambda d: container(d).update(imagePullPolicy="Sometimes")),
        "Deployment/imageiq: spec.template.spec.containers[0].imagePullPolicy: 'Sometimes' is "
        "not one of ['Always', 'IfNotPresent', 'Never']",
    ),
    "removed apiVersion": (
        broken(HPA, lambda h: h.update(apiVersion="autoscaling/v2beta1")),
        "HorizontalPodAutoscaler/imageiq: no schema for autoscaling/v2beta1/"
        "HorizontalPodAutoscaler in Kubernetes 1.33.0",
    ),
    "unknown kind": (
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        "Widget/w: no schema for example.com/v1/Widget in Kubernetes 1.33.0",
    ),
    # kubernetes-validate drops the domain of a group to find a file (apps.example.com -> apps).
    "bad enum in a Service": (
        broken(SERVICE, lambda s: s["spec"].update(type="Internal")),
        "Service/imageiq: spec.type: 'Internal' is not one of ['ClusterIP', 'ExternalName', "
        "'LoadBalancer', 'NodePort']",
    ),
    "bad enum in a list": (
        broken(SERVICE, lambda s: s["spec"].update(ipFamilies=["IPv5"])),
        "Service/imageiq: spec.ipFamilies[0]: 'IPv5' is not one of",
    ),
    "look-alike group": (
        broken(DEPLOYMENT, lambda d: d.update(apiVersion="apps.example.com/v1")),
        "Deployment/imageiq: apiVersion: 'apps.example.com/v1' is not one of ['apps/v1']",
    ),
    "kind in the wrong case": (
        broken(SERVICE, lambda s: s.update(kind="service")),
        "service/imageiq: kind: 'service' is not one of ['Service']",
    ),
    "name not a DNS subdomain": (
        broken(SERVICE, lambda s: s["metadata"].update(name="ImageIQ_svc")),
        "Service/ImageIQ_svc: metadata.name: 'ImageIQ_svc' is not a DNS-1123 subdomain",
    ),
    "ServiceMonitor endpoint typo": (
        broken(SERVICE_MONITOR, lambda m: m["spec"]["endpoints"][0].update(pathh="/metrics")),
        "ServiceMonitor/imageiq: spec.endpoints[0]: Additional properties are not allowed "
        "('pathh' was unexpected)",
    ),
    "ServiceMonitor wrong type": (
        broken(SERVICE_MONITOR, lambda m: m["spec"]["endpoints"][0].update(interval=30)),
        "ServiceMonitor/imageiq: spec.endpoints[0].interval: 30 is not of type 'string'",
    ),
    "ServiceMonitor bad enum": (
        broken(SERVICE_MONITOR, lambda m: m["spec"]["endpoints"][0].update(scheme="ftp")),
        "ServiceMonitor/imageiq: spec.endpoints[0].scheme: 'ftp' is not one of",
    ),
    "PrometheusRule rule typo": (
        broken(PROMETHEUS_RULE, lambda r: r["spec"]["groups"][0]["rules"][1].update(fro="5m")),
        "PrometheusRule/imageiq: spec.groups[0].rules[1]: Additional properties are not allowed "
        "('fro' was unexpected)",
    ),
    "PrometheusRule label not a string": (
        broken(
            PROMETHEUS_RULE,
            lambda r: r["spec"]["groups"][0]["rules"][1]["labels"].update(page=True),
        ),
        "PrometheusRule/imageiq: spec.groups[0].rules[1].labels.page: True is not of type 'string'",
    ),
    "CRD metadata label not a string": (
        broken(SERVICE_MONITOR, lambda m: m["metadata"]["labels"].update(tier=1)),
        "ServiceMonitor/imageiq: metadata.labels.tier: 1 is not of type 'string'",
    ),
    "CRD without a name": (
        broken(PROMETHEUS_RULE, lambda r: r["metadata"].pop("name")),
        "PrometheusRule/#1: metadata.name: missing",
    ),
    "CRD misspelt kind": (
        broken(SERVICE_MONITOR, lambda m: m.update(kind="ServiceMonitors")),
        "ServiceMonitors/imageiq: no schema for monitoring.coreos.com/v1/ServiceMonitors",
    ),
    "no apiVersion": (
        broken(SERVICE, lambda s: s.pop("apiVersion")),
        "Service/imageiq: apiVersion: missing or not a string",
    ),
}


@pytest.mark.parametrize(("obj", "expected"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_object_fails_with_a_readable_message(obj: dict[str, Any], expected: str) -> None:
    errors = kube.validate([obj])
    assert errors, "accepted an invalid object"
    assert any(error.startswith(expected) for error in errors), errors


def test_every_problem_is_reported_with_its_object() -> None:
    def two_faults(d: dict[str, Any]) -> None:
        container(d).update(imagePullPolicy="Sometimes")
        d["spec"]["template"]["spec"].update(restartPolicyy="Always")

    rule = broken(PROMETHEUS_RULE, lambda r: r["spec"]["groups"][0]["rules"][0].pop("expr"))
    monitor = broken(SERVICE_MONITOR, lambda m: m["spec"].pop("selector"))
    errors = kube.validate([SERVICE, broken(DEPLOYMENT, two_faults), rule, monitor])
    assert errors == [
        "Deployment/imageiq: spec.template.spec: Additional properties are not allowed "
        "('restartPolicyy' was unexpected)",
        "Deployment/imageiq: spec.template.spec.containers[0].imagePullPolicy: 'Sometimes' is "
        "not one of ['Always', 'IfNotPresent', 'Never']",
        "PrometheusRule/imageiq: spec.groups[0].rules[0]: 'expr' is a required property",
        "ServiceMonitor/imageiq: spec: 'selector' is a required property",
    ]


def test_null_is_as_good_as_absent_in_an_enumerated_field() -> None:
    # As kubernetes-validate's schemas allow null everywhere; the API server drops it.
    assert (
        kube.validate([broken(DEPLOYMENT, lambda d: container(d).update(imagePullPolicy=None))])
        == []
    )


def test_crd_schemas_are_generated_self_contained() -> None:
    kube.validate([SERVICE_MONITOR, PROMETHEUS_RULE])
    for kind in ("servicemonitor", "prometheusrule"):
        text = (kube.SCHEMAS / f"monitoring.coreos.com-v1-{kind}.json").read_text()
        assert '"$ref"' not in text
        assert json.loads(text)["properties"]["apiVersion"]["const"] == "monitoring.coreos.com/v1"


def test_strict_leaves_preserve_unknown_fields_and_data_alone() -> None:
    schema = {
        "type": "object",
        "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "properties": {"type": "object", "properties": {"b": {"type": "string"}}},
        },
        "default": {"properties": {"c": {}}},
    }
    strict = kube._strict(schema)
    assert strict["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["open"]
    assert strict["properties"]["closed"]["additionalProperties"] is False
    assert strict["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]
    assert strict["default"] == {"properties": {"c": {}}}


def test_load_all_skips_empty_documents() -> None:
    text = "---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\ndata:\n  op: =\n---\n"
    assert kube.load_all(text) == [{"apiVersion": "v1", "kind": "ConfigMap", "data": {"op": "="}}]
    with pytest.raises(ValueError, match="not a mapping"):
        kube.load_all("- a list\n")


def test_helm_comes_from_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HELM", raising=False)
    helm = kube.tool("helm")
    assert helm == str(kube.TOOLS / "node_modules" / ".bin" / "helm")
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True)
    assert version.stdout.startswith("v3.10.1"), version


def test_tool_override_and_missing_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "promtool"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PROMTOOL", str(fake))
    assert kube.tool("promtool") == str(fake)
    monkeypatch.setenv("PROMTOOL", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match="is not an executable"):
        kube.tool("promtool")
    monkeypatch.delenv("PROMTOOL")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="Debian package `prometheus`"):
        kube.tool("promtool")
    with pytest.raises(RuntimeError, match=r"kubectl >= 1\.21"):
        kube.tool("kubectl")


CAPABILITIES = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-caps
  namespace: {{ .Release.Namespace }}
data:
  kube: {{ .Capabilities.KubeVersion.Version | quote }}
  monitoring: {{ .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" | quote }}
  hpa: {{ .Capabilities.APIVersions.Has "autoscaling/v2" | quote }}
  replicas: {{ .Values.replicas | quote }}
"""


def write_chart(directory: Path, template: str) -> Path:
    (directory / "templates").mkdir(parents=True)
    (directory / "Chart.yaml").write_text("apiVersion: v2\nname: caps\nversion: 0.1.0\n")
    (directory / "values.yaml").write_text("replicas: 1\n")
    (directory / "templates" / "configmap.yaml").write_text(template)
    return directory


def test_render_targets_the_kubernetes_version(tmp_path: Path) -> None:
    chart = write_chart(tmp_path / "caps", CAPABILITIES)
    values = tmp_path / "more-values.yaml"
    values.write_text("replicas: 2\n")
    text = kube.render(chart, values_files=[values], set_values=["replicas=3"], release="r1")
    [config] = kube.load_all(text)
    assert config["metadata"] == {"name": "r1-caps", "namespace": "imageiq"}
    assert config["data"] == {
        "kube": "v1.33.0",
        "monitoring": "true",
        "hpa": "true",
        "replicas": "3",
    }
    assert kube.validate([config]) == []


def test_render_failure_carries_helm_stderr(tmp_path: Path) -> None:
    chart = write_chart(tmp_path / "bad", '{{ fail "replicas must be set" }}\n')
    with pytest.raises(RuntimeError, match="replicas must be set"):
        kube.render(chart)


@pytest.mark.skipif(
    not os.environ.get("KUBECTL") and not shutil.which("kubectl"), reason="kubectl is not installed"
)
def test_kustomize_builds_a_directory(tmp_path: Path) -> None:
    (tmp_path / "service.yaml").write_text(json.dumps(SERVICE))
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [service.yaml]\nnamespace: imageiq-staging\n"
    )
    [service] = kube.load_all(kube.kustomize(tmp_path))
    assert service["metadata"]["namespace"] == "imageiq-staging"
    assert kube.validate([service]) == []
