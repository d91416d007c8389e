"""The CPU and GPU bentos (bentofile.yaml, bentofile.gpu.yaml) and the images that
`bentoml containerize` would build from them.

There is no Docker engine here, so the tests stop one step short of it: each bentofile is built
with `bentoml build` into a BentoML home of its own, then BentoML's own
``construct_containerfile`` (what containerize runs) lays out the build context and the
Dockerfile it would hand to Docker. The tests read those: what goes into the image (code,
migrations, models, nothing else), its base, user, working directory, ports, entrypoint,
environment and pinned packages. docs/containers.md describes the same facts for people.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from imageiq.registry import RegisteredModel
from tests.conftest import ROOT, TEST_HOME

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on 3.10
    import tomli as tomllib

BENTOFILES = {"cpu": ROOT / "bentofile.yaml", "gpu": ROOT / "bentofile.gpu.yaml"}
BASE_IMAGES = {"cpu": "python:3.11-slim", "gpu": "nvidia/cuda:13.0.2-base-ubuntu24.04"}
# What the chart and docs/containers.md rely on.
UID_GID = 1034
BENTO_PATH = "/home/bentoml/bento"
ENTRYPOINT = f"{BENTO_PATH}/env/docker/entrypoint.sh"
PORT = "3000"
IMAGE_ENV = {
    "BENTOML_DO_NOT_TRACK": "True",
    "IMAGEIQ_LOG_FORMAT": "json",
    "IMAGEIQ_DATA_DIR": "/var/lib/imageiq",
    # BentoML's; read-only in a pod, which sets BENTOML_HOME=/tmp/bentoml (docs/containers.md).
    "BENTOML_HOME": "/home/bentoml/",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "BENTO_PATH": BENTO_PATH,
}
PINNED = ("torch==2.14.1", "torchvision==0.29.1", "bentoml==1.4.39")
# Only the GPU bento may set these, and only for its image build (Ubuntu's pip, apt).
GPU_BUILD_ENVS = {"PIP_BREAK_SYSTEM_PACKAGES", "DEBIAN_FRONTEND"}
# Top-level entries of the build context, and names that must appear nowhere in it.
CONTEXT_TOP = {"bento.yaml", "README.md", "apis", "env", "src", "models", "hf-models"}
NEVER = {
    "tests",
    ".venv",
    ".git",
    ".tools",
    "tools",
    "node_modules",
    ".data",
    ".imageiq",
    ".bentoml",
    ".bentoml-test",
    "runs",
    "helm",
    "k8s",
    "docs",
    "load-tests",
    "monitoring",
    "scripts",
    ".ci",
    "__pycache__",
    ".env",
}
CODE = ("bentos", "imageiq", "imageiq_cli", "training")
MIGRATIONS = "imageiq/db/migrations"


def _bentofile(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BENTOFILES[kind].read_text())
    return data


def _requirement_key(text: str) -> tuple[str, tuple[str, ...], str, str]:
    req = Requirement(text)
    specifiers = ",".join(sorted(str(s) for s in req.specifier))
    return canonicalize_name(req.name), tuple(sorted(req.extras)), specifiers, str(req.marker)


def _bentoml(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", **env}
    return subprocess.run(
        [sys.executable, "-m", "bentoml", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


# --- the bentofiles themselves (no build) -------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BENTOFILES))
def test_python_packages_are_the_runtime_dependencies_of_pyproject(kind: str) -> None:
    """Same names, extras, pins and ranges, in pyproject's order: the image installs what the
    project is tested with (bentofile and pyproject are edited together)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = [_requirement_key(r) for r in project["dependencies"]]
    packages = _bentofile(kind)["python"]["packages"]
    assert [_requirement_key(p) for p in packages] == expected
    for pin in PINNED:
        assert pin in packages, pin


