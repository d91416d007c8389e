"""The bulk-job workers in the chart (`worker.*`): off by default; on, a Deployment of
`imageiq worker` in the server's image with its settings and Secrets, scraped, fenced by a
NetworkPolicy, scaled by KEDA or by an HPA on an External metric (never both), scheduled on
GPUs by values-gpu.yaml, and shipped in the kubectl overlays as a fixed pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.kube import ROOT, kustomize, load_all, render, validate
from tests.k8s.test_chart import CHART, container, env_of, objects

KEDA = CHART / "ci/worker-keda-values.yaml"
HPA = CHART / "ci/worker-hpa-values.yaml"
# The least a worker needs: a shared database, a broker, shared storage.
MINIMAL = (
    "worker.enabled=true",
    "secrets.database.existingSecret=db",
    "secrets.jobsBroker.existingSecret=broker",
    "config.s3Bucket=images",
)


def worker(rendered: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return rendered[("Deployment", "imageiq-worker")]


def test_off_by_default() -> None:
    names = {name for _, name in objects()}
    assert not any("worker" in name for name in names)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]
    assert values["enabled"] is False
    assert not values["autoscaling"]["keda"]["enabled"]
    assert not values["autoscaling"]["hpa"]["enabled"]


def test_the_worker_runs_imageiq_worker_like_the_server() -> None:
    rendered = objects(KEDA)
    deployment, server = worker(rendered), rendered[("Deployment", "imageiq")]
    main, pod = container(deployment), deployment["spec"]["template"]["spec"]
    assert main["args"] == ["python", "-m", "imageiq_cli", "worker"]
    assert main["image"] == container(server)["image"]
    assert main["envFrom"] == container(server)["envFrom"]
    env, server_env = env_of(deployment), env_of(server)
    # Every Secret the server pods get, and the broker's.
    for name, value in server_env.items():
        assert env[name] == value, name
    assert env["IMAGEIQ_JOBS_BROKER_URL"] == {
        "secretKeyRef": {"name": "imageiq-jobs-broker", "key": "url"}
    }
    assert env["IMAGEIQ_WORKER_METRICS_PORT"] == "9400"
    assert env["IMAGEIQ_TORCH_THREADS"] == "4"  # worker.config over the ConfigMap
    # The same contexts and account; a long grace period for the chunk in hand.
    assert main["securityContext"] == container(server)["securityContext"]
    assert pod["securityContext"] == server["spec"]["template"]["spec"]["securityContext"]
    assert pod["serviceAccountName"] == "imageiq"
    assert pod["terminationGracePeriodSeconds"] == 900
    assert main["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert main["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    assert "readinessProbe" not in main
    # Config changes restart the workers too.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    server_annotations = server["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == server_annotations["checksum/config"]
    # The bento's models are copied into the worker's writable store first.
    (copy,) = pod["initContainers"]
    assert copy["name"] == "bento-models"
    assert "/home/bentoml/bento/models" in copy["args"][2]
    # Labels: its own component; never selected by the API Service or the server Deployment.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "worker"
    service = rendered[("Service", "imageiq")]["spec"]["selector"]
    assert not service.items() <= labels.items()
    assert not server["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_autoscaling_owns_the_worker_count() -> None:
    assert worker(objects(sets=MINIMAL))["spec"]["replicas"] == 1
    assert worker(objects(sets=(*MINIMAL, "worker.replicaCount=3")))["spec"]["replicas"] == 3
    for values in (KEDA, HPA):
        assert "replicas" not in worker(objects(values))["spec"]


def test_keda_scales_on_the_queue_list() -> None:
    rendered = objects(KEDA)
    scaled = rendered[("ScaledObject", "imageiq-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "imageiq-worker"
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 20)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"] == {
        "address": "redis-master.redis.svc:6379",
        "listName": "imageiq-jobs-prod",  # config.jobsQueue
        "listLength": "2",
        "activationListLength": "0",
        "databaseIndex": "1",
        "enableTLS": "false",
    }
    assert trigger["authenticationRef"]["name"] == "imageiq-worker"
    auth = rendered[("TriggerAuthentication", "imageiq-worker")]["spec"]
    assert auth["secretTargetRef"] == [
        {"parameter": "password", "name": "imageiq-jobs-broker", "key": "password"}
    ]
    assert ("HorizontalPodAutoscaler", "imageiq-worker") not in rendered
    # The default queue name, and no TriggerAuthentication without a password Secret.
    plain = objects(
        sets=(
            *MINIMAL,
            "worker.autoscaling.keda.enabled=true",
            "worker.autoscaling.keda.redis.address=r:6379",
        )
    )
    (trigger,) = plain[("ScaledObject", "imageiq-worker")]["spec"]["triggers"]
    assert trigger["metadata"]["listName"] == "imageiq-jobs"
    assert "authenticationRef" not in trigger
    assert ("TriggerAuthentication", "imageiq-worker") not in plain


def test_the_hpa_alternative_reads_the_queue_depth() -> None:
    rendered = objects(HPA)
    hpa = rendered[("HorizontalPodAutoscaler", "imageiq-worker")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "imageiq-worker"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    (metric,) = hpa["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "name": "imageiq_jobs_queue_depth",
        "selector": {"matchLabels": {"job": "imageiq-worker"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "8"}
    assert not any(kind == "ScaledObject" for kind, _ in rendered)


def test_keda_and_the_hpa_are_exclusive() -> None:
    with pytest.raises(RuntimeError, match="are exclusive"):
        render(CHART, values_files=[KEDA], set_values=["worker.autoscaling.hpa.enabled=true"])
    with pytest.raises(RuntimeError, match=r"redis\.address"):
        render(CHART, set_values=[*MINIMAL, "worker.autoscaling.keda.enabled=true"])
    with pytest.raises(RuntimeError, match="values don't meet the specifications"):
        render(CHART, set_values=[*MINIMAL, "worker.autoscaling.hpa.minReplicas=0"])


def test_a_worker_needs_shared_state_and_a_broker() -> None:
    with pytest.raises(RuntimeError, match="shared database"):
        render(CHART, set_values=["worker.enabled=true"])
    with pytest.raises(RuntimeError, match="needs a broker"):
        render(CHART, set_values=["worker.enabled=true", "secrets.database.existingSecret=db"])
    # secrets.redis is a broker too.
    render(
        CHART,
        set_values=[
            "worker.enabled=true",
            "secrets.database.existingSecret=db",
            "secrets.redis.existingSecret=redis",
        ],
    )
    no_s3 = [m for m in MINIMAL if not m.startswith("config.s3Bucket")]
    with pytest.raises(RuntimeError, match="ReadWriteMany"):
        render(CHART, set_values=[*no_s3, "dataVolume.persistence.accessModes={ReadWriteOnce}"])
    with pytest.raises(RuntimeError, match=r"persistence\.enabled"):
        render(CHART, set_values=[*no_s3, "dataVolume.persistence.enabled=false"])
    with pytest.raises(RuntimeError, match="Additional property"):
        render(CHART, set_values=[*MINIMAL, "worker.replicas=2"])


def test_without_s3_the_workers_mount_the_data_claim() -> None:
    pod = worker(objects(HPA))["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "imageiq-data"
    with_s3 = worker(objects(KEDA))["spec"]["template"]["spec"]
    assert "emptyDir" in {v["name"]: v for v in with_s3["volumes"]}["data"]


def test_gpu_workers() -> None:
    """values-gpu.yaml's worker block: one GPU, the GPU nodes and their taint, cuda."""
    rendered = objects(CHART / "values-gpu.yaml", sets=MINIMAL)
    deployment = worker(rendered)
    main, pod = container(deployment), deployment["spec"]["template"]["spec"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert env_of(deployment)["IMAGEIQ_DEVICE"] == "cuda"
    assert "imageiq-gpu" in main["image"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # GPU workers beside CPU serving: their own image and device.
    beside = objects(HPA)
    assert "imageiq-gpu" in container(worker(beside))["image"]
    assert "imageiq-gpu" not in container(beside[("Deployment", "imageiq")])["image"]
    assert env_of(worker(beside))["IMAGEIQ_DEVICE"] == "cuda"
    assert "nvidia.com/gpu" not in str(beside[("Deployment", "imageiq")])


def test_the_workers_are_scraped_and_fenced() -> None:
    rendered = objects(KEDA)
    service = rendered[("Service", "imageiq-worker")]["spec"]
    assert service["clusterIP"] == "None"
    assert service["ports"] == [
        {"name": "worker-metrics", "port": 9400, "targetPort": "metrics", "protocol": "TCP"}
    ]
    labels = worker(rendered)["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    monitor = rendered[("ServiceMonitor", "imageiq")]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= (
        rendered[("Service", "imageiq-worker")]["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics", "worker-metrics"]
    policy = rendered[("NetworkPolicy", "imageiq-worker")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    server_policy = rendered[("NetworkPolicy", "imageiq")]["spec"]
    assert ingress["from"] == server_policy["ingress"][1]["from"]  # the API's scrapers
    egress = [[p["port"] for p in rule["ports"]] for rule in policy["egress"]]
    assert [53, 53] in egress and [5432] in egress and [6379] in egress and [443] in egress
    assert egress[-1] == [443]  # worker.webhookEgress
    # The server pods reach the broker too (they enqueue).
    assert [6379] in [[p["port"] for p in r["ports"]] for r in server_policy["egress"]]


def test_the_ingress_routes_the_jobs_api() -> None:
    ingress = objects(CHART / "ci/production-values.yaml")[("Ingress", "imageiq")]
    paths = {p["path"]: p["pathType"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/v1/jobs"] == "Prefix"


@pytest.mark.parametrize("values", [KEDA, HPA], ids=lambda p: p.name)
def test_worker_objects_are_valid(values: Path) -> None:
    assert validate(load_all(render(CHART, values_files=[values]))) == []


def test_a_broken_scaled_object_is_caught() -> None:
    rendered = load_all(render(CHART, values_files=[KEDA]))
    (scaled,) = [o for o in rendered if o["kind"] == "ScaledObject"]
    scaled["spec"]["minReplicas"] = 0  # the HPA's spelling, not KEDA's
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 2  # strings only
    problems = "\n".join(validate([scaled]))
    assert "minReplicas" in problems and "listLength" in problems


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_kubectl_overlays_ship_a_fixed_pool(overlay: str) -> None:
    built = load_all(kustomize(ROOT / "k8s/overlays" / overlay))
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in built}
    deployment = by_name[("Deployment", "imageiq-worker")]
    assert deployment["spec"]["replicas"] == 1
    main = container(deployment)
    assert main["args"] == ["python", "-m", "imageiq_cli", "worker"]
    env = env_of(deployment)
    assert env["IMAGEIQ_JOBS_BROKER_URL"]["secretKeyRef"]["name"] == "imageiq-jobs-broker"
    assert ("nvidia.com/gpu" in main["resources"]["limits"]) == (overlay == "gpu")
    assert ("Service", "imageiq-worker") in by_name
    assert ("NetworkPolicy", "imageiq-worker") in by_name
    assert not any(o["kind"] == "ScaledObject" for o in built)
    init = [c["name"] for c in deployment["spec"]["template"]["spec"]["initContainers"]]
    assert init == ["migrate", "bento-models"]  # migrations.mode initContainer, as the pods
    assert "Bulk-job workers" in (ROOT / "k8s/README.md").read_text()


def test_the_ingress_routes_the_v2_protocol_and_bentomls_client() -> None:
    """/v2 whole (it has no admin routes), BentoML's two API endpoints and their schema
    exactly; not the probes, /metrics or /docs.json."""
    ingress = objects(CHART / "ci/production-values.yaml")[("Ingress", "imageiq")]
    paths = {p["path"]: p["pathType"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/v2"] == "Prefix"
    assert paths["/classify"] == paths["/classify_batch"] == paths["/schema.json"] == "Exact"
    assert not {"/readyz", "/livez", "/metrics", "/docs.json", "/v1"} & set(paths)
