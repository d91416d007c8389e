"""The classification core: images of one served model in, a result per image out.

Every caller that classifies (the HTTP routes, and the bulk workers, the explain endpoint
and the v2 protocol to come) calls :meth:`Classification.classify`; nothing here knows
about HTTP. For each image, in this order:

1. its sha256, and the prediction cache (a hit skips 2-4);
2. decode and prepare (colour, resize, crop) in a worker thread, at most
   ``decode_concurrency`` at once, announced to the model's batching queue from the start
   so the batch sizes count it;
3. the model's batching queue (:class:`imageiq.batching.Batcher`), which runs it in a batch
   on the inference thread;
4. postprocess: top-k, attributes, then ``min_confidence``; the result goes to the cache;
5. storing the image when asked (object, then its row; the recorder takes over when either
   is away) and handing the prediction record to the recorder.

A bad image (not an image, too many pixels, corrupt; or shed by the queue with 503
``overloaded``) is an error in its own result, so one image never fails the others;
anything else (a bug, the model failing) raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import torch
from PIL import Image as PILImage
from sqlalchemy.exc import SQLAlchemyError

from imageiq import catalog, errors, tombstones
from imageiq.admission import Budget, pixel_budget
from imageiq.backends import Backends
from imageiq.cache import cache_key
from imageiq.db.engine import is_transient
from imageiq.inference import ModelIO, ScoredLabel
from imageiq.keys import Principal
from imageiq.logs import client_request_id_var, request_id_var
from imageiq.metrics import metrics
from imageiq.pool import ServedModel
from imageiq.records import ImageRecord, PredictionRecord, as_row
from imageiq.settings import Settings

# Bodies up to this size are hashed on the calling (event loop) thread: well under a
# millisecond, less than the hop to a worker thread costs.
HASH_INLINE_BYTES = 256 * 1024
# A call with one image of at most this many bytes and pixels decodes and prepares it on
# the calling (event loop) thread. The hop to a worker thread and back cost more than the
# work: with the forward pass skipped at 16 clients, 4.9-5.2 server core-ms per 224x224
# JPEG request with the hop, 3.8-3.9 without (decode and prepare themselves: 0.73 ms), and
# 25% more requests/s (docs/performance.md). Bounded so the loop is never held long: a
# 0.1 MP PNG takes about 4 ms. Larger images, and the images of a batch request (decoded in
# parallel), go to worker threads.
INLINE_BYTES = 64 * 1024
INLINE_PIXELS = 100_000
# The most labels one answer may list (the API's schema and the settings use it too).
MAX_TOP_K = 100


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    width: int  # as displayed (after EXIF orientation)
    height: int
    format: str  # as decoded: JPEG, PNG, ...
    bytes: int


@dataclass(frozen=True)
class Timings:
    """Where one image's time went, in milliseconds (all 0 but ``total`` on a cache hit)."""

    decode: float
    preprocess: float
    queue: float
    inference: float
    total: float


@dataclass(frozen=True)
class Classified:
    """One image's answer."""

    labels: list[ScoredLabel]  # the top-k labels scoring at least min_confidence, best first
    scored: list[ScoredLabel]  # every top-k label (what is cached and recorded)
    attributes: dict[str, ScoredLabel]  # each attribute head's best value
    image: ImageFacts
    batch_size: int  # images in the batch it ran in; 0 when it came from the cache
    cached: bool
    timing_ms: Timings
    # Every head's whole distribution (head -> one probability per value, in the card's
    # order), when the caller asked for it (``full=True``: the v2 protocol's outputs).
    probabilities: dict[str, list[float]] | None = None
    # None: not asked to store it; True: stored now; False: accepted, the recorder stores it
    # as soon as the object store and the database are back.
    stored: bool | None = None


@dataclass(frozen=True)
class ImageResult:
    """Exactly one of ``classified`` and ``error``."""

    classified: Classified | None = None
    error: errors.ImageIQError | None = None


@dataclass(frozen=True)
class Pixels:
    """An image its client already prepared: uint8 [3, S, S] at the model's input size
    (the v2 protocol's tensor inputs, :mod:`imageiq.tensors`). It skips decode and
    prepare; everything after (cache, batching, records) is an image's."""

    tensor: torch.Tensor

    def digest(self) -> str:
        """Its cache identity: the pixels' hash, apart from any encoded image's."""
        pixels = self.tensor.contiguous().numpy().tobytes()
        return hashlib.sha256(b"pixels:%d:" % self.tensor.shape[-1] + pixels).hexdigest()