def test_gpu_bento_is_the_cpu_bento_on_a_cuda_base() -> None:
    cpu, gpu = _bentofile("cpu"), _bentofile("gpu")
    for key in ("service", "include", "exclude", "python"):
        assert gpu[key] == cpu[key], key
    assert gpu["envs"][: len(cpu["envs"])] == cpu["envs"]
    assert {e["name"] for e in gpu["envs"][len(cpu["envs"]) :]} == GPU_BUILD_ENVS
    assert (cpu["name"], gpu["name"]) == ("imageiq", "imageiq-gpu")
    assert gpu["docker"]["base_image"] == BASE_IMAGES["gpu"]
    assert gpu["docker"]["python_version"] == cpu["docker"]["python_version"] == "3.11"


@pytest.mark.parametrize("kind", sorted(BENTOFILES))
def test_bentoml_accepts_every_option(kind: str) -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig

    config = BentoBuildConfig.from_file(str(BENTOFILES[kind])).with_defaults()
    assert config.service == "bentos.service:ImageClassifier"
    # cuda_version would fall back to a bento v1 image with a second, older CUDA (12.8 at most
    # in BentoML 1.4.39): the torch wheels bring CUDA 13 themselves.
    assert config.docker.cuda_version is None


@pytest.mark.parametrize(
    ("kind", "change", "error"),
    [
        ("cpu", ("docker:\n", "dockr:\n"), "dockr"),
        ("cpu", ("docker:\n", 'docker:\n  cuda_version: "13.0"\n'), "Unsupported cuda version"),
        ("gpu", ("  python_version: ", "  python_versio: "), "python_versio"),
    ],
    ids=["typo-top-level-key", "unsupported-cuda-version", "typo-docker-option"],
)
def test_a_broken_bentofile_fails_the_build(
    kind: str, change: tuple[str, str], error: str, tmp_path: Path
) -> None:
    """BentoML refuses unknown keys and unsupported values: a typo fails the build, loudly,
    instead of building an image without the option."""
    text = BENTOFILES[kind].read_text()
    old, new = change
    assert text.count(old) == 1
    broken = tmp_path / "bentofile.yaml"
    broken.write_text(text.replace(old, new))
    done = _bentoml("build", "-f", str(broken), home=tmp_path / "home")
    assert done.returncode != 0, done.stdout
    assert error in done.stdout + done.stderr
    assert not list((tmp_path / "home").glob("bentos/*/*")), "no bento was stored"


# --- built bentos and their container build context ----------------------------------------


@dataclass(frozen=True)
class Built:
    kind: str
    tag: str
    bento: Path  # in the store
    info: dict[str, Any]  # bento.yaml
    context: frozenset[str]  # files of the containerize build context, relative
    dockerfile: str
    requirements: list[str]  # env/python/requirements.txt: what the image installs
    entrypoint: str
    model_files: frozenset[str]  # the digits model's files, as the store has them


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuations joined, comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.splitlines():
        text = line.strip()
        if not pending and (not text or text.startswith("#")):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, args = (pending + text).partition(" ")
        found.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return found


def _expand(value: str, scope: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: scope.get(m[1] or m[2], ""), value)


