"""The pod, run here as the chart describes it, so chart and app cannot drift apart.

The test renders the chart, reads the Deployment (init container, command, args, env,
ports, probes) and the ServiceMonitor, and runs the built bento the way the image's
entrypoint would (`bentoml <args> $BENTO_PATH`): the migration first, then the server, with
the ConfigMap's and Secret references' environment and the volume mounts mapped to temporary
directories. It then checks that each probe path answers on the port the probe names, that
the metrics endpoint the ServiceMonitor scrapes serves ImageIQ's metrics, and that the
`helm test` script passes against it. The only changes: 127.0.0.1 instead of 0.0.0.0 and a
free port instead of 3000 (set through the chart's containerPort value).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imageiq.registry import RegisteredModel
from tests.conftest import TEST_HOME, _free_port, stop_session
from tests.k8s.kube import ROOT, load_all, render

pytestmark = pytest.mark.slow
CHART = ROOT / "helm/imageiq"
IMAGE_BENTO = "/home/bentoml/bento"  # $BENTO_PATH in the image bentoml containerize makes


class Pod:
    """The chart's Deployment for one port, and how to run its containers locally."""

    def __init__(self, rendered: list[dict[str, Any]], volumes: Path, secrets: dict[str, str]):
        by_kind = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
        self.deployment = by_kind[("Deployment", "imageiq")]
        self.config = by_kind[("ConfigMap", "imageiq")]["data"]
        self.monitor = by_kind.get(("ServiceMonitor", "imageiq"))
        self.test_pod = next(o for o in rendered if o["kind"] == "Pod")
        self.service = by_kind[("Service", "imageiq")]
        spec = self.deployment["spec"]["template"]["spec"]
        (self.main,) = spec["containers"]
        self.init = spec.get("initContainers", [])
        self.secrets = secrets
        # Every volume mount becomes a directory of its own here.
        self.mounts = {}
        for mount in self.main["volumeMounts"]:
            local = volumes / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            self.mounts[mount["mountPath"]] = str(local)

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        (port,) = [p for p in self.main["ports"] if p["name"] == name_or_number]
        return int(port["containerPort"])

    def _local(self, value: str) -> str:
        for path, local in self.mounts.items():
            if value == path or value.startswith(path + "/"):
                return local + value[len(path) :]
        return value

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] == "imageiq"
            env.update(self.config)
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self.secrets[f"{ref['name']}/{ref['key']}"]
        return {name: self._local(value) for name, value in env.items()}

    def command(self, container: dict[str, Any], bento: Path) -> list[str]:
        """The bento image's entrypoint: `serve ...` runs `bentoml serve ... $BENTO_PATH`;
        anything else runs as given."""
        args = [a.replace("0.0.0.0", "127.0.0.1") for a in container["args"]]
        if args[0] == "serve":
            return [sys.executable, "-m", "bentoml", *args, str(bento)]
        if args[0] == "python":
            return [sys.executable, *args[1:]]
        return args

    def workdir(self, container: dict[str, Any], bento: Path) -> Path:
        """The image's WORKDIR is the bento; a `workingDir` must be its source directory."""
        if "workingDir" not in container:
            return bento
        assert container["workingDir"] == f"{IMAGE_BENTO}/src", container["workingDir"]
        return bento / "src"


