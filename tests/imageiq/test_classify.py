"""The classification core without a server: a real model pool, SQLite, the local object
store, the in-process cache and the recorder, called as a bulk worker or a route would."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imageiq import errors
from imageiq.backends import Backends, open_database
from imageiq.classify import INLINE_BYTES, Classification, ImageResult
from imageiq.db.engine import upgrade
from imageiq.db.schema import Image, Prediction
from imageiq.inference import Classifier
from imageiq.keys import Principal
from imageiq.pool import ModelPool, ServedModel
from imageiq.registry import RegisteredModel
from imageiq.runner import InferenceThread
from imageiq.settings import Settings
from tests.backends import wait_for
from tests.imageiq.images_helpers import encode, photo, predict_offline

pytestmark = pytest.mark.slow

PRINCIPAL = Principal("key-1", "tests", frozenset({"classify"}))


@dataclass
class Core:
    settings: Settings
    backends: Backends
    pool: ModelPool
    core: Classification

    @property
    def served(self) -> ServedModel:
        return self.pool.resolve(None)

    def classify(self, images: list[bytes], **options: object) -> list[ImageResult]:
        options = {"top_k": 3, "principal": PRINCIPAL, **options}
        return asyncio.run(self.core.classify(self.served, images, **options))  # type: ignore[arg-type]

    def count(self, table: type) -> int:
        with Session(self.backends.engine) as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)


def open_core(model: RegisteredModel, data_dir: Path, **settings: object) -> Iterator[Core]:
    config = Settings(
        models=[model.tag],
        data_dir=data_dir,
        precision="fp32",
        channels_last=False,
        compile=False,
        max_image_pixels=1_000_000,
        record_flush_interval_s=0.05,
        **settings,  # type: ignore[arg-type]
    )
    engine = open_database(config)
    upgrade(engine)
    engine.dispose()
    # As many threads as this one has: torch.set_num_threads on the inference thread sets
    # the default of every thread started later, which dynamo's guards compare with the
    # thread that compiled (tests/imageiq/test_compile.py would recompile).
    thread = InferenceThread(threads=torch.get_num_threads())
    backends = Backends.open(config)
    backends.start()
    pool = ModelPool(config, thread=thread)
    for served in pool.models.values():
        assert served.runner.wait(timeout=120) == "ready", served.runner.error
    try:
        yield Core(config, backends, pool, Classification(settings=config, backends=backends))
    finally:
        for served in pool.models.values():
            served.batcher.close()
        thread.close()
        backends.close()


@pytest.fixture
def core(digits_model: RegisteredModel, tmp_path: Path) -> Iterator[Core]:
    yield from open_core(digits_model, tmp_path / "data")


def jpeg(seed: int) -> bytes:
    return encode(photo(seed=seed), "JPEG", quality=90)


def test_each_image_gets_its_own_result_in_order(core: Core) -> None:
    images = [jpeg(0), b"not an image", jpeg(1), b"\x89PNG\r\n\x1a\n broken", jpeg(2)]
    results = core.classify(images)
    assert len(results) == 5
    assert [r.error.code if r.error else None for r in results] == [
        None,
        "unsupported_image_format",
        None,
        "corrupt_image",
        None,
    ]
    classifier = Classifier.load(core.served.tag)
    for i in (0, 2, 4):
        classified = results[i].classified
        assert classified is not None and not classified.cached
        assert classified.image.format == "JPEG" and classified.image.bytes == len(images[i])
        assert (classified.image.width, classified.image.height) == (80, 60)
        assert 1 <= classified.batch_size <= 3
        scores = [s.score for s in classified.labels]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        # The same numbers as the offline reference, image by image.
        (offline,) = predict_offline(
            classifier, [classifier.decode(images[i], max_pixels=10**6).image], top_k=3
        )
        assert [s.label for s in classified.labels] == [s.label for s in offline.labels]
        for got, want in zip(classified.labels, offline.labels, strict=True):
            assert got.score == pytest.approx(want.score, abs=1e-5)
        assert classified.timing_ms.total >= classified.timing_ms.inference > 0
    assert core.served.in_flight == 0  # the call held the model, and let it go


def test_a_repeated_image_comes_from_the_cache_and_min_confidence_filters(core: Core) -> None:
    (first,) = core.classify([jpeg(5)])
    (again,) = core.classify([jpeg(5)], min_confidence=0.0)
    assert first.classified is not None and again.classified is not None
    assert again.classified.cached and again.classified.batch_size == 0
    assert again.classified.labels == first.classified.labels
    assert again.classified.image == first.classified.image
    threshold = first.classified.scored[0].score  # only the best label passes
    (filtered,) = core.classify([jpeg(5)], min_confidence=threshold)
    assert filtered.classified is not None
    assert filtered.classified.labels == first.classified.scored[:1]
    assert filtered.classified.scored == first.classified.scored


def test_predictions_are_recorded_and_stored_images_written(core: Core) -> None:
    images = [jpeg(10), jpeg(11)]
    results = core.classify(images, store=True)
    for result in results:
        assert result.classified is not None and result.classified.stored is True
        sha = result.classified.image.sha256
        assert core.backends.store.get(core.backends.store.key_for(sha)) in images
    wait_for(lambda: core.count(Prediction) == 2, what="two prediction rows")
    assert core.count(Image) == 2
    with Session(core.backends.engine) as session:
        rows = session.scalars(select(Prediction)).all()
    for row in rows:
        assert row.api_key_id == PRINCIPAL.key_id and row.model_version == core.served.model.version
        assert len(row.top_k) == 3 and row.label == row.top_k[0]["label"]
    (plain,) = core.classify([jpeg(12)])
    assert plain.classified is not None and plain.classified.stored is None


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 101}, "top_k"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"min_confidence": -0.1}, "min_confidence"),
    ],
)
def test_bad_options_are_refused_before_any_work(
    core: Core, options: dict[str, object], field: str
) -> None:
    with pytest.raises(errors.InvalidParameter) as refused:
        core.classify([jpeg(0)], **options)
    assert refused.value.status == 422 and refused.value.details == {"field": field}
    assert core.count(Prediction) == 0


def test_store_is_refused_where_storing_is_off(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    for core in open_core(digits_model, tmp_path / "data", store_images="never"):
        with pytest.raises(errors.InvalidParameter) as refused:
            core.classify([jpeg(0)], store=True)
        assert refused.value.details == {"field": "store"}


def test_an_empty_image_and_pixels_over_the_limit_are_errors_of_their_own(core: Core) -> None:
    huge = encode(photo(width=1200, height=1000), "PNG")  # 1.2 MP > the 1 MP limit
    empty, too_big, fine = core.classify([b"", huge, jpeg(3)])
    assert empty.error is not None and empty.error.code == "empty_image"
    assert too_big.error is not None and too_big.error.code == "image_too_large"
    assert fine.classified is not None


def test_a_lone_small_image_is_prepared_inline_with_the_same_answer(core: Core) -> None:
    """One small image is decoded on the calling thread, several in worker threads: the
    answer is the same, and an image whose header says more pixels than the inline bound
    (a few KB of PNG) still gets the service's own limit, not the inline bound."""
    small = jpeg(20)
    assert len(small) <= INLINE_BYTES
    (alone,) = core.classify([small])
    in_batch, _ = core.classify([small, jpeg(21)])
    assert alone.classified is not None and in_batch.classified is not None
    assert alone.classified.scored == in_batch.classified.scored
    flat = encode(PILImage.new("RGB", (800, 800), (200, 30, 30)), "PNG")  # 0.64 MP, ~2 KB
    assert len(flat) <= INLINE_BYTES
    (big_but_allowed,) = core.classify([flat])
    assert big_but_allowed.classified is not None
    assert big_but_allowed.classified.image.width == 800
    bomb = encode(PILImage.new("RGB", (1100, 1000), (0, 0, 0)), "PNG")  # 1.1 MP > the 1 MP limit
    (refused,) = core.classify([bomb])
    assert refused.error is not None and refused.error.code == "image_too_large"
    assert refused.error.details["max_pixels"] == 1_000_000
