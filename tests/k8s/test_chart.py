"""The Helm chart, checked offline: lint, render with every values file, validate each object
against the Kubernetes schemas, and check what the chart promises (zero-downtime rollouts,
probes, canary sizes, GPU scheduling, secrets, migrations). Broken inputs must fail."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from imageiq.settings import Settings
from tests.k8s.kube import ROOT, load_all, render, tool, validate

CHART = ROOT / "helm/imageiq"
VALUES_FILES = [*sorted(CHART.glob("ci/*-values.yaml")), CHART / "values-gpu.yaml"]
sys.path.insert(0, str(ROOT / "scripts"))
from chart_settings_schema import camel, settings_schema  # noqa: E402

Objects = dict[tuple[str, str], dict[str, Any]]


def objects(*values: Path, sets: tuple[str, ...] = (), chart: Path = CHART) -> Objects:
    text = render(chart, values_files=values, set_values=sets)
    return {(o["kind"], o["metadata"]["name"]): o for o in load_all(text)}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


@pytest.mark.parametrize("values", [None, *VALUES_FILES], ids=lambda v: v.name if v else "defaults")
def test_lint_strict(values: Path | None) -> None:
    args = [tool("helm"), "lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", [None, *VALUES_FILES], ids=lambda v: v.name if v else "defaults")
def test_every_rendered_object_is_valid_kubernetes(values: Path | None) -> None:
    rendered = load_all(render(CHART, values_files=[values] if values else []))
    assert rendered
    assert validate(rendered) == []


def test_production_values_render_every_feature() -> None:
    kinds = {kind for kind, _ in objects(CHART / "ci/production-values.yaml")}
    assert kinds == {
        "ConfigMap",
        "CronJob",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "Ingress",
        "Job",
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }


def test_defaults_turn_optional_features_off() -> None:
    """Optional features are off, but the NetworkPolicy and the data volume's claim (the
    spool outlives a pod) are safety defaults: on."""
    kinds = {kind for kind, _ in objects()}
    assert kinds == {"ConfigMap", "Deployment", "Pod", "PodDisruptionBudget", "Service"} | {
        "ServiceAccount",
        "NetworkPolicy",
        "PersistentVolumeClaim",
    }
    assert objects()[("Deployment", "imageiq")]["spec"]["replicas"] == 1


# ---- broken inputs fail ------------------------------------------------------------------


def test_a_typo_in_a_value_fails(tmp_path: Path) -> None:
    for typo in ("autoscaling.minReplica=3", "config.maxBatchSise=8", "canary.wieght=5"):
        with pytest.raises(RuntimeError, match="Additional property"):
            render(CHART, set_values=[typo])
    for wrong in ("image.pullPolicy=Sometimes", "config.device=tpu", "canary.weight=90"):
        with pytest.raises(RuntimeError, match="values don't meet the specifications"):
            render(CHART, set_values=[wrong])
    # A canary with no image tag would run the stable image and prove nothing.
    with pytest.raises(RuntimeError, match="values don't meet the specifications"):
        render(CHART, set_values=["canary.enabled=true"])


def test_a_broken_template_fails(tmp_path: Path) -> None:
    chart = tmp_path / "imageiq"
    shutil.copytree(CHART, chart)
    service = chart / "templates/service.yaml"
    service.write_text(
        service.read_text().replace("{{ .Values.service.type }}", "{{ .Values.service.type ")
    )
    with pytest.raises(RuntimeError, match="helm template failed"):
        render(chart)
    lint = subprocess.run(
        [tool("helm"), "lint", "--strict", str(chart)], capture_output=True, text=True
    )
    assert lint.returncode != 0


def test_an_invalid_object_is_caught(tmp_path: Path) -> None:
    """Values the chart's schema lets through as opaque Kubernetes fields are still checked
    against the Kubernetes schemas once rendered."""
    for wrong, field in [
        ("podSecurityContext.runAsUser=nobody", "runAsUser"),
        ("securityContext.privilegd=true", "privilegd"),
        ("tolerations[0].tolerationSeconds=soon", "tolerationSeconds"),
    ]:
        problems = "\n".join(validate(load_all(render(CHART, set_values=[wrong]))))
        assert field in problems, wrong
    chart = tmp_path / "imageiq"
    shutil.copytree(CHART, chart)
    pdb = chart / "templates/pdb.yaml"
    pdb.write_text(pdb.read_text().replace("apiVersion: policy/v1", "apiVersion: policy/v1beta1"))
    assert any("policy/v1beta1" in p for p in validate(load_all(render(chart))))


# ---- what the chart promises ---------------------------------------------------------------


def test_rollouts_are_zero_downtime_and_readiness_gated() -> None:
    deployment = objects()[("Deployment", "imageiq")]
    strategy = deployment["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    main = container(deployment)
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert main["startupProbe"]["httpGet"]["path"] == "/readyz"
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # time to warm up
    assert main["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert main["args"][0] == "serve"
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    assert main["resources"]["requests"] and main["resources"]["limits"]


def test_config_change_restarts_pods() -> None:
    before = objects()[("Deployment", "imageiq")]["spec"]["template"]["metadata"]["annotations"]
    after = objects(sets=("config.maxBatchSize=32",))[("Deployment", "imageiq")]
    assert (
        before["checksum/config"]
        != after["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    )


def test_image_tag_defaults_to_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = container(objects()[("Deployment", "imageiq")])["image"]
    assert image == f"ghcr.io/imageiq/imageiq:{chart['appVersion']}"
    tagged = objects(sets=("image.tag=0.1.0-resnet50-v4",))[("Deployment", "imageiq")]
    assert container(tagged)["image"].endswith(":0.1.0-resnet50-v4")


def test_autoscaling_owns_the_replica_count() -> None:
    rendered = objects(CHART / "ci/production-values.yaml")
    assert "replicas" not in rendered[("Deployment", "imageiq")]["spec"]
    hpa = rendered[("HorizontalPodAutoscaler", "imageiq")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "imageiq"
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert metrics["Resource"]["resource"]["target"]["averageUtilization"] == 70
    assert metrics["Pods"]["pods"]["metric"]["name"] == "imageiq_requests_in_flight"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


@pytest.mark.parametrize(
    ("replicas", "weight", "canary", "stable"),
    [(4, 25, 1, 3), (10, 10, 1, 9), (10, 25, 3, 7), (2, 50, 1, 1)],
)
def test_a_canary_shares_the_fleet(replicas: int, weight: int, canary: int, stable: int) -> None:
    rendered = objects(
        sets=(
            f"replicaCount={replicas}",
            "secrets.database.existingSecret=db",
            "config.s3Bucket=imageiq-images",
            "canary.enabled=true",
            f"canary.weight={weight}",
            "canary.image.tag=v4",
            "canary.config.maxBatchSize=8",
        )
    )
    main = rendered[("Deployment", "imageiq")]
    new = rendered[("Deployment", "imageiq-canary")]
    assert (new["spec"]["replicas"], main["spec"]["replicas"]) == (canary, stable)
    assert container(new)["image"].endswith(":v4")
    assert env_of(new)["IMAGEIQ_MAX_BATCH_SIZE"] == "8"
    # Disjoint selectors; the Service selects both tracks.
    tracks = {d["spec"]["selector"]["matchLabels"]["imageiq.dev/track"] for d in (main, new)}
    assert tracks == {"stable", "canary"}
    selector = rendered[("Service", "imageiq")]["spec"]["selector"]
    for deployment in (main, new):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


def test_gpu_values_schedule_on_gpus() -> None:
    rendered = objects(CHART / "values-gpu.yaml")
    deployment = rendered[("Deployment", "imageiq")]
    main, pod = container(deployment), deployment["spec"]["template"]["spec"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    config = rendered[("ConfigMap", "imageiq")]["data"]
    assert config["IMAGEIQ_DEVICE"] == "cuda"
    assert int(config["IMAGEIQ_MAX_BATCH_SIZE"]) > 16
    assert "imageiq-gpu" in main["image"]


def test_secrets_are_referenced_never_inlined() -> None:
    rendered = objects(CHART / "ci/production-values.yaml")
    env = env_of(rendered[("Deployment", "imageiq")])
    assert env["IMAGEIQ_DATABASE_URL"] == {"secretKeyRef": {"name": "imageiq-db", "key": "url"}}
    assert env["IMAGEIQ_REDIS_URL"] == {"secretKeyRef": {"name": "imageiq-redis", "key": "url"}}
    assert env["IMAGEIQ_API_KEY_PEPPER"]["secretKeyRef"]["name"] == "imageiq-pepper"
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "imageiq-s3"
    config = rendered[("ConfigMap", "imageiq")]["data"]
    secret = {"IMAGEIQ_DATABASE_URL", "IMAGEIQ_REDIS_URL", "IMAGEIQ_API_KEY_PEPPER"}
    assert not config.keys() & secret
    assert "Secret" not in {kind for kind, _ in rendered}


def test_migrations_run_before_the_new_version_serves() -> None:
    rendered = objects(CHART / "ci/production-values.yaml")
    job = rendered[("Job", "imageiq-migrate")]
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert hooks == ["pre-install", "pre-upgrade"]
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["python", "-m", "imageiq_cli", "db", "upgrade"]
    assert {e["name"] for e in migrate["env"]} >= {"IMAGEIQ_DATABASE_URL"}
    assert "initContainers" not in rendered[("Deployment", "imageiq")]["spec"]["template"]["spec"]
    # Without a database Secret, each pod migrates its own SQLite file first.
    embedded = objects()
    assert ("Job", "imageiq-migrate") not in embedded
    (init,) = embedded[("Deployment", "imageiq")]["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == migrate["args"]


def test_monitoring_objects_embed_the_rules_and_dashboards() -> None:
    rendered = objects(CHART / "ci/production-values.yaml")
    monitor = rendered[("ServiceMonitor", "imageiq")]["spec"]["endpoints"][0]
    assert (monitor["port"], monitor["path"]) == ("metrics", "/metrics")
    rules = yaml.safe_load((CHART / "files/prometheus/rules.yaml").read_text())
    assert rendered[("PrometheusRule", "imageiq")]["spec"] == rules
    dashboards = rendered[("ConfigMap", "imageiq-dashboards")]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted(p.name for p in (CHART / "files/dashboards").glob("*.json"))
    assert sorted(dashboards["data"]) == files
    for name in files:
        assert json.loads(dashboards["data"][name]) == json.loads(
            (CHART / "files/dashboards" / name).read_text()
        )


def test_helm_test_pod_checks_readiness_and_classify() -> None:
    rendered = objects(CHART / "ci/production-values.yaml")
    (pod,) = [o for (kind, _), o in rendered.items() if kind == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (check,) = pod["spec"]["containers"]
    assert check["args"][:2] == ["python", "-c"]
    assert check["args"][2] == (CHART / "files/smoke_test.py").read_text()
    env = {e["name"]: e for e in check["env"]}
    assert env["IMAGEIQ_URL"]["value"] == "http://imageiq:80"
    assert env["IMAGEIQ_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "imageiq-test-key"


# ---- the schema and the settings stay in step ------------------------------------------------


def test_values_schema_is_a_valid_schema_and_covers_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    # The schema rejects what helm would: an unknown key at any level of values.yaml.
    broken = {**defaults, "probes": {**defaults["probes"], "readyness": {}}}
    with pytest.raises(jsonschema.ValidationError, match="readyness"):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_several_pods_need_shared_storage() -> None:
    """A database and stored images that every pod sees: PostgreSQL, and S3 unless images
    are never stored."""
    canary = ("canary.enabled=true", "canary.image.tag=v4")
    for many in (("replicaCount=2",), ("autoscaling.enabled=true",), canary):
        with pytest.raises(RuntimeError, match="shared database"):
            render(CHART, set_values=list(many))
        with pytest.raises(RuntimeError, match="shared image storage"):
            render(CHART, set_values=[*many, "secrets.database.existingSecret=db"])
        render(
            CHART,
            set_values=[*many, "secrets.database.existingSecret=db", "config.s3Bucket=images"],
        )
        render(
            CHART,
            set_values=[*many, "secrets.database.existingSecret=db", "config.storeImages=never"],
        )


def test_the_network_policy_admits_the_helm_test_pod() -> None:
    rendered = objects(CHART / "ci/production-values.yaml")
    policy = rendered[("NetworkPolicy", "imageiq")]["spec"]
    (test_pod,) = [o for (kind, _), o in rendered.items() if kind == "Pod"]
    selected = policy["podSelector"]["matchLabels"]
    assert not selected.items() <= test_pod["metadata"]["labels"].items()  # egress rules: not its
    peers = policy["ingress"][0]["from"]
    assert any(
        p.get("podSelector", {}).get("matchLabels", {}).items()
        <= test_pod["metadata"]["labels"].items()
        and "namespaceSelector" not in p
        for p in peers
    )
    server = rendered[("Deployment", "imageiq")]["spec"]["template"]["metadata"]["labels"]
    assert selected.items() <= server.items()


def test_config_schema_matches_the_settings() -> None:
    """`make chart-schema` regenerates it; a new setting without it fails here."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$defs"]["settings"] == settings_schema()


