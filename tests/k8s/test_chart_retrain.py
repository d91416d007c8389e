"""The retrain CronJob: off unless asked for, one run at a time, the server's image, settings,
Secrets and security contexts, GPUs when asked, the data it needs and nothing it does not,
and values that would break it refused at install time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.kube import load_all, render, validate
from tests.k8s.test_chart import CHART, Objects, container, objects

PRODUCTION = CHART / "ci/production-values.yaml"
# A fleet retrain may run for: PostgreSQL, images in S3.
SHARED = ("secrets.database.existingSecret=imageiq-db", "config.s3Bucket=imageiq-images")
ON = ("retrain.enabled=true",)


def cronjob(rendered: Objects, name: str = "imageiq-retrain") -> dict[str, Any]:
    return rendered[("CronJob", name)]


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def retrain_container(job: dict[str, Any]) -> dict[str, Any]:
    (main,) = pod_spec(job)["containers"]
    return main


def env(main: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in main.get("env", [])}


def test_off_by_default() -> None:
    assert yaml.safe_load((CHART / "values.yaml").read_text())["retrain"]["enabled"] is False
    for rendered in (objects(), objects(PRODUCTION, sets=("retrain.enabled=false",))):
        assert not [key for key in rendered if key[0] == "CronJob"]
        assert ("NetworkPolicy", "imageiq-retrain") not in rendered


def test_one_run_at_a_time_on_a_weekly_schedule(tmp_path: Path) -> None:
    spec = cronjob(objects(sets=(*SHARED, *ON)))["spec"]
    assert spec["schedule"] == "0 3 * * 0"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["suspend"] is False
    assert "timeZone" not in spec
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["failedJobsHistoryLimit"] >= 1 and spec["successfulJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 0 <= job["backoffLimit"] <= 2
    assert job["activeDeadlineSeconds"] == 21600
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    main = retrain_container(cronjob(objects(sets=(*SHARED, *ON))))
    assert main["args"] == [
        "python",
        "-m",
        "imageiq_cli",
        "retrain",
        "--rollout",
        "canary",
        "--skip-if-busy",
    ]
    # Every retrain.* value reaches the object.
    values = tmp_path / "retrain.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "retrain": {
                    "schedule": "@daily",
                    "timeZone": "Europe/Paris",
                    "suspend": True,
                    "args": ["--rollout", "activate", "--epochs", "3"],
                    "timeoutSeconds": 3600,
                    "backoffLimit": 0,
                    "startingDeadlineSeconds": 600,
                    "successfulJobsHistoryLimit": 1,
                    "failedJobsHistoryLimit": 5,
                }
            }
        )
    )
    custom = cronjob(objects(values, sets=(*SHARED, *ON)))
    spec, job = custom["spec"], custom["spec"]["jobTemplate"]["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["suspend"]) == ("@daily", "Europe/Paris", True)
    assert (spec["startingDeadlineSeconds"], spec["successfulJobsHistoryLimit"]) == (600, 1)
    assert spec["failedJobsHistoryLimit"] == 5
    assert (job["activeDeadlineSeconds"], job["backoffLimit"]) == (3600, 0)
    assert retrain_container(custom)["args"][4:] == ["--rollout", "activate", "--epochs", "3"]


def test_runs_as_the_server_does() -> None:
    """The same image, ConfigMap, Secret references, extraEnv, ServiceAccount and security
    contexts as the Deployment."""
    rendered = objects(PRODUCTION, sets=("extraEnv[0].name=OTEL_SERVICE_NAME,extraEnv[0].value=x",))
    deployment = rendered[("Deployment", "imageiq")]
    server, pod = container(deployment), deployment["spec"]["template"]["spec"]
    job = cronjob(rendered)
    main, spec = retrain_container(job), pod_spec(job)
    assert main["image"] == server["image"]
    assert main["imagePullPolicy"] == server["imagePullPolicy"]
    assert main["envFrom"] == server["envFrom"]
    assert main["securityContext"] == server["securityContext"]
    assert spec["securityContext"] == pod["securityContext"]
    assert spec["serviceAccountName"] == pod["serviceAccountName"]
    assert spec["automountServiceAccountToken"] is False
    # Every Secret reference and extra variable of the server, and no secret inlined.
    refs = {
        e["name"]: e for e in server["env"] if "valueFrom" in e or e["name"] == "OTEL_SERVICE_NAME"
    }
    assert {"IMAGEIQ_DATABASE_URL", "IMAGEIQ_REDIS_URL", "IMAGEIQ_API_KEY_PEPPER"} <= refs.keys()
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "OTEL_SERVICE_NAME"} <= refs.keys()
    for name, var in refs.items():
        assert var in main["env"], name
    secret = ("IMAGEIQ_DATABASE_URL", "IMAGEIQ_REDIS_URL", "IMAGEIQ_API_KEY_PEPPER")
    assert all("valueFrom" in e for e in main["env"] if e["name"] in secret)
    # Its own: the run's device (not config.device) and the code on PYTHONPATH, as its
    # working directory is the scratch volume.
    values = env(main)
    assert values["IMAGEIQ_DEVICE"] == "auto"
    assert values["PYTHONPATH"] == "/home/bentoml/bento/src"
    assert main["workingDir"] == "/tmp"
    # Not a server pod: no Service endpoint, no PDB, not the server's NetworkPolicy.
    labels = job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "retrain"
    for selector in (
        rendered[("Service", "imageiq")]["spec"]["selector"],
        rendered[("PodDisruptionBudget", "imageiq")]["spec"]["selector"]["matchLabels"],
        rendered[("NetworkPolicy", "imageiq")]["spec"]["podSelector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items()


def test_an_image_of_its_own() -> None:
    rendered = objects(
        sets=(
            *SHARED,
            *ON,
            "image.tag=0.1.0-v3",
            "retrain.image.repository=ghcr.io/imageiq/imageiq-gpu",
        )
    )
    assert retrain_container(cronjob(rendered))["image"] == "ghcr.io/imageiq/imageiq-gpu:0.1.0-v3"
    tagged = objects(sets=(*SHARED, *ON, "image.tag=0.1.0-v3", "retrain.image.tag=v3-train"))
    assert retrain_container(cronjob(tagged))["image"] == "ghcr.io/imageiq/imageiq:v3-train"


def test_writable_scratch_and_the_data_it_needs() -> None:
    """/tmp is an emptyDir of retrain.scratch.sizeLimit (BENTOML_HOME and the run directory
    are on it); the data volume's claim is mounted only when the images and the model
    repository are files on it (no S3)."""
    rendered = objects(sets=(*SHARED, *ON, "retrain.scratch.sizeLimit=50Gi"))
    job = cronjob(rendered)
    main, spec = retrain_container(job), pod_spec(job)
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts == {"scratch": "/tmp", "shm": "/dev/shm"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "50Gi"}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    home = rendered[("ConfigMap", "imageiq")]["data"]["BENTOML_HOME"]
    assert home.startswith("/tmp/")
    assert env(main)["IMAGEIQ_DATA_DIR"] == "/tmp/imageiq"
    # Without S3: the pods' claim, where their data dir is.
    local = cronjob(objects(sets=(SHARED[0], *ON)))
    main, spec = retrain_container(local), pod_spec(local)
    assert {"name": "data", "mountPath": "/var/lib/imageiq"} in main["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "imageiq-data"}} in spec[
        "volumes"
    ]
    assert "IMAGEIQ_DATA_DIR" not in env(main)  # the ConfigMap's: the mount path


def test_gpu_values_give_a_gpu_and_its_nodes() -> None:
    rendered = objects(CHART / "values-gpu.yaml", CHART / "ci/gpu-values.yaml")
    job = cronjob(rendered)
    main, spec = retrain_container(job), pod_spec(job)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["runtimeClassName"] == "nvidia"
    assert "imageiq-gpu" in main["image"]
    two = cronjob(objects(sets=(*SHARED, *ON, "retrain.gpu.enabled=true", "retrain.gpu.count=2")))
    assert retrain_container(two)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    # No GPU, and none of the server's scheduling, unless asked.
    cpu = cronjob(objects(CHART / "values-gpu.yaml", sets=(*SHARED, *ON)))
    assert "nvidia.com/gpu" not in str(retrain_container(cpu)["resources"])
    assert "nodeSelector" not in pod_spec(cpu) and "tolerations" not in pod_spec(cpu)
    # values-gpu.yaml shows the GPU example, commented out.
    assert "# retrain:" in (CHART / "values-gpu.yaml").read_text()


def test_the_network_policy_lets_the_runs_reach_what_the_pods_reach() -> None:
    rendered = objects(PRODUCTION)
    server = rendered[("NetworkPolicy", "imageiq")]["spec"]
    runs = rendered[("NetworkPolicy", "imageiq-retrain")]["spec"]
    labels = cronjob(rendered)["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert runs["podSelector"]["matchLabels"].items() <= labels.items()
    assert runs["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in runs  # nothing reaches a run
    extra = yaml.safe_load(PRODUCTION.read_text())["retrain"]["extraEgress"]
    assert runs["egress"] == server["egress"] + extra
    # Egress unrestricted: the runs' policy restricts ingress only, as the server's does.
    open_egress = objects(PRODUCTION, sets=("networkPolicy.egress.enabled=false",))
    assert "egress" not in open_egress[("NetworkPolicy", "imageiq-retrain")]["spec"]
    assert ("NetworkPolicy", "imageiq-retrain") not in objects(
        PRODUCTION, sets=("networkPolicy.enabled=false",)
    )


def test_rendered_objects_are_valid_kubernetes() -> None:
    text = render(
        CHART,
        set_values=[
            *SHARED,
            *ON,
            "retrain.timeZone=Europe/Paris",
            "retrain.gpu.enabled=true",
            "retrain.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0].key=gpu",
            "retrain.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
            "retrain.priorityClassName=batch-low",
        ],
    )
    assert validate(load_all(text)) == []
    # A field the chart's schema leaves opaque is still checked inside the CronJob.
    wrong = render(
        CHART, set_values=[*SHARED, *ON, "retrain.tolerations[0].tolerationSeconds=soon"]
    )
    problems = "\n".join(validate(load_all(wrong)))
    assert "CronJob/imageiq-retrain" in problems and "tolerationSeconds" in problems


def test_a_long_release_name_keeps_job_names_within_63_characters() -> None:
    long = "imageiq-" + "x" * 55
    rendered = objects(sets=(*SHARED, *ON, f"fullnameOverride={long}"))
    (name,) = [n for kind, n in rendered if kind == "CronJob"]
    assert name.endswith("-retrain") and len(name) <= 52  # + "-<8 digits>" for its Jobs


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((*ON,), "shared database"),
        ((SHARED[0], *ON, "dataVolume.persistence.enabled=false"), "stored images"),
        (
            (SHARED[0], *ON, "dataVolume.persistence.accessModes[0]=ReadWriteOnce"),
            "ReadWriteMany",
        ),
    ],
    ids=["embedded SQLite", "images in an emptyDir", "ReadWriteOnce claim"],
)
def test_values_it_cannot_work_with_are_refused(values: tuple[str, ...], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        render(CHART, set_values=list(values))


def test_what_it_can_work_with_renders() -> None:
    for values in (
        (*SHARED, *ON, "dataVolume.persistence.enabled=false"),  # S3: no volume needed
        (SHARED[0], *ON, "dataVolume.persistence.existingClaim=nfs-imageiq"),
    ):
        assert ("CronJob", "imageiq-retrain") in objects(sets=values)


@pytest.mark.parametrize(
    "wrong",
    [
        "retrain.schedul=@daily",
        "retrain.gpu.counts=2",
        "retrain.schedule=every sunday",
        "retrain.schedule=CRON_TZ=UTC 0 3 * * 0",
        "retrain.schedule=0 3 * *",
        "retrain.args[0]=1",
        "retrain.backoffLimit=10",
        "retrain.failedJobsHistoryLimit=0",
        "retrain.timeoutSeconds=10",
        "retrain.gpu.count=0",
        "retrain.scratch.sizeLimit=big",
        "retrain.suspend=maybe",
        "retrain.image.tag=:latest",
    ],
)
def test_the_schema_rejects_bad_values(wrong: str) -> None:
    with pytest.raises(RuntimeError, match=r"values don't meet the specifications|Additional"):
        render(CHART, set_values=[*SHARED, *ON, wrong])
