"""The bento `bentoml build` makes from bentofile.yaml, and the Dockerfile `bentoml containerize`
would build from it, agree with what the chart assumes about the image: its user, paths,
port, entrypoint and pinned packages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.k8s.kube import ROOT

pytestmark = pytest.mark.slow
VALUES = yaml.safe_load((ROOT / "helm/imageiq/values.yaml").read_text())


def _dockerfile(bento: Path) -> str:
    return (bento / "env/docker/Dockerfile").read_text()


def test_the_bento_holds_the_service_code_and_migrations_only(bento: Path) -> None:
    src = bento / "src"
    assert (src / "bentos/service.py").is_file()
    assert (src / "imageiq_cli/__main__.py").is_file()  # the migration Job's entry point
    assert (src / "imageiq/db/migrations/script.py.mako").is_file()
    assert list((src / "imageiq/db/migrations").rglob("0001*.py"))
    for absent in ("tests", ".venv", "tools", "helm", "k8s", ".data", ".imageiq", "docs"):
        assert not (src / absent).exists(), absent
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["services"][0]["models"], "the served model is declared in the bento"


def test_the_dockerfile_matches_the_chart(bento: Path) -> None:
    text = _dockerfile(bento)
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    uid = int(re.search(r"^ARG BENTO_USER_UID=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert re.search(r"^USER bentoml$", text, re.M)  # non-root
    assert (
        uid == VALUES["podSecurityContext"]["runAsUser"] == VALUES["podSecurityContext"]["fsGroup"]
    )
    path = re.search(r"^ARG BENTO_PATH=(\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    assert re.search(r"^WORKDIR \$BENTO_PATH$", text, re.M)
    assert VALUES["bento"]["sourceDir"] == f"{path}/src"
    # The image's BENTOML_HOME (/home/bentoml) is on the read-only root: the chart moves it
    # under the /tmp emptyDir, where `bentoml serve` may create its folders.
    assert VALUES["bento"]["home"].startswith("/tmp/")
    assert re.search(rf"^EXPOSE {VALUES['containerPort']}$", text, re.M)
    entry = re.search(r'^ENTRYPOINT \[ "(\S+)" \]$', text, re.M).group(1)  # type: ignore[union-attr]
    assert entry == f"{path}/env/docker/entrypoint.sh"
    script = (bento / "env/docker/entrypoint.sh").read_text()
    assert 'exec bentoml "$@" "$BENTO_PATH"' in script  # args `serve ...` -> bentoml serve
    assert 'exec "$@"' in script  # args `python -m imageiq_cli ...` run as given
    for name, value in [("IMAGEIQ_DATA_DIR", VALUES["dataVolume"]["mountPath"])]:
        assert (
            re.search(rf"^ARG {name}={re.escape(value)}$", text, re.M) or f"{name}={value}" in text
        )


def test_the_image_installs_the_pinned_runtime(bento: Path) -> None:
    requirements = (bento / "env/python/requirements.txt").read_text().splitlines()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "bentoml==1.4.39"):
        assert pin in requirements, pin
    assert "requirements.txt" in _dockerfile(bento)