@dataclass(frozen=True)
class PreparedImage:
    """An upload decoded and prepared for the model's batching queue: its tensor and the
    facts of the decoded image (not its pixels, which are gone by then)."""

    format: str
    width: int
    height: int
    tensor: torch.Tensor  # uint8 [3, S, S]
    decode_s: float
    preprocess_s: float


def prepare_image(
    classifier: ModelIO,
    data: bytes,
    *,
    max_pixels: int,
    draft: bool,
    pixels: Budget | None = None,
    wait_s: float = 0.0,
) -> PreparedImage:
    """Untrusted bytes -> what the batching queue takes: decode (with ``draft``, large JPEGs
    at a reduced scale) and prepare (colour, resize, crop). CPU-bound: the core runs it in a
    worker thread. Training reads its held-out images through the same two steps
    (:func:`training.data.held_out_dataset`), which the parity test checks.

    With ``pixels``, the image's decoded pixels (read from its header) are held in that
    budget from before the decode until its tensor is made, waiting up to ``wait_s`` for
    room (:meth:`imageiq.admission.Budget.hold`)."""
    held = (
        pixels.hold(classifier.pixels_to_decode(data, draft=draft), wait_s=wait_s)
        if pixels is not None
        else contextlib.nullcontext()
    )
    with held:
        decoding = time.perf_counter()
        decoded = classifier.decode(data, max_pixels=max_pixels, draft=draft)
        done = time.perf_counter()
        tensor = classifier.prepare(decoded.image)
        prepared = time.perf_counter()
        facts = (decoded.format, decoded.width, decoded.height)
        del decoded  # its pixels go before the budget is given back
    return PreparedImage(*facts, tensor, done - decoding, prepared - done)


@dataclass(frozen=True)
class _Inferred:
    scored: list[ScoredLabel]
    attributes: dict[str, ScoredLabel]
    image: ImageFacts
    batch_size: int
    timings: tuple[float, float, float, float]  # decode, preprocess, queue, inference (s)
    probabilities: dict[str, list[float]] | None = None