def _example(name: str, spec: dict[str, Any]) -> Any:
    special = {
        "models": ["imageiq-classifier:v3", "imageiq-species:latest"],
        "activeModel": "imageiq-species",
        "s3Bucket": "imageiq-images",
        "s3Prefix": "stored/",
        "s3EndpointUrl": "http://minio:9000",
        "jobsAllowedBuckets": ["customer-uploads", "archive"],
        "webhookAllowedNetworks": ["10.50.0.0/16"],
        "oidcIssuer": "https://login.example.com/realms/imageiq",
        "oidcJwksUrl": "https://login.example.com/realms/imageiq/certs",
        "oidcAlgorithms": ["RS256", "ES256"],
        "oidcClassifyValues": ["imageiq:classify"],
        "oidcLabelValues": ["imageiq:label", "ml-team"],
        "oidcAdminValues": [],
    }
    if name in special:
        return special[name]
    if "enum" in spec:
        return spec["enum"][-1]
    if spec["type"] == "boolean":
        return False
    if spec["type"] == "string":
        return "x"
    return (spec.get("minimum") or 0) + (3 if spec["type"] == "integer" else 0.5)


def test_every_config_key_reaches_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each camelCase key under `config` becomes the IMAGEIQ_* variable Settings reads, with
    its value intact (numbers never in exponent form, lists as JSON)."""
    properties = settings_schema()["properties"]
    config = {k: _example(k, v) for k, v in properties.items() if k != "configFile"}
    config["maxImageBytes"] = 20971520  # a large integer: helm holds it as a float
    values = tmp_path / "all-settings.yaml"
    values.write_text(yaml.safe_dump({"config": config}))
    data = objects(values)[("ConfigMap", "imageiq")]["data"]
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    for key, value in config.items():
        field = next(f for f in Settings.model_fields if camel(f) == key)
        got = getattr(settings, field)
        if isinstance(got, Path):  # e.g. modelSocket
            got = str(got)
        assert (got.get_secret_value() if hasattr(got, "get_secret_value") else got) == value, key
    assert str(settings.data_dir) == "/var/lib/imageiq"
