"""The model process (IMAGEIQ_MODEL_PROCESS) without a server: a real model process
(``python -m imageiq.model_process``) on a Unix socket, and the classification core of a
front calling it through shared memory, as a BentoML worker does."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import torch

from imageiq import errors
from imageiq.backends import Backends, open_database
from imageiq.classify import Classification, ImageResult
from imageiq.db.engine import upgrade
from imageiq.inference import Classifier
from imageiq.keys import Principal
from imageiq.model_client import ModelProcessClient
from imageiq.pool import ModelPool
from imageiq.registry import RegisteredModel
from imageiq.settings import Settings
from tests.conftest import ROOT
from tests.imageiq.images_helpers import encode, photo, predict_offline

pytestmark = pytest.mark.slow

PRINCIPAL = Principal("key-1", "tests", frozenset({"classify"}))


def start_model_process(socket_path: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "imageiq.model_process", "--socket", str(socket_path)],
            cwd=ROOT,
            env={**os.environ, "IMAGEIQ_TORCH_THREADS": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=30)


async def until(check: Callable[[], bool], *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def front(
    models: list[str], data_dir: Path, socket_path: Path, *, slots: int
) -> tuple[Settings, ModelProcessClient, ModelPool, Backends, Classification]:
    settings = Settings(
        models=models,
        data_dir=data_dir,
        precision="fp32",
        channels_last=False,
        compile=False,
        max_image_pixels=1_000_000,
        model_process=True,
        model_socket=socket_path,
        model_slots=slots,
        cache_ttl_s=0,
    )
    engine = open_database(settings)
    upgrade(engine)
    engine.dispose()
    client = ModelProcessClient(socket_path=socket_path, slots=slots)
    pool = ModelPool(settings, remote=client)
    backends = Backends.open(settings)
    return settings, client, pool, backends, Classification(settings=settings, backends=backends)


def jpeg(seed: int) -> bytes:
    return encode(photo(seed=seed), "JPEG", quality=90)


def run_front(
    models: list[str],
    tmp_path: Path,
    scenario: Callable[[ModelPool, Classification, Path], Awaitable[None]],
    *,
    slots: int = 8,
    ready: bool = True,
    **model_process_env: str,
) -> str:
    """Runs ``scenario`` on a front connected to a model process (started with
    ``model_process_env``), once its models are ready unless ``ready`` is False; returns the
    model process's log."""
    socket_path = tmp_path / "run" / "model.sock"
    log = tmp_path / "model-process.log"
    proc = start_model_process(socket_path, log, **model_process_env)

    async def main() -> None:
        _, client, pool, backends, core = front(models, tmp_path / "data", socket_path, slots=slots)
        backends.start()
        client.start()
        try:
            if ready:
                await until(lambda: pool.ready)
            await scenario(pool, core, socket_path)
        finally:
            await client.close()
            backends.close()

    try:
        asyncio.run(main())
    finally:
        stop(proc)
    return log.read_text()


def assert_matches_offline(results: list[ImageResult], images: list[bytes], tag: str) -> None:
    classifier = Classifier.load(tag)
    for image, result in zip(images, results, strict=True):
        assert result.classified is not None, result.error
        (offline,) = predict_offline(
            classifier, [classifier.decode(image, max_pixels=10**6).image], top_k=3
        )
        got = result.classified.labels
        assert [s.label for s in got] == [s.label for s in offline.labels]
        for g, want in zip(got, offline.labels, strict=True):
            assert g.score == pytest.approx(want.score, abs=1e-5)


