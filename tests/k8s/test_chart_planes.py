"""The chart keeps the planes apart and refuses unsafe fleets: metrics on a port of their own,
an Ingress that routes the public API only, a NetworkPolicy that limits egress to what the
pods use, and `helm` failing on values that would expose or split the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.routing import BaseRoute

from bentos.catalog import router as catalog_router
from bentos.explain_routes import router as explain_router
from bentos.http import flat_routes
from bentos.jobs_routes import router as jobs_router
from bentos.routes import router as classify_router
from tests.k8s.kube import render
from tests.k8s.test_chart import CHART, container, objects

PRODUCTION = CHART / "ci/production-values.yaml"


def _ports(deployment: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}


def test_metrics_have_a_port_of_their_own() -> None:
    rendered = objects(sets=("serviceMonitor.enabled=true",))
    port = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["port"]
    assert rendered[("ConfigMap", "imageiq")]["data"]["IMAGEIQ_METRICS_PORT"] == str(port)
    deployment = rendered[("Deployment", "imageiq")]
    assert _ports(deployment) == {"http": 3000, "metrics": port}
    service = {p["name"]: p for p in rendered[("Service", "imageiq")]["spec"]["ports"]}
    assert service["metrics"] == {
        "port": port,
        "targetPort": "metrics",
        "protocol": "TCP",
        "name": "metrics",
    }
    (endpoint,) = rendered[("ServiceMonitor", "imageiq")]["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    policy = rendered[("NetworkPolicy", "imageiq")]["spec"]["ingress"]
    assert [rule["ports"][0]["port"] for rule in policy] == ["http", "metrics"]
    # null: today's single port, which the monitor then scrapes.
    shared = objects(sets=("serviceMonitor.enabled=true", "metrics.port=null"))
    assert "IMAGEIQ_METRICS_PORT" not in shared[("ConfigMap", "imageiq")]["data"]
    assert _ports(shared[("Deployment", "imageiq")]) == {"http": 3000}
    assert [p["name"] for p in shared[("Service", "imageiq")]["spec"]["ports"]] == ["http"]
    (endpoint,) = shared[("ServiceMonitor", "imageiq")]["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    # Set by the chart only: `config.metricsPort` would disagree with the ports above.
    with pytest.raises(RuntimeError, match="Additional property metricsPort"):
        render(CHART, set_values=["config.metricsPort=9100"])


def _routed(path: str, ingress: dict[str, Any]) -> bool:
    """Whether the Ingress sends `path` to the service (Exact and Prefix, as Kubernetes
    defines them: a Prefix matches whole path elements)."""
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            prefix = p["path"].rstrip("/")
            if p["pathType"] == "Exact" and path == p["path"]:
                return True
            if p["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
                return True
    return False


def _api_paths(routes: list[BaseRoute]) -> list[str]:
    """Every route's path, those of included routers (e.g. /v1/review) too."""
    return ["/v1" + route.path for route in flat_routes(routes) if hasattr(route, "path")]


@pytest.mark.parametrize("values", [(), ("ingress.enabled=true",)], ids=["production", "default"])
def test_the_ingress_routes_the_public_api_only(values: tuple[str, ...]) -> None:
    rendered = objects(*([] if values else [PRODUCTION]), sets=values)
    ingress = rendered[("Ingress", "imageiq")]
    every = [
        path
        for router in (classify_router, catalog_router, explain_router, jobs_router)
        for path in _api_paths(router.routes)
    ]
    admin = [p for p in every if p.startswith("/v1/admin/")]
    assert admin  # the activate and delete routes
    for path in every:
        assert _routed(path, ingress) == (path not in admin), path
    for private in ("/metrics", "/livez", "/readyz", "/docs.json", "/v1/admin/x", "/foo"):
        assert not _routed(private, ingress), private
    # The web app (and / which redirects there), by default.
    for app in ("/", "/ui", "/ui/", "/ui/images/abc", "/ui/assets/index-1.js"):
        assert _routed(app, ingress), app
    # The docs page and its local Swagger UI files only when asked for (production asks).
    for docs in ("/v1/docs", "/v1/docs/init.js", "/v1/openapi.json", "/static_content/a.js"):
        assert _routed(docs, ingress) == (not values), docs