class Classification:
    """Classifies images with a served model; holds what every request shares: the
    settings, the backends (cache, store, database, recorder) and the decode slots."""

    def __init__(self, *, settings: Settings, backends: Backends) -> None:
        self.settings, self.backends = settings, backends
        self._decode_slots = anyio.CapacityLimiter(
            settings.decode_concurrency or settings.cpu_count
        )
        # Decoded pixels held at once (imageiq.admission); an image waits for room as long
        # as a queued image may wait for its batch, then gets 503.
        self.pixels = Budget(pixel_budget(settings), unit="pixels")

    def check(self, *, top_k: int, min_confidence: float, store: bool) -> None:
        """The options, before any image is read: 422 ``invalid_parameter`` if wrong."""
        if not 1 <= top_k <= MAX_TOP_K:
            raise errors.InvalidParameter(
                f"top_k must be between 1 and {MAX_TOP_K}, not {top_k}.",
                details={"field": "top_k"},
            )
        if not 0.0 <= min_confidence <= 1.0:
            raise errors.InvalidParameter(
                f"min_confidence must be between 0 and 1, not {min_confidence}.",
                details={"field": "min_confidence"},
            )
        if store and self.settings.store_images == "never":
            raise errors.InvalidParameter(
                "Storing images is turned off on this service (IMAGEIQ_STORE_IMAGES=never).",
                details={"field": "store"},
            )

    async def classify(
        self,
        model: ServedModel,
        images: Sequence[bytes | Pixels],
        *,
        top_k: int,
        min_confidence: float = 0.0,
        store: bool = False,
        full: bool = False,
        principal: Principal,
        endpoint: str = "core",
        request_id: str | None = None,
        started: float | None = None,
    ) -> list[ImageResult]:
        """One result per image, in order; the images run concurrently, each on its own.

        An image is its encoded bytes, or :class:`Pixels` a client prepared (never
        stored). ``full``: each result also carries every head's whole distribution.

        ``endpoint`` labels the metrics (where the images came from), ``request_id`` goes
        into the prediction records (default: the request id of the current context), and
        ``started`` (a ``time.perf_counter()``) is when the caller's request arrived: the
        results' ``total`` counts from it."""
        self.check(top_k=top_k, min_confidence=min_confidence, store=store)
        started = time.perf_counter() if started is None else started
        request_id = request_id if request_id is not None else request_id_var.get()
        results: list[ImageResult] = [ImageResult() for _ in images]

        async def one(i: int) -> None:
            results[i] = await self._one(
                model,
                images[i],
                inline=len(images) == 1,
                top_k=top_k,
                min_confidence=min_confidence,
                store=store or self.settings.store_images == "always",
                full=full,
                principal=principal,
                endpoint=endpoint,
                request_id=request_id,
                started=started,
            )

        with model.use():
            if len(images) == 1:  # the usual request: no task group to set up
                await one(0)
            else:
                async with anyio.create_task_group() as group:
                    for i in range(len(images)):
                        group.start_soon(one, i)
        return results

    async def _one(
        self,
        model: ServedModel,
        data: bytes | Pixels,
        *,
        inline: bool,
        top_k: int,
        min_confidence: float,
        store: bool,
        full: bool,
        principal: Principal,
        endpoint: str,
        request_id: str,
        started: float,
    ) -> ImageResult:
        if isinstance(data, Pixels):
            sha256, store = data.digest(), False  # not an image anyone could fetch back
        elif not data:
            error = errors.EmptyImage("The image is empty (0 bytes).")
            count_rejected(endpoint, error)
            return ImageResult(error=error)
        else:
            sha256 = (
                await anyio.to_thread.run_sync(_sha256, data)
                if len(data) > HASH_INLINE_BYTES
                else _sha256(data)
            )
        name, version = model.model.name, model.model.version
        key = cache_key(
            sha256=sha256, model_name=name, model_version=version, top_k=top_k, full=full
        )
        cache = self.backends.cache
        # The in-process cache answers inline (a dict look-up costs less than a thread hop);
        # Redis is a network call, made in a worker thread.
        if cache.backend == "off":
            hit = None
        elif cache.backend == "memory":
            hit = cache.get(key)
        else:
            hit = await anyio.to_thread.run_sync(cache.get, key)
        if hit is not None:
            inferred = _from_cache(hit)
        else:
            try:
                inferred = await self._infer(
                    model, data, sha256, inline=inline, top_k=top_k, full=full, endpoint=endpoint
                )
            except errors.ImageIQError as e:
                if e.status >= 500 and not isinstance(e, errors.Overloaded):
                    raise
                if e.status < 500:
                    count_rejected(endpoint, e)
                return ImageResult(error=e)
            if cache.backend == "memory":
                cache.put(key, _cacheable(inferred), sha256=sha256)
            elif cache.backend != "off":
                value = _cacheable(inferred)
                await anyio.to_thread.run_sync(lambda: cache.put(key, value, sha256=sha256))
        try:
            stored = (
                await self._store(data, inferred.image, principal)
                if store and isinstance(data, bytes)
                else None
            )
        except errors.BacklogFull as e:
            return ImageResult(error=e)  # not accepted: nothing was promised
        decode_s, preprocess_s, queue_s, inference_s = inferred.timings
        classified = Classified(
            labels=[s for s in inferred.scored if s.score >= min_confidence],
            scored=inferred.scored,
            attributes=inferred.attributes,
            image=inferred.image,
            batch_size=inferred.batch_size,
            cached=hit is not None,
            timing_ms=Timings(
                decode=_ms(decode_s),
                preprocess=_ms(preprocess_s),
                queue=_ms(queue_s),
                inference=_ms(inference_s),
                total=_ms(time.perf_counter() - started),
            ),
            stored=stored,
            probabilities=inferred.probabilities,
        )
        best = inferred.scored[0]
        # Its prediction row joins the backlog; 503 backlog_full (the image's error) when
        # the backlog is full: refused, never accepted and then lost.
        prediction = PredictionRecord(
            image_sha256=sha256,
            model_name=model.model.name,
            model_version=model.model.version,
            label=best.label,
            score=best.score,
            top_k=[s.as_dict() for s in inferred.scored],
            attributes={head: s.as_dict() for head, s in inferred.attributes.items()},
            latency_ms=classified.timing_ms.total,
            cached=classified.cached,
            api_key_id=principal.key_id,
            request_id=request_id,
            client_request_id=client_request_id_var.get(),
        )
        try:
            self.backends.recorder.record(prediction)
        except errors.BacklogFull as e:
            return ImageResult(error=e)
        return ImageResult(classified=classified)

    async def _infer(
        self,
        model: ServedModel,
        data: bytes | Pixels,
        sha256: str,
        *,
        inline: bool,
        top_k: int,
        full: bool,
        endpoint: str,
    ) -> _Inferred:
        if isinstance(data, Pixels):
            side = int(data.tensor.shape[-1])
            prepared: PreparedImage | None = PreparedImage("TENSOR", side, side, data.tensor, 0, 0)
        else:
            prepared = self._prepare_inline(model, data) if inline else None
        if prepared is None:
            assert isinstance(data, bytes)
            prepare = functools.partial(
                prepare_image,
                model.runner.io,
                data,
                max_pixels=self.settings.max_image_pixels,
                draft=self.settings.jpeg_draft,
                pixels=self.pixels,
                wait_s=self.settings.max_latency_ms / 1000,
            )
            with model.batcher.announce():  # counts towards the batch sizes from now
                prepared = await anyio.to_thread.run_sync(prepare, limiter=self._decode_slots)
        m = metrics()
        labels = (model.model.name, model.model.version)
        m.decode_seconds.labels(endpoint).observe(prepared.decode_s)
        m.preprocess_seconds.labels(*labels).observe(prepared.preprocess_s)
        queued = time.perf_counter()
        out = await model.batcher(prepared.tensor)
        done = time.perf_counter()
        prediction = model.runner.io.postprocess(out.probabilities, top_k=top_k)[0]
        m.confidence.labels(*labels).observe(prediction.labels[0].score)
        m.postprocess_seconds.labels(*labels).observe(time.perf_counter() - done)
        return _Inferred(
            scored=prediction.labels,
            attributes=prediction.attributes,
            image=ImageFacts(
                sha256=sha256,
                width=prepared.width,
                height=prepared.height,
                format=prepared.format,
                bytes=len(data) if isinstance(data, bytes) else data.tensor.numel(),
            ),
            batch_size=out.batch_size,
            timings=(
                prepared.decode_s,
                prepared.preprocess_s,
                max(0.0, done - queued - out.inference_s),
                out.inference_s,
            ),
            probabilities=(
                {head: p[0].tolist() for head, p in out.probabilities.items()} if full else None
            ),
        )

    def _prepare_inline(self, model: ServedModel, data: bytes) -> PreparedImage | None:
        """A small image prepared right here (see INLINE_PIXELS); None when it is not small
        (its header says more pixels: the worker thread decodes it under the real limit)."""
        if len(data) > INLINE_BYTES:
            return None
        limit = self.settings.max_image_pixels
        try:
            return prepare_image(
                model.runner.io,
                data,
                max_pixels=min(limit, INLINE_PIXELS),
                draft=self.settings.jpeg_draft,
            )
        except errors.ImageTooLarge:
            if limit <= INLINE_PIXELS:
                raise  # over the real limit: this is the answer
            return None

    async def _store(self, data: bytes, image: ImageFacts, principal: Principal) -> bool:
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

        def store_now() -> bool:
            if not tombstones.put_object(
                backends.engine,
                backends.store,
                record.sha256,
                data,
                content_type=record.content_type,
                accepted_at=record.created_at,
            ):
                return False  # forgotten since it was accepted: not stored, not recorded
            record.data = None  # the object is there: only the row may be left to write
            with backends.engine.begin() as connection:
                (rows,) = tombstones.drop_forgotten(connection, [as_row(record)])
                catalog.insert_ignore(connection, catalog.Image, rows)
            backends.database.succeeded()
            if not rows:  # forgotten between the put and the row
                tombstones.sweep(backends.engine, backends.store, shas=[record.sha256])
            return bool(rows)

        try:
            return await anyio.to_thread.run_sync(store_now)
        except (errors.StorageUnavailable, SQLAlchemyError) as e:
            # The store or the database is away (or refuses the row: the recorder sets it
            # aside): the recorder takes over, from its spool on the pod's volume, written
            # before the answer says "not stored yet" (503 backlog_full if it is full).
            if is_transient(e):
                backends.database.failed(e)
            await anyio.to_thread.run_sync(backends.recorder.record_durably, record)
            return False