def test_a_front_classifies_through_the_model_process_as_in_process(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    """The same numbers as the offline reference, per-image errors in place; with 2 slots
    for 6 images, some travel on the socket instead, with the same answers."""
    images = [jpeg(i) for i in range(6)]

    async def scenario(pool: ModelPool, core: Classification, socket_path: Path) -> None:
        assert socket_path.stat().st_mode & 0o777 == 0o600  # only this user may connect
        served = pool.resolve(None)
        mixed = [images[0], b"not an image", images[1]]
        results = await core.classify(served, mixed, top_k=3, principal=PRINCIPAL)
        assert results[1].error is not None and results[1].error.code == "unsupported_image_format"
        assert_matches_offline([results[0], results[2]], [images[0], images[1]], served.tag)
        for _ in range(3):  # concurrent calls: batches of several images, slots reused
            calls = [core.classify(served, [im], top_k=3, principal=PRINCIPAL) for im in images] + [
                core.classify(served, images, top_k=3, principal=PRINCIPAL)
            ]
            answers = await asyncio.gather(*calls)
            singles = [r for answer in answers[:-1] for r in answer]
            assert_matches_offline(singles, images, served.tag)
            assert_matches_offline(answers[-1], images, served.tag)
        sizes = {r.classified.batch_size for r in answers[-1] if r.classified}
        assert max(sizes) > 1  # the model process batched them

    run_front([digits_model.tag], tmp_path, scenario, slots=2)


def test_a_restarted_model_process_is_reconnected_and_the_models_loaded_again(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    """Killed: the front's models read "loading" (503 model_not_ready for requests); a new
    model process on the same socket: ready again, classifying as before."""
    log = tmp_path / "second.log"

    async def scenario(pool: ModelPool, core: Classification, socket_path: Path) -> None:
        served = pool.resolve(None)
        (before,) = await core.classify(served, [jpeg(1)], top_k=3, principal=PRINCIPAL)
        victim = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-f", f"imageiq.model_process --socket {socket_path}"],
                capture_output=True,
                text=True,
            ).stdout.split()
        ]
        assert len(victim) == 1
        os.kill(victim[0], signal.SIGKILL)
        await until(lambda: not pool.ready, timeout=10)
        assert served.state == "loading"
        with pytest.raises(errors.ModelNotReady):
            pool.resolve(None)
        second = start_model_process(socket_path, log)
        try:
            await until(lambda: pool.ready)
            (after,) = await core.classify(served, [jpeg(1)], top_k=3, principal=PRINCIPAL)
            assert before.classified is not None and after.classified is not None
            assert after.classified.labels == before.classified.labels
        finally:
            stop(second)

    run_front([digits_model.tag], tmp_path, scenario)
    assert "listening" in log.read_text()


def test_a_reload_loads_the_new_version_and_unloads_the_retired_one(
    digits_model: RegisteredModel, newer_model: RegisteredModel, tmp_path: Path
) -> None:
    async def scenario(pool: ModelPool, core: Classification, _: Path) -> None:
        assert await pool.reload(pool.settings.model_copy(update={"models": [newer_model.tag]}))
        served = pool.resolve(None)
        assert served.tag == newer_model.tag and served.state == "ready"
        (result,) = await core.classify(served, [jpeg(3)], top_k=3, principal=PRINCIPAL)
        assert_matches_offline([result], [jpeg(3)], newer_model.tag)
        await asyncio.sleep(0.5)  # the retired version's release reaches the model process

    log = run_front([digits_model.tag], tmp_path, scenario)
    assert f"unloaded {digits_model.tag}" in log


def test_a_model_the_model_process_cannot_load_fails_with_the_reason(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    """A model process told to use a GPU that is not there: the front's model is failed,
    with the model process's reason, in /v1/models and in the 503 a request gets."""

    async def scenario(pool: ModelPool, _core: Classification, _: Path) -> None:
        served = next(iter(pool.models.values()))
        assert await served.runner.loaded() == "failed"
        assert "no CUDA GPU is visible" in (served.runner.error or "")
        assert not pool.ready
        with pytest.raises(errors.ModelNotReady, match="no CUDA GPU"):
            pool.resolve(None)
        # A batch for a model the process does not hold: each image refused, none lost.
        client = served.runner._client  # type: ignore[attr-defined]
        out = await client.run(served.tag, [torch.zeros((3, 16, 16), dtype=torch.uint8)])
        assert len(out) == 1 and isinstance(out[0], errors.ModelNotReady)

    run_front([digits_model.tag], tmp_path, scenario, ready=False, IMAGEIQ_DEVICE="cuda")


def test_a_malformed_batch_is_answered_with_an_error_not_left_waiting(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    """A batch naming a slot the front does not have: the model process answers each image
    with an error (the front's request fails instead of waiting forever) and keeps the
    connection and the model."""
    from multiprocessing import shared_memory

    from imageiq.inference import InferenceOptions
    from imageiq.model_wire import Image, encode, receive

    socket_path = tmp_path / "model.sock"
    proc = start_model_process(socket_path, tmp_path / "model-process.log")
    memory = shared_memory.SharedMemory(create=True, size=3 * 16 * 16)

    async def main() -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(socket_path))
                break
            except OSError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        writer.write(encode(("hello", memory.name, 3 * 16 * 16, 1)))
        writer.write(encode(("load", 1, digits_model.tag, InferenceOptions(), 1)))
        assert (await receive(reader))[:3] == ("loaded", 1, "ready")
        bad = [Image((3, 16, 16), slot=7), Image((3, 16, 16), slot=0)]
        writer.write(encode(("run", 2, digits_model.tag, bad)))
        kind, rid, answers = await asyncio.wait_for(receive(reader), 30)
        assert (kind, rid) == ("ran", 2)
        assert [a.error_code for a in answers] == ["failed", "failed"]
        writer.write(encode(("run", 3, digits_model.tag, [Image((3, 16, 16), slot=0)])))
        kind, rid, answers = await asyncio.wait_for(receive(reader), 30)
        assert rid == 3 and answers[0].probabilities is not None  # still serving
        writer.close()

    try:
        asyncio.run(main())
    finally:
        stop(proc)
        memory.close()
        memory.unlink()
