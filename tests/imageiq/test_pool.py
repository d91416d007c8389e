"""The model pool and its batching queues, in-process (no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from imageiq.batching import Batcher
from imageiq.errors import ModelNotFound, Overloaded
from imageiq.inference import Classifier
from imageiq.pool import ConfigWatcher, ModelPool
from imageiq.registry import RegisteredModel
from imageiq.runner import InferenceThread
from imageiq.settings import Settings
from tests.imageiq.images_helpers import photo

pytestmark = pytest.mark.slow


@pytest.fixture
def thread():
    worker = InferenceThread(threads=1)
    yield worker
    worker.close()


def ready(pool: ModelPool) -> ModelPool:
    for served in pool.models.values():
        assert served.runner.wait(timeout=120) == "ready", served.runner.error
    return pool


def test_requests_resolve_by_name_tag_alias_or_active(
    thread: InferenceThread, digits_model: RegisteredModel, species_model: RegisteredModel
) -> None:
    # the same version listed twice (pinned and via its name) is one model, not two
    settings = Settings(
        models=[digits_model.tag, species_model.tag, species_model.name],
        active_model=species_model.name,
    )
    pool = ready(ModelPool(settings, thread=thread))
    assert list(pool.models) == [digits_model.tag, species_model.tag]
    assert pool.ready and pool.active is pool.models[species_model.tag]
    assert pool.resolve(None).tag == species_model.tag
    assert pool.resolve(digits_model.tag).tag == digits_model.tag
    assert pool.resolve(digits_model.name).tag == digits_model.tag
    assert pool.resolve(f"{digits_model.name}:latest").tag == digits_model.tag
    for ref in ("nope", f"{digits_model.name}:0000", "species:zzz"):
        with pytest.raises(ModelNotFound):
            pool.resolve(ref)


def test_reload_swaps_the_set_and_keeps_serving_on_failure(
    thread: InferenceThread,
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    species_model: RegisteredModel,
) -> None:
    pool = ready(ModelPool(Settings(models=[digits_model.tag]), thread=thread))
    old = pool.models[digits_model.tag]

    async def scenario() -> None:
        assert await pool.reload(Settings(models=[species_model.tag, digits_model.tag]))
        assert pool.active is not None and pool.active.tag == species_model.tag
        assert pool.models[digits_model.tag] is old  # unchanged models are kept, not reloaded
        assert not await pool.reload(Settings(models=["imageiq-classifier:doesnotexist"]))
        assert pool.last_reload is not None and pool.last_reload["status"] == "failed"
        assert pool.active.tag == species_model.tag and pool.ready
        assert await pool.reload(Settings(models=[newer_model.tag]))
        assert list(pool.models) == [newer_model.tag]
        await asyncio.sleep(0.2)  # retired models close once idle

    asyncio.run(scenario())


def test_watcher_applies_only_reloadable_keys(
    tmp_path: Path,
    thread: InferenceThread,
    digits_model: RegisteredModel,
    species_model: RegisteredModel,
) -> None:
    config = tmp_path / "imageiq.yaml"
    config.write_text(f"models: [{digits_model.tag}]\n")
    pool = ready(ModelPool(Settings(config_file=config), thread=thread))
    watcher = ConfigWatcher(pool, load=lambda: Settings(config_file=config))

    async def scenario() -> None:
        assert not await watcher.check()  # unchanged file
        config.write_text(f"models: [{species_model.tag}]\nmax_latency_ms: 99\n")
        assert await watcher.check()
        assert pool.active is not None and pool.active.tag == species_model.tag
        assert pool.settings.max_latency_ms == 30_000  # needs a restart: not applied
        config.write_text("models: [Not A Tag]\n")
        assert not await watcher.check()  # invalid: logged and ignored
        assert pool.active.tag == species_model.tag

    asyncio.run(scenario())


def test_batcher_merges_concurrent_images_and_answers_each_its_row(
    thread: InferenceThread, digits_model: RegisteredModel
) -> None:
    settings = Settings(
        models=[digits_model.tag], max_batch_size=8, precision="fp32", channels_last=False
    )
    pool = ready(ModelPool(settings, thread=thread))
    served = pool.resolve(None)
    classifier = Classifier.load(digits_model.tag)
    images = [classifier.prepare(photo(seed=i)) for i in range(24)]
    expected = classifier.predict_proba(torch.stack(images))["label"]
    unbatched = Batcher(served.runner, max_batch_size=1, max_latency_ms=1000)

    async def scenario() -> None:
        outs = await asyncio.gather(*(served.batcher(im) for im in images))
        assert max(o.batch_size for o in outs) > 1
        assert all(o.batch_size <= 8 for o in outs)
        for row, out in enumerate(outs):
            assert torch.allclose(out.probabilities["label"][0], expected[row], atol=1e-5)
        single = await asyncio.gather(*(unbatched(im) for im in images[:4]))
        assert [o.batch_size for o in single] == [1, 1, 1, 1]

    asyncio.run(scenario())


def test_batcher_runs_a_lone_image_alone_after_a_burst_and_sheds_late_ones(
    thread: InferenceThread, digits_model: RegisteredModel
) -> None:
    settings = Settings(models=[digits_model.tag], max_batch_size=16)
    pool = ready(ModelPool(settings, thread=thread))
    served = pool.resolve(None)
    classifier = served.runner.classifier
    images = [classifier.prepare(photo(seed=i)) for i in range(64)]
    impatient = Batcher(served.runner, max_batch_size=16, max_latency_ms=0)

    async def scenario() -> None:
        burst = await asyncio.gather(*(served.batcher(im) for im in images))
        assert max(o.batch_size for o in burst) > 1
        # right after the burst, one client alone: its image runs alone
        for im in images[:3]:
            assert (await served.batcher(im)).batch_size == 1
        # a budget of 0 ms: every image has waited longer than that when its batch forms
        shed = await asyncio.gather(*(impatient(im) for im in images[:4]), return_exceptions=True)
        assert all(isinstance(r, Overloaded) for r in shed), shed
        impatient.close()
        with pytest.raises(Overloaded):
            await impatient(images[0])

    asyncio.run(scenario())


def test_batches_take_half_the_demand_so_one_runs_while_the_next_gathers(
    thread: InferenceThread, digits_model: RegisteredModel
) -> None:
    settings = Settings(models=[digits_model.tag], max_batch_size=16)
    pool = ready(ModelPool(settings, thread=thread))
    batcher = pool.resolve(None).batcher
    classifier = pool.resolve(None).runner.classifier
    images = [classifier.prepare(photo(seed=i)) for i in range(16)]

    async def scenario() -> None:
        assert batcher.demand == 0 and batcher.batch_limit() == 1
        with batcher.announce(), batcher.announce(), batcher.announce():
            assert batcher.demand == 3 and batcher.batch_limit() == 2
        # 16 images queued at once: two batches of 8 (half of 16), not one of 16
        outs = await asyncio.gather(*(batcher(im) for im in images))
        assert [o.batch_size for o in outs] == [8] * 16
        assert batcher.demand == 0
        with batcher.announce():
            assert (await batcher(images[0])).batch_size == 1

    asyncio.run(scenario())
