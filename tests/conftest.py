"""Shared fixtures: a model store inside the work tree, real data, trained models, a server.

The BentoML home is set before anything imports BentoML, so every test (and the server the
service tests start) reads and writes ``.bentoml-test/`` in the repository, never ~/bentoml.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# load-tests/ holds the helpers that start and measure local servers (local_server.py).
if str(ROOT / "load-tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "load-tests"))
# IMAGEIQ_TEST_BENTOML_HOME: another store, for a second pytest session running at the same time.
TEST_HOME = Path(os.environ.get("IMAGEIQ_TEST_BENTOML_HOME", ROOT / ".bentoml-test"))
shutil.rmtree(TEST_HOME, ignore_errors=True)
os.environ["BENTOML_HOME"] = str(TEST_HOME)
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
# Compiling takes a minute per model and server: the servers and pools tests start run
# eagerly; tests/imageiq/test_compile.py covers the compiled path.
os.environ.setdefault("IMAGEIQ_COMPILE", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from imageiq.demo import write_digits  # noqa: E402
from imageiq.registry import RegisteredModel  # noqa: E402
from tests.backends import Stack  # noqa: E402
from tests.oidc_issuer import Issuer  # noqa: E402
from training.train import add_arguments  # noqa: E402
from training.train import main as train_main  # noqa: E402

# Digits are neither mirror-symmetric nor framed loosely: the demo recipe trains without.
NO_AUGMENTATION = {"crop_scale": 1.0, "hflip": False, "color_jitter": 0.0}


def train_args(**overrides: object) -> Namespace:
    import argparse

    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--data", str(overrides.pop("data"))])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("digits")
    write_digits(dest)
    return dest


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny generated data: 3 classes (disc, square, bar) of 24 random 40x40 RGB images."""
    dest = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for cls in ("bar", "disc", "square"):
        (dest / cls).mkdir()
        for i in range(24):
            image = Image.new("RGB", (40, 40), tuple(int(c) for c in rng.integers(0, 80, 3)))
            draw = ImageDraw.Draw(image)
            x, y = (int(v) for v in rng.integers(4, 18, 2))
            fill = tuple(int(c) for c in rng.integers(150, 255, 3))
            if cls == "disc":
                draw.ellipse((x, y, x + 18, y + 18), fill=fill)
            elif cls == "square":
                draw.rectangle((x, y, x + 18, y + 18), fill=fill)
            else:
                draw.rectangle((x, 2, x + 5, 37), fill=fill)
            image.save(dest / cls / f"{cls}_{i:02d}.png")
    return dest


