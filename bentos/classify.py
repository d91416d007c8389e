"""The classification pipeline behind /v1/classify and /v1/classify/batch, for one image:
the prediction cache, or decode, preprocess, the model's batching queue and postprocess;
then storing the image when asked, and handing its prediction to the recorder.

The service owns the HTTP side (parsing, auth, the response); this owns the work.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import anyio
import torch
from fastapi import Request
from PIL import Image as PILImage
from sqlalchemy.exc import SQLAlchemyError

from bentos.http import note
from bentos.inputs import Upload
from bentos.schemas import ClassifyParams, ImageOut, PredictionOut, ScoredLabelOut, TimingOut
from imageiq import catalog, errors
from imageiq.backends import Backends
from imageiq.cache import cache_key
from imageiq.db.engine import is_transient
from imageiq.images import DecodedImage
from imageiq.keys import Principal
from imageiq.logs import request_id_var
from imageiq.metrics import metrics
from imageiq.pool import ServedModel
from imageiq.records import ImageRecord, PredictionRecord, as_row
from imageiq.settings import Settings


@dataclass
class Outcome:
    prediction: PredictionOut | None = None
    error: errors.ImageIQError | None = None
    scored: list[ScoredLabelOut] | None = None  # every top-k label, before min_confidence


class Pipeline:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings, self.backends = settings, backends
        self._decode_slots = anyio.CapacityLimiter(
            settings.decode_concurrency or settings.cpu_count
        )

    async def classify_one(
        self,
        served: ServedModel,
        upload: Upload,
        params: ClassifyParams,
        started: float,
        request: Request,
        principal: Principal,
    ) -> Outcome:
        """One image: the cache, or decode, preprocess, the batch queue and postprocess;
        then storing it when asked, and its prediction record. Errors about the image come
        back in the outcome; anything else raises."""
        endpoint = request.url.path
        if upload.error is not None:
            count_rejected(endpoint, upload.error)
            return Outcome(error=upload.error)
        sha256 = (
            await anyio.to_thread.run_sync(_sha256, upload.data)
            if len(upload.data) > _HASH_ON_LOOP
            else _sha256(upload.data)
        )
        model = served.model
        key = cache_key(
            sha256=sha256, model_name=model.name, model_version=model.version, top_k=params.top_k
        )
        cache = self.backends.cache
        # The in-process cache answers on the event loop (a dict look-up): a thread hop costs
        # more than that; Redis is a network call, in a worker thread.
        if cache.backend == "off":
            hit = None
        elif cache.backend == "memory":
            hit = cache.get(key)
        else:
            hit = await anyio.to_thread.run_sync(cache.get, key)
        if hit is not None:
            outcome = self._from_cache(hit, upload, params, started)
        else:
            outcome = await self._infer(served, upload, sha256, params, request)
            if outcome.prediction is not None and cache.backend != "off":
                await anyio.to_thread.run_sync(
                    functools.partial(cache.put, key, _cacheable(outcome), sha256=sha256)
                )
        shaped = outcome.prediction
        if shaped is None:
            return outcome
        if params.store or self.settings.store_images == "always":
            shaped.image.id = sha256
            shaped.image.stored = await self._store(upload.data, shaped.image, principal)
        shaped.timing_ms.total = _ms(time.perf_counter() - started)
        labels = [p.model_dump() for p in outcome.scored or shaped.predictions]
        self.backends.recorder.record(
            PredictionRecord(
                image_sha256=sha256,
                model_name=model.name,
                model_version=model.version,
                label=labels[0]["label"],
                score=labels[0]["score"],
                top_k=labels,
                attributes={k: v.model_dump() for k, v in shaped.attributes.items()},
                latency_ms=shaped.timing_ms.total,
                cached=shaped.cached,
                api_key_id=principal.key_id,
                request_id=request_id_var.get(),
            )
        )
        return outcome

    def _from_cache(
        self, hit: dict[str, Any], upload: Upload, params: ClassifyParams, started: float
    ) -> Outcome:
        scored = [ScoredLabelOut(**p) for p in hit["predictions"]]
        shaped = PredictionOut(
            predictions=[p for p in scored if p.score >= params.min_confidence],
            attributes={k: ScoredLabelOut(**v) for k, v in hit["attributes"].items()},
            image=ImageOut(**hit["image"]),
            batch_size=0,
            cached=True,
            timing_ms=TimingOut(decode=0.0, preprocess=0.0, queue=0.0, inference=0.0, total=0.0),
        )
        return Outcome(prediction=shaped, scored=scored)

    async def _infer(
        self,
        served: ServedModel,
        upload: Upload,
        sha256: str,
        params: ClassifyParams,
        request: Request,
    ) -> Outcome:
        endpoint = request.url.path
        try:
            with served.batcher.announce():  # counts towards the batch sizes from now
                decoded, tensor, decode_s, preprocess_s = await anyio.to_thread.run_sync(
                    self._prepare, served, upload.data, limiter=self._decode_slots
                )
        except errors.ImageIQError as e:
            if e.status >= 500:
                raise
            count_rejected(endpoint, e)
            return Outcome(error=e)
        m = metrics()
        labels = (served.model.name, served.model.version)
        m.decode_seconds.labels(endpoint).observe(decode_s)
        m.preprocess_seconds.labels(*labels).observe(preprocess_s)
        queued = time.perf_counter()
        try:
            out = await served.batcher(tensor)
        except errors.Overloaded as e:
            return Outcome(error=e)
        done = time.perf_counter()
        batches = request.scope.setdefault("imageiq.batch_sizes", [])
        batches.append(out.batch_size)
        note(request.scope, batch_sizes=batches)
        classifier = served.runner.classifier
        prediction = classifier.postprocess(out.probabilities, top_k=params.top_k)[0]
        m.confidence.labels(*labels).observe(prediction.labels[0].score)
        scored = [ScoredLabelOut(label=s.label, score=s.score) for s in prediction.labels]
        shaped = PredictionOut(
            predictions=[s for s in scored if s.score >= params.min_confidence],
            attributes={
                head: ScoredLabelOut(label=s.label, score=s.score)
                for head, s in prediction.attributes.items()
            },
            image=ImageOut(
                sha256=sha256,
                width=decoded.width,
                height=decoded.height,
                format=decoded.format,
                bytes=len(upload.data),
            ),
            batch_size=out.batch_size,
            timing_ms=TimingOut(
                decode=_ms(decode_s),
                preprocess=_ms(preprocess_s),
                queue=_ms(max(0.0, done - queued - out.inference_s)),
                inference=_ms(out.inference_s),
                total=0.0,
            ),
        )
        m.postprocess_seconds.labels(*labels).observe(time.perf_counter() - done)
        return Outcome(prediction=shaped, scored=scored)

    async def _store(self, data: bytes, image: ImageOut, principal: Principal) -> bool:
        """Object first, then its row: True when both are done now. When the store or the
        database is away, the recorder takes over (and retries until both are done), and
        the answer is False: accepted, not yet stored."""
        backends = self.backends
        record = ImageRecord(
            sha256=image.sha256,
            storage_key=backends.store.key_for(image.sha256),
            content_type=PILImage.MIME.get(image.format, "application/octet-stream"),
            bytes=image.bytes,
            width=image.width,
            height=image.height,
            uploaded_by=principal.key_id,
            data=data,
        )

        def store_now() -> None:
            backends.store.put(record.sha256, data, content_type=record.content_type)
            record.data = None  # the object is there: only the row may be left to write
            catalog.insert_ignore(backends.engine, catalog.Image, [as_row(record)])
            backends.database.succeeded()

        try:
            await anyio.to_thread.run_sync(store_now)
            return True
        except (errors.StorageUnavailable, SQLAlchemyError) as e:
            # The store or the database is away (or refuses the row: the recorder sets it
            # aside): the recorder takes over; the answer says "not stored yet".
            if is_transient(e):
                backends.database.failed(e)
            backends.recorder.record(record)
            return False

    def check_store(self, params: ClassifyParams) -> None:
        if params.store and self.settings.store_images == "never":
            raise errors.InvalidParameter(
                "Storing images is turned off on this service (IMAGEIQ_STORE_IMAGES=never).",
                details={"field": "store"},
            )

    def _prepare(
        self, served: ServedModel, data: bytes
    ) -> tuple[DecodedImage, torch.Tensor, float, float]:
        classifier = served.runner.classifier
        started = time.perf_counter()
        decoded = classifier.decode(
            data, max_pixels=self.settings.max_image_pixels, draft=self.settings.jpeg_draft
        )
        done = time.perf_counter()
        tensor = classifier.prepare(decoded.image)
        return decoded, tensor, done - started, time.perf_counter() - done


# Bodies up to this size are hashed on the event loop (well under a millisecond).
_HASH_ON_LOOP = 256 * 1024


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count_rejected(endpoint: str, error: errors.ImageIQError) -> None:
    if error.status < 500:
        metrics().images_rejected.labels(endpoint, error.code).inc()


def _cacheable(outcome: Outcome) -> dict[str, Any]:
    """What the cache keeps of a prediction: every top-k label (min_confidence applies when
    it is served), the attributes and the facts about the image."""
    prediction = outcome.prediction
    assert prediction is not None
    return {
        "predictions": [p.model_dump() for p in outcome.scored or prediction.predictions],
        "attributes": {k: v.model_dump() for k, v in prediction.attributes.items()},
        "image": prediction.image.model_dump(
            include={"sha256", "width", "height", "format", "bytes"}
        ),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
