"""Lifecycle of the real service: settings-driven reload without a restart, a model that
fails to load, and graceful shutdown. Each test starts its own server."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from imageiq.architectures import build_model
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import WEIGHTS_FILE, ModelCard, RegisteredModel, register_model
from tests.bentos.test_service import assert_error, classify
from tests.conftest import Server, running_server
from tests.imageiq.images_helpers import encode, photo

pytestmark = pytest.mark.slow


def wait_for(check: Callable[[], bool], *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.2)


def models(server: Server) -> dict:
    return server.get("/v1/models").json()


def test_config_file_reload_switches_models_without_a_restart(
    tmp_path: Path,
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    species_model: RegisteredModel,
) -> None:
    config = tmp_path / "imageiq.yaml"
    config.write_text(f"models: [{digits_model.tag}, {newer_model.tag}]\n")
    env = {"IMAGEIQ_CONFIG_FILE": str(config), "IMAGEIQ_RELOAD_INTERVAL_S": "0.3"}
    with running_server(digits_model, tmp_path / "server.log", env) as server:
        files = {"image": ("a.png", encode(photo(), "PNG"))}
        pids = sorted(server.worker_pids())
        assert models(server)["active"] == digits_model.tag

        # 1. switch the active version
        config.write_text(
            f"models: [{digits_model.tag}, {newer_model.tag}]\nactive_model: {newer_model.tag}\n"
        )
        wait_for(lambda: models(server)["active"] == newer_model.tag)
        assert classify(server, files).json()["model"]["version"] == newer_model.version
        assert models(server)["last_reload"]["status"] == "ok"

        # 2. load a model that was not served, retire one that was
        config.write_text(f"models: [{species_model.name}, {newer_model.tag}]\n")
        wait_for(lambda: models(server)["active"] == species_model.tag)
        body = models(server)
        assert [m["name"] for m in body["models"]] == ["species", newer_model.name]
        assert body["ready"] is True
        assert server.get("/readyz").status_code == 200
        resp = classify(server, files, data={"model": digits_model.tag})
        assert_error(resp, 404, "model_not_found")

        # 3. a config naming a missing model, then an invalid one: the current set stays
        config.write_text("models: [imageiq-classifier:doesnotexist]\n")
        wait_for(lambda: (models(server)["last_reload"] or {}).get("status") == "failed")
        assert models(server)["active"] == species_model.tag
        config.write_text("models: [Not A Tag]\n")
        wait_for(lambda: "is invalid, keeping the current settings" in server.log.read_text())
        assert classify(server, files).json()["model"]["name"] == "species"

        assert server.proc.poll() is None
        assert sorted(server.worker_pids()) == pids  # no process was restarted
    log = server.log.read_text()
    assert "reload refused" in log and "imageiq-classifier:doesnotexist" in log


def test_a_model_that_fails_to_load_fails_readiness_not_liveness(
    tmp_path: Path, digits_model: RegisteredModel
) -> None:
    net = build_model(arch="resnet18", num_classes=2)
    card = ModelCard(
        architecture="resnet18",
        labels=["a", "b"],
        preprocessing=PreprocessConfig(resize_size=16, crop_size=16),
    )
    broken = register_model(net, card, name="broken")
    Path(broken.path, WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    env = {"IMAGEIQ_MODELS": f"{broken.tag},imageiq-classifier:doesnotexist,{digits_model.tag}"}
    with running_server(digits_model, tmp_path / "server.log", env, wait_ready=False) as server:
        wait_for(lambda: all(m["state"] != "loading" for m in models(server)["models"]))
        body = models(server)
        assert body["ready"] is False
        assert body["models"][0]["state"] == "failed" and body["models"][0]["error"]
        assert "imageiq-classifier:doesnotexist" in body["unavailable"]
        assert server.get("/livez").status_code == 200
        assert server.get("/readyz").status_code == 503
        files = {"image": ("a.png", encode(photo(), "PNG"))}
        error = assert_error(classify(server, files), 503, "model_not_ready")
        assert broken.tag in error["message"] and "failed" in error["message"]
        resp = classify(server, files, data={"model": digits_model.tag})
        assert resp.status_code == 200, resp.text
    log = server.log.read_text()
    assert f"model {broken.tag} failed to load" in log
    assert "model imageiq-classifier:doesnotexist cannot be served" in log


def test_graceful_shutdown_finishes_in_flight_requests(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_model(arch="resnet50", num_classes=4)
    card = ModelCard(
        architecture="resnet50",
        labels=["a", "b", "c", "d"],
        preprocessing=PreprocessConfig(resize_size=224, crop_size=224),
    )
    slow = register_model(net, card, name="slow-resnet50")
    env = {
        "IMAGEIQ_MODELS": slow.tag,
        "IMAGEIQ_MAX_BATCH_SIZE": "8",
        "IMAGEIQ_MAX_LATENCY_MS": "60000",
    }
    images = [("images", (f"{i}.png", encode(photo(seed=i), "PNG"))) for i in range(16)]
    with running_server(slow, tmp_path / "server.log", env) as server:

        def post(_: int) -> httpx.Response:
            return server.post("/v1/classify/batch", files=images, timeout=120)

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, i) for i in range(6)]
            # 96 ResNet-50 images take seconds on a small CPU; stop while they run.
            time.sleep(0.5)
            in_flight = sum(not f.done() for f in futures)
            os.killpg(server.proc.pid, signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert in_flight >= 2, "the requests finished before the signal: nothing was tested"
        assert [r.status_code for r in responses] == [200] * 6
        errors = [r["error"] for resp in responses for r in resp.json()["results"] if "error" in r]
        assert not errors and all(r.json()["succeeded"] == 16 for r in responses), errors[:3]
        server.proc.wait(timeout=60)