def count_rejected(endpoint: str, error: errors.ImageIQError) -> None:
    """Counts an image refused for what it is (a 4xx), by where it came from."""
    if error.status < 500:
        metrics().images_rejected.labels(endpoint, error.code).inc()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_cache(hit: dict[str, Any]) -> _Inferred:
    return _Inferred(
        scored=[ScoredLabel(p["label"], p["score"]) for p in hit["predictions"]],
        attributes={k: ScoredLabel(v["label"], v["score"]) for k, v in hit["attributes"].items()},
        image=ImageFacts(**hit["image"]),
        batch_size=0,
        timings=(0.0, 0.0, 0.0, 0.0),
        probabilities=hit.get("probabilities"),
    )


def _cacheable(inferred: _Inferred) -> dict[str, Any]:
    """What the cache keeps of a prediction: every top-k label (min_confidence applies when
    it is served), the attributes and the facts about the image. The same layout as
    before the core moved here, so entries already in Redis stay readable."""
    cached = {
        "predictions": [s.as_dict() for s in inferred.scored],
        "attributes": {k: s.as_dict() for k, s in inferred.attributes.items()},
        "image": dataclasses.asdict(inferred.image),
    }
    if inferred.probabilities is not None:  # under a key of its own (cache_key's ``full``)
        cached["probabilities"] = inferred.probabilities
    return cached


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