@pytest.fixture(scope="session")
def species_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-head data set as a CSV manifest: species (bar, disc, square) and two yes/no
    attributes drawn into each 40x40 image: `shiny` (a bright yellow body instead of a dull
    one) and `shadow` (a dark offset copy behind it). Some attribute cells are left empty
    (unknown), and one row points at a missing file."""
    import csv

    dest = tmp_path_factory.mktemp("species")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(180):
        species = ("bar", "disc", "square")[i % 3]
        shiny, shadow = bool(rng.integers(2)), bool(rng.integers(2))
        image = Image.new("RGB", (40, 40), tuple(int(c) for c in rng.integers(60, 120, 3)))
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(6, 16, 2))
        box = (x, y, x + 16, y + 16) if species != "bar" else (x, 3, x + 6, 36)
        if shadow:
            shifted = (box[0] + 4, box[1] + 4, box[2] + 4, box[3] + 4)
            draw.rectangle(shifted, fill=(10, 10, 10))
        fill = (250, 230, 40) if shiny else (140, 120, 110)
        (draw.ellipse if species == "disc" else draw.rectangle)(box, fill=fill)
        name = f"img_{i:03d}.png"
        image.save(dest / name)
        rows.append(
            {
                "path": name,
                "label": species,
                "shiny": "" if i % 17 == 0 else ("yes" if shiny else "no"),
                "shadow": "" if i % 19 == 0 else ("yes" if shadow else "no"),
            }
        )
    rows.append({"path": "missing.png", "label": "disc", "shiny": "no", "shadow": "no"})
    manifest = dest / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "shiny", "shadow"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="session")
def digits_model(digits_dir: Path) -> RegisteredModel:
    """A real digits model (resnet18, 16 px, 3 epochs: seconds on 2 cores)."""
    args = train_args(
        data=digits_dir, arch="resnet18", image_size=16, epochs=3, batch_size=64, **NO_AUGMENTATION
    )
    return train_main(args, max_image_pixels=50_000_000).model


@pytest.fixture(scope="session")
def newer_model(digits_dir: Path, digits_model: RegisteredModel) -> RegisteredModel:
    """A second, later version of the same model name (a different architecture). Not
    mobilenet_v3_small at 16 px: it stays at chance there, which training now refuses."""
    args = train_args(
        data=digits_dir, arch="baseline_cnn", image_size=16, epochs=3, **NO_AUGMENTATION
    )
    return train_main(args, max_image_pixels=50_000_000).model


@pytest.fixture(scope="session")
def species_model(tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    """An EfficientNet-family model with two attribute heads (shiny, shadow), registered
    under its own name. Untrained: the tests need its shape and its heads, not its skill."""
    import torch

    from imageiq.architectures import build_model
    from imageiq.preprocessing import PreprocessConfig
    from imageiq.registry import ModelCard, register_model

    torch.manual_seed(0)
    heads = {"shiny": ["no", "yes"], "shadow": ["no", "yes"]}
    net = build_model(arch="efficientnet_b0", num_classes=3, heads={k: 2 for k in heads})
    card = ModelCard(
        architecture="efficientnet_b0",
        labels=["bulbasaur", "charmander", "squirtle"],
        heads=heads,
        preprocessing=PreprocessConfig(resize_size=24, crop_size=24),
        metrics={"val_top1": 0.5},
    )
    return register_model(net, card, name="species")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running service, and an admin API key for it (``key``; ``get``/``post``/``delete``
    send it unless given ``auth=False`` or an Authorization header of their own)."""

    def __init__(
        self,
        url: str,
        model: RegisteredModel,
        log: Path,
        proc: subprocess.Popen[bytes],
        key: str,
        env: dict[str, str],
    ) -> None:
        self.url, self.model, self.log, self.proc, self.key = url, model, log, proc, key
        self.env = env  # the IMAGEIQ_ settings it runs with

    def request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        import httpx

        headers = dict(kwargs.pop("headers", None) or {})
        if auth and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {self.key}"
        kwargs.setdefault("timeout", 60)
        return httpx.request(method, f"{self.url}{path}", headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def worker_pids(self) -> list[int]:
        """The server's processes: ``bentoml serve`` and its descendants (its workers run in
        sessions of their own), for RSS measurements and restart checks."""
        from local_server import process_tree

        return list(process_tree(self.proc.pid))

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.worker_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


def prepare_database(env: dict[str, str]) -> str:
    """Migrate the database the server will use; returns a new admin key for it."""
    from imageiq.backends import open_database
    from imageiq.db.engine import upgrade
    from imageiq.keys import create_key
    from imageiq.settings import Settings

    settings = Settings(
        data_dir=Path(env["IMAGEIQ_DATA_DIR"]),
        database_url=env.get("IMAGEIQ_DATABASE_URL"),
        api_key_pepper=env.get("IMAGEIQ_API_KEY_PEPPER"),
    )
    engine = open_database(settings)
    try:
        upgrade(engine)
        key, _ = create_key(engine, name="tests", scopes=["admin"], pepper=settings.pepper)
    finally:
        engine.dispose()
    return key


def stop_session(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM the session a test started with ``start_new_session=True`` (the server and
    its workers), SIGKILL it if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def running_server(
    model: RegisteredModel,
    log: Path,
    env: dict[str, str],
    *,
    wait_ready: bool = True,
    own_home: bool = True,
    migrate: bool = True,
) -> Iterator[Server]:
    """``bentoml serve`` in its own session on a free port; stopped (the whole group we
    started) on exit.

    ``own_home``: a BentoML home of its own that links the test model store. Every
    ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` at start, so two
    servers sharing a home would wipe each other's metrics."""
    import httpx

    if own_home:
        home = log.parent / "bentoml-home"
        home.mkdir(exist_ok=True)
        if not (home / "models").exists():
            (home / "models").symlink_to(TEST_HOME / "models", target_is_directory=True)
        env = {"BENTOML_HOME": str(home), **env}
    # Unlimited unless a test sets a limit: the suites send hundreds of requests, and
    # hundreds of deliberately bad keys, all from 127.0.0.1.
    env = {
        "IMAGEIQ_DATA_DIR": str(log.parent / "data"),
        "IMAGEIQ_RATE_LIMIT_PER_MINUTE": "0",
        "IMAGEIQ_AUTH_FAILURES_BURST": "1000000",
        **env,
    }
    key = prepare_database(env) if migrate else ""
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "bentos.service:ImageClassifier",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        path = "/readyz" if wait_ready else "/livez"
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Server(url, model, log, proc, key, env)
    finally:
        stop_session(proc, timeout=30)


@pytest.fixture(scope="session")
def server(
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    species_model: RegisteredModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """The service with two models side by side: the digits ResNet pinned to its *older*
    version (a newer one exists) as the active model, and the EfficientNet species model
    with attribute heads. Small input limits, so the limit tests need no huge uploads."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        "IMAGEIQ_MODELS": f"{digits_model.tag},{species_model.name}",
        # The exact reference numbers, so parity with offline fp32 is checked to 1e-5.
        "IMAGEIQ_PRECISION": "fp32",
        "IMAGEIQ_CHANNELS_LAST": "false",
        "IMAGEIQ_MAX_IMAGE_BYTES": str(256 * 1024),
        "IMAGEIQ_MAX_IMAGE_PIXELS": str(1_000_000),
        "IMAGEIQ_MAX_BATCH_SIZE": "8",
        "IMAGEIQ_MAX_BATCH_IMAGES": "8",
        "IMAGEIQ_MAX_BATCH_REQUEST_BYTES": str(4 * 1024 * 1024),
        # Every request runs the model (the cache has tests of its own).
        "IMAGEIQ_CACHE_TTL_S": "0",
    }
    with running_server(digits_model, log, env) as running:
        yield running


# --- the service on real PostgreSQL, Redis and S3 (moto): tests/bentos, the CLI tests ---


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    running = Stack()
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def oidc_issuer() -> Iterator[Issuer]:
    """An OpenID Connect issuer on loopback that `served` trusts besides its API keys."""
    running = Issuer().start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def served(
    stack: Stack,
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    species_model: RegisteredModel,
    oidc_issuer: Issuer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("persist") / "server.log"
    env = {
        **stack.env(),
        "IMAGEIQ_MODELS": f"{digits_model.tag},{species_model.name}",
        # Tokens of the test issuer too (tests/bentos/test_oidc.py); keys work as before.
        # A subject's own pace (keys are unlimited here): 12 a minute, 5 at once.
        **oidc_issuer.env(),
        "IMAGEIQ_OIDC_RATE_LIMIT_PER_MINUTE": "12",
    }
    with running_server(digits_model, log, env) as server:
        yield server