@pytest.fixture(scope="module")
def pod_and_url(
    bento: Path, digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pod, str]]:
    tmp = tmp_path_factory.mktemp("pod")
    port = _free_port()
    values = tmp / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "containerPort": port,
                "metrics": {"port": _free_port()},
                "config": {"models": [str(digits_model.tag)], "logFormat": "text"},
                "serviceMonitor": {"enabled": True},
                "helmTest": {"apiKeySecret": {"name": "imageiq-test-key", "key": "api-key"}},
            }
        )
    )
    # The Secrets the chart reads by default: the API-key pepper.
    pepper = {"imageiq-pepper/pepper": secrets.token_hex(16)}
    pod = Pod(load_all(render(CHART, values_files=[values])), tmp / "volumes", secrets=pepper)
    # `bentoml containerize` copies the bento's models into it (/home/bentoml/bento/models).
    if not (bento / "models").exists():
        (bento / "models").symlink_to(TEST_HOME / "models", target_is_directory=True)
    # BENTOML_HOME comes from the chart (a mounted path); nothing else of ours leaks in.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "IMAGEIQ_"))}
    base_env["BENTOML_DO_NOT_TRACK"] = "True"
    # Init containers first, as the kubelet runs them: the SQLite migration.
    assert [c["name"] for c in pod.init] == ["migrate"]
    for init in pod.init:
        done = subprocess.run(
            pod.command(init, bento),
            cwd=pod.workdir(init, bento),
            env={**base_env, **pod.env(init)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pod.command(pod.main, bento),
            cwd=pod.workdir(pod.main, bento),
            env={**base_env, **pod.env(pod.main)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield pod, f"http://127.0.0.1:{port}"
    finally:
        stop_session(proc, timeout=60)
        print(log.read_text()[-2000:])


def probe_failures(pod: Pod, host: str = "127.0.0.1") -> list[str]:
    """Each probe of the Deployment, as the kubelet would send it once the pod has started:
    what did not answer 200."""
    failures = []
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = pod.main[kind]["httpGet"]
        url = f"http://{host}:{pod.port(get['port'])}{get['path']}"
        try:
            status = httpx.get(url, timeout=pod.main[kind]["timeoutSeconds"]).status_code
        except httpx.HTTPError as e:
            failures.append(f"{kind} {url}: {e!r}")
            continue
        if status != 200:
            failures.append(f"{kind} {url}: HTTP {status}")
    return failures


def wait_started(pod: Pod) -> None:
    """The startup probe's budget: periodSeconds x failureThreshold."""
    startup = pod.main["startupProbe"]
    get = startup["httpGet"]
    url = f"http://127.0.0.1:{pod.port(get['port'])}{get['path']}"
    deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=startup["timeoutSeconds"]).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the startup probe {url} never passed")


def test_probes_answer_where_the_chart_says(pod_and_url: tuple[Pod, str]) -> None:
    pod, _ = pod_and_url
    wait_started(pod)
    assert probe_failures(pod) == []


def test_a_wrong_probe_path_is_caught(pod_and_url: tuple[Pod, str]) -> None:
    pod, _ = pod_and_url
    wait_started(pod)
    pod.main["readinessProbe"]["httpGet"]["path"] = "/ready"
    try:
        (failure,) = probe_failures(pod)
    finally:
        pod.main["readinessProbe"]["httpGet"]["path"] = "/readyz"
    assert "readinessProbe" in failure and "404" in failure


def test_the_servicemonitor_scrapes_imageiq_metrics(pod_and_url: tuple[Pod, str]) -> None:
    pod, _ = pod_and_url
    wait_started(pod)
    assert pod.monitor is not None
    (endpoint,) = pod.monitor["spec"]["endpoints"]
    # The Service the monitor selects exposes that port name, and it is the container's.
    service_ports = {p["name"]: p for p in pod.service["spec"]["ports"]}
    assert service_ports[endpoint["port"]]["targetPort"] == endpoint["port"]
    metrics = httpx.get(f"http://127.0.0.1:{pod.port(endpoint['port'])}{endpoint['path']}")
    assert metrics.status_code == 200
    # The autoscaler's metric and the readiness gauge the alerts use.
    for name in ("imageiq_requests_in_flight", "imageiq_model_ready"):
        assert name in metrics.text, name
    # On a port of its own: the API port (the Ingress's) does not serve them.
    assert endpoint["port"] == "metrics"
    api = httpx.get(f"http://127.0.0.1:{pod.port('http')}{endpoint['path']}")
    assert api.status_code == 404 and "imageiq_" not in api.text


def test_helm_test_script_passes(pod_and_url: tuple[Pod, str], bento: Path, tmp_path: Path) -> None:
    """The `helm test` pod's own script, with a key made as NOTES.txt says."""
    pod, url = pod_and_url
    wait_started(pod)
    env = {**os.environ, **pod.env(pod.main)}
    saved = tmp_path / "key"
    made = subprocess.run(
        [sys.executable, "-m", "imageiq_cli", "keys", "create", "--name", "helm-test"]  # noqa: RUF005
        + ["--scopes", "classify", "--save", str(saved)],
        cwd=bento / "src",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    key = saved.read_text().strip()
    (check,) = pod.test_pod["spec"]["containers"]
    test_env = {e["name"]: e.get("value") for e in check["env"]}
    assert test_env["IMAGEIQ_URL"].startswith("http://imageiq:")  # the Service, in a cluster
    done = subprocess.run(
        pod.command(check, bento),
        env={**os.environ, "IMAGEIQ_URL": url, "IMAGEIQ_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")


def test_the_retrain_cronjob_reaches_imageiq_retrain(bento: Path, tmp_path: Path) -> None:
    """The CronJob's container as the image would run it: its args from its working
    directory (the scratch volume, here an empty directory) with its PYTHONPATH (the bento's
    source) reach `imageiq retrain`, and the chart's default options parse."""
    rendered = load_all(
        render(
            CHART,
            set_values=[
                "retrain.enabled=true",
                "secrets.database.existingSecret=imageiq-db",
                "config.s3Bucket=imageiq-images",
            ],
        )
    )
    (cronjob,) = [o for o in rendered if o["kind"] == "CronJob"]
    (main,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in main["env"] if "value" in e}
    assert env["PYTHONPATH"] == f"{IMAGE_BENTO}/src"
    scratch = tmp_path / "scratch"  # the emptyDir at main["workingDir"]
    scratch.mkdir()
    assert main["workingDir"] == "/tmp"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "IMAGEIQ_"))}
    run_env = {**base_env, "PYTHONPATH": str(bento / "src"), "BENTOML_HOME": str(scratch / "b")}
    args = main["args"]
    assert args[:4] == ["python", "-m", "imageiq_cli", "retrain"]
    helped = subprocess.run(
        [sys.executable, *args[1:], "--help"],
        cwd=scratch,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "--rollout" in helped.stdout
    parse = (
        "import sys; from imageiq_cli.main import build_parser; "
        "a = build_parser().parse_args(sys.argv[1:]); print(a.func.__name__)"
    )
    parsed = subprocess.run(
        [sys.executable, "-c", parse, *args[3:]],
        cwd=scratch,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.strip() == "cmd_retrain"