def _image_env(instructions: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """The image's ENV (as `docker inspect` would show those this Dockerfile sets) and the
    ARG/ENV scope of the build, with $VAR references resolved."""
    scope: dict[str, str] = {}
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword not in ("ARG", "ENV"):
            continue
        name, _, raw = args.partition("=")
        value = _expand(shlex.split(raw)[0] if raw else "", scope)
        if keyword == "ARG" and not raw:
            value = scope.get(name, "")
        scope[name] = value
        if keyword == "ENV":
            env[name] = value
    return env, scope


def _build(kind: str, model: RegisteredModel, home: Path) -> Built:
    """`bentoml build` of one bentofile, serving ``model``, in the BentoML home ``home`` (whose
    model store is the test store); then the context containerize would hand to Docker."""
    from bentoml._internal.bento.bento import Bento
    from bentoml._internal.container import construct_containerfile

    (home / "models").symlink_to(TEST_HOME / "models", target_is_directory=True)
    done = _bentoml(
        "build", "-f", str(BENTOFILES[kind]), "--output", "tag", home=home, IMAGEIQ_MODELS=model.tag
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    path = home / "bentos" / tag.replace(":", "/")
    model_dir = TEST_HOME / "models" / model.name / model.version
    # Containerize copies the models from the model store (the test store, in this process).
    with construct_containerfile(Bento.from_path(str(path))) as (context, dockerfile):
        root = Path(context)
        return Built(
            kind=kind,
            tag=tag,
            bento=path,
            info=yaml.safe_load((path / "bento.yaml").read_text()),
            context=frozenset(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()),
            dockerfile=Path(dockerfile).read_text(),
            requirements=(root / "env/python/requirements.txt").read_text().splitlines(),
            entrypoint=(root / "env/docker/entrypoint.sh").read_text(),
            model_files=frozenset(
                str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if not p.is_dir()
            ),
        )


@pytest.fixture(scope="module")
def bentos(
    digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Built]:
    """``bentos(kind)``: the bento of that bentofile, serving the digits model, built on first
    use and shared by the module's tests (one build per bentofile)."""
    built: dict[str, Built] = {}

    def get(kind: str) -> Built:
        if kind not in built:
            home = tmp_path_factory.mktemp(f"bentoml-home-{kind}")
            built[kind] = _build(kind, digits_model, home)
        return built[kind]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BENTOFILES))
def test_the_image_gets_the_service_code_and_every_migration(
    bentos: Callable[[str], Built], kind: str
) -> None:
    built = bentos(kind)
    src = {p.removeprefix("src/") for p in built.context if p.startswith("src/")}
    assert "bentos/service.py" in src
    # The migration Job runs `python -m imageiq_cli db upgrade`.
    assert "imageiq_cli/__main__.py" in src
    assert {f"{MIGRATIONS}/script.py.mako", f"{MIGRATIONS}/env.py"} <= src
    assert any(re.fullmatch(rf"{MIGRATIONS}/versions/\d+_\w+\.py", p) for p in src)
    on_disk = {
        str(p.relative_to(ROOT))
        for package in CODE
        for p in (ROOT / package).rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (p.suffix == ".py" or p.is_relative_to(ROOT / MIGRATIONS))
    }
    assert on_disk <= src, sorted(on_disk - src)
    # The web app as `make web` built it (`make test` builds it first): every file of it.
    webui = {str(p.relative_to(ROOT)) for p in (ROOT / "bentos/webui").rglob("*") if p.is_file()}
    assert "bentos/webui/index.html" in webui
    assert webui <= src, sorted(webui - src)
    # Nothing else: code, migrations, the app, pyproject.toml and BentoML's record of the
    # build options.
    others = {
        p
        for p in src - webui
        if not (p.split("/")[0] in CODE and (p.endswith(".py") or p.startswith(MIGRATIONS)))
    }
    assert others == {"bentofile.yaml", "pyproject.toml"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BENTOFILES))