def test_the_network_policy_limits_egress_to_dns_and_the_dependencies() -> None:
    # Defaults: SQLite and local images, no Redis: DNS only.
    (dns,) = objects()[("NetworkPolicy", "imageiq")]["spec"]["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    policy = objects(PRODUCTION)[("NetworkPolicy", "imageiq")]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    dns, database, redis, s3, tracing = policy["egress"]
    assert database == {
        "ports": [{"port": 5432, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
    }
    assert redis["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert redis["to"][0]["namespaceSelector"]["matchLabels"]
    assert s3 == {"ports": [{"port": 443, "protocol": "TCP"}]}  # any address, HTTPS only
    assert tracing["ports"] == [{"port": 4317, "protocol": "TCP"}]
    assert all(rule.get("ports") for rule in policy["egress"])  # no rule opens every port
    # Prometheus reaches the metrics port, the ingress controller the API port.
    api, metrics = policy["ingress"]
    assert "monitoring" in str(metrics["from"]) and "monitoring" not in str(api["from"])


def test_unsafe_values_are_refused() -> None:
    for values in (
        ["ingress.enabled=true", "config.authEnabled=false"],
        [
            "ingress.enabled=true",
            "canary.enabled=true",
            "canary.image.tag=v4",
            "secrets.database.existingSecret=db",
            "config.s3Bucket=images",
            "canary.config.authEnabled=false",
        ],
    ):
        with pytest.raises(RuntimeError, match="authEnabled false"):
            render(CHART, set_values=values)
    with pytest.raises(RuntimeError, match="need a pepper"):
        render(CHART, set_values=["secrets.apiKeyPepper.existingSecret="])
    # Without keys there is nothing to pepper; without an Ingress, a local demo.
    render(CHART, set_values=["secrets.apiKeyPepper.existingSecret=", "config.authEnabled=false"])


def test_alerts_link_to_the_configured_runbook(tmp_path: Path) -> None:
    url = "https://runbooks.example.com/ml/imageiq.html"
    rendered = objects(sets=("prometheusRule.enabled=true", f"prometheusRule.runbookUrl={url}"))
    groups = rendered[("PrometheusRule", "imageiq")]["spec"]["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{url}#{alert['alert'].lower()}"
    with pytest.raises(RuntimeError, match="runbookUrl"):
        render(CHART, set_values=["prometheusRule.runbookUrl=docs/operations.md"])


def test_the_data_volume_is_a_claim_every_pod_shares_and_outlives_them() -> None:
    """The spool of a pod replaced during an outage must outlive it (issue 18.3)."""
    fleet = (
        "replicaCount=3",
        "canary.enabled=true",
        "canary.image.tag=v4",
        "secrets.database.existingSecret=db",
        "config.s3Bucket=images",
    )
    rendered = objects(sets=fleet)
    claim = rendered[("PersistentVolumeClaim", "imageiq-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for name in ("imageiq", "imageiq-canary"):
        volumes = rendered[("Deployment", name)]["spec"]["template"]["spec"]["volumes"]
        data = next(v for v in volumes if v["name"] == "data")
        assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "imageiq-data"}}
    # Several pods cannot share a ReadWriteOnce claim: refused, not stuck mid-rollout.
    with pytest.raises(RuntimeError, match="ReadWriteMany"):
        render(CHART, set_values=[*fleet, "dataVolume.persistence.accessModes[0]=ReadWriteOnce"])
    # An operator's claim, or none (an emptyDir, as before: documented as losing the spool).
    theirs = objects(sets=("dataVolume.persistence.existingClaim=nfs-imageiq",))
    assert ("PersistentVolumeClaim", "imageiq-data") not in theirs
    volumes = theirs[("Deployment", "imageiq")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "nfs-imageiq"}} in volumes
    off = objects(sets=("dataVolume.persistence.enabled=false",))
    volumes = off[("Deployment", "imageiq")]["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "data")["emptyDir"]
