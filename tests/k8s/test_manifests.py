"""k8s/ (kustomize base and overlays) is generated from the chart and stays identical to it:
`kubectl kustomize` of each overlay gives exactly what `helm template` renders with the
overlay's values, every object is valid Kubernetes, and the plain YAML passes yamllint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.kube import ROOT, kustomize, load_all, tool, validate

sys.path.insert(0, str(ROOT / "scripts"))
import render_k8s

KUSTOMIZATIONS = ["base", *(f"overlays/{name}" for name in render_k8s.OVERLAYS)]


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM": tool("helm")}
    script = root / "scripts/render_k8s.py"
    return subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, env=env
    )


def test_committed_manifests_are_what_the_chart_renders() -> None:
    done = _check(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", list(render_k8s.OVERLAYS))
def test_each_overlay_builds_to_the_chart_rendering(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELM", tool("helm"))
    want = render_k8s.render(render_k8s.BASE_VALUES + render_k8s.OVERLAYS[overlay])
    built = load_all(kustomize(ROOT / "k8s/overlays" / overlay))
    got = {(o["kind"], o["metadata"]["name"]): o for o in built}
    assert got.keys() == want.keys()
    for key, obj in want.items():
        assert got[key] == obj, key


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomize_output_is_valid_kubernetes(directory: str) -> None:
    built = load_all(kustomize(ROOT / "k8s" / directory))
    assert {o["kind"] for o in built} >= {"Deployment", "Service", "ConfigMap"}
    assert validate(built) == []


def _api(obj: dict[str, Any]) -> bool:
    """Not one of the bulk-job workers' objects (the overlays' second Deployment and Service)."""
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "worker"


def test_overlays_differ_where_they_should() -> None:
    gpu = {o["kind"]: o for o in load_all(kustomize(ROOT / "k8s/overlays/gpu")) if _api(o)}
    pod = gpu["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["ConfigMap"]["data"]["IMAGEIQ_DEVICE"] == "cuda"
    cpu = {o["kind"]: o for o in load_all(kustomize(ROOT / "k8s/overlays/cpu")) if _api(o)}
    assert "replicas" not in cpu["Deployment"]["spec"]  # the HPA owns it
    assert "nvidia.com/gpu" not in str(cpu["Deployment"])


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_the_retrain_cronjob_ships_suspended(directory: str) -> None:
    """`kubectl apply -k` creates the CronJob but starts no run until someone unsuspends it
    (k8s/README.md, "Scheduled retraining")."""
    built = {o["kind"]: o for o in load_all(kustomize(ROOT / "k8s" / directory)) if _api(o)}
    spec = built["CronJob"]["spec"]
    assert spec["suspend"] is True
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    assert main["args"][:4] == ["python", "-m", "imageiq_cli", "retrain"]
    assert (
        main["envFrom"]
        == built["Deployment"]["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    )
    limits = main["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (directory == "overlays/gpu")
    # The base keeps its images on the data claim, which the runs mount; the overlays use S3.
    mounts = {m["name"] for m in main["volumeMounts"]}
    assert ("data" in mounts) == (directory == "base")
    assert "Scheduled retraining" in (ROOT / "k8s/README.md").read_text()


def test_a_hand_edit_or_a_stale_overlay_is_caught(tmp_path: Path) -> None:
    for part in ("helm", "k8s", "scripts"):
        shutil.copytree(ROOT / part, tmp_path / part)
    assert _check(tmp_path).returncode == 0
    # A hand edit of a generated file.
    deployment = tmp_path / "k8s/base/deployment.yaml"
    deployment.write_text(deployment.read_text().replace("/readyz", "/ready"))
    done = _check(tmp_path)
    assert done.returncode == 1 and "k8s/base/deployment.yaml" in done.stdout
    shutil.copy(ROOT / "k8s/base/deployment.yaml", deployment)
    # Chart values changed without regenerating.
    values = tmp_path / "k8s/values/gpu.yaml"
    values.write_text(values.read_text().replace('"32"', '"48"'))
    done = _check(tmp_path)
    assert done.returncode == 1 and "overlays/gpu" in done.stdout


def test_yamllint_passes_and_catches_broken_yaml(tmp_path: Path) -> None:
    yamllint = [sys.executable, "-m", "yamllint", "--strict", "-c", str(ROOT / ".yamllint.yaml")]
    done = subprocess.run([*yamllint, "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("image:\n  tag: v1\n  tag: v2\nreplicas: 1\n")
    done = subprocess.run([*yamllint, str(broken)], capture_output=True, text=True)
    assert done.returncode != 0 and "duplication" in done.stdout