def test_nothing_big_or_secret_goes_into_the_image(
    bentos: Callable[[str], Built], kind: str
) -> None:
    built = bentos(kind)
    assert {p.split("/")[0] for p in built.context} <= CONTEXT_TOP
    for path in built.context:
        parts = set(path.split("/"))
        assert not parts & NEVER, path
        assert not path.endswith((".pyc", ".env", ".pem", ".key")), path
    sizes = sum((built.bento / p).stat().st_size for p in built.context if p.startswith("src/"))
    assert sizes < 2 * 1024 * 1024  # code only: weights travel as models


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BENTOFILES))
def test_the_image_gets_the_served_model(
    bentos: Callable[[str], Built], kind: str, digits_model: RegisteredModel
) -> None:
    built = bentos(kind)
    (service,) = built.info["services"]
    assert [m["tag"] for m in service["models"]] == [str(digits_model.tag)]
    in_image = {
        p.removeprefix(f"models/{digits_model.name}/{digits_model.version}/")
        for p in built.context
        if p.startswith(f"models/{digits_model.name}/{digits_model.version}/")
    }
    assert "model.yaml" in in_image
    assert in_image == built.model_files


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BENTOFILES))
def test_the_dockerfile_builds_the_documented_image(
    bentos: Callable[[str], Built], kind: str
) -> None:
    built = bentos(kind)
    instructions = _instructions(built.dockerfile)
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in instructions:
        by_keyword.setdefault(keyword, []).append(args)
    env, scope = _image_env(instructions)
    runs = " ; ".join(by_keyword["RUN"])

    # One stage, on the documented base.
    (base,) = by_keyword["FROM"]
    assert base.split()[0] == BASE_IMAGES[built.kind]
    assert "uv venv --python 3.11 /app/.venv" in runs
    # A non-root user with a fixed uid/gid (the chart's runAsUser, runAsGroup, fsGroup).
    assert (scope["BENTO_USER"], scope["BENTO_USER_UID"], scope["BENTO_USER_GID"]) == (
        "bentoml",
        str(UID_GID),
        str(UID_GID),
    )
    assert "useradd -m -u $BENTO_USER_UID -g $BENTO_USER_GID" in runs
    assert by_keyword["USER"][-1] == "bentoml"
    assert [_expand(w, scope) for w in by_keyword["WORKDIR"]] == [BENTO_PATH]
    # The environment the chart and the docs assume; every bentofile env is set.
    for name, value in IMAGE_ENV.items():
        assert env.get(name) == value, name
    for item in _bentofile(built.kind)["envs"]:
        assert env.get(item["name"]) == str(item["value"]), item["name"]
    # Port, entrypoint, and no CMD: the entrypoint alone runs `bentoml serve $BENTO_PATH`.
    assert PORT in " ".join(by_keyword["EXPOSE"]).split()
    assert [json.loads(e) for e in by_keyword["ENTRYPOINT"]] == [[ENTRYPOINT]]
    assert "CMD" not in by_keyword
    assert 'set -- bentoml serve "$@" "$BENTO_PATH"' in built.entrypoint
    assert 'exec "$@"' in built.entrypoint  # `python -m imageiq_cli ...` runs as given
    # The packages from the bento's requirements, then the bento itself (code and models): a
    # new model version rebuilds the layers from there on, not the packages.
    install = next(
        i
        for i, (keyword, args) in enumerate(instructions)
        if keyword == "RUN" and "pip install -r $BENTO_PATH/env/python/requirements.txt" in args
    )
    assert instructions.index(("COPY", "--chown=bentoml:bentoml . ./")) > install


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BENTOFILES))
def test_the_image_installs_the_locked_runtime(bentos: Callable[[str], Built], kind: str) -> None:
    built = bentos(kind)
    """The build locked pyproject's ranges to exact versions; the pins are the project's."""
    locked = {}
    for line in built.requirements:
        if "==" in line and not line.startswith(("-", "#")):
            req = Requirement(line)
            locked[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    for pin in PINNED:
        assert pin in built.requirements, pin
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, name
        assert req.specifier.contains(locked[name], prereleases=True), (name, locked[name])


@pytest.mark.slow
def test_the_gpu_base_has_the_cuda_the_torch_wheels_bring(bentos: Callable[[str], Built]) -> None:
    """torch's Linux wheels carry their CUDA user-space libraries (nvidia-* wheels): the base
    image's CUDA major version (and so its driver requirement) must be the same."""
    built = bentos("gpu")
    cuda_major = BASE_IMAGES["gpu"].split(":")[1].split(".")[0]
    assert any(line.startswith(f"nvidia-cudnn-cu{cuda_major}==") for line in built.requirements)
    assert any(line.startswith(f"cuda-toolkit=={cuda_major}.") for line in built.requirements)
    runs = " ; ".join(args for keyword, args in _instructions(built.dockerfile) if keyword == "RUN")
    # Ubuntu's pip, so that BentoML's `pip install uv` step has a pip to run.
    assert "python3-pip" in runs
    assert "pip install uv" in runs
