"""Bulk inference through the core, for a worker (``imageiq worker``) or one machine
(``imageiq batch``): the items' bytes read on threads, decoded and prepared on processes,
and the model run in large batches once per device, in the process that holds it.

The three stages overlap: a reader thread keeps the decode processes fed while this
process runs the forward passes of the images already prepared, so on a CPU node the
decoding hides behind the model (docs/performance.md, "Bulk jobs"). Each image goes through
the serving path's steps (:meth:`EvalTransform.decode`, ``to_uint8``, ``predict_proba``,
``postprocess``), so a job's answer is the one ``/v1/classify`` gives.

An image that fails (missing, too large, corrupt, not an image) is that item's error. An
image that kills its decode process (a decoder bug) breaks the pool: the pool is rebuilt,
the images it held are decoded again one at a time, and the one that kills it again fails
alone with ``decoder_crashed``.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imageiq import errors
from imageiq.inference import Classifier, batch_sizes
from imageiq.jobs.blobs import STORE_SCHEME
from imageiq.jobs.ledger import ItemOutcome
from imageiq.preprocessing import EvalTransform, PreprocessConfig

log = logging.getLogger("imageiq.jobs")

Reader = Callable[[str], bytes]

# --- the decode processes -------------------------------------------------------------------
_transforms: dict[str, EvalTransform] = {}


@dataclass(frozen=True)
class Decoded:
    sha256: str
    pixels: np.ndarray | None  # uint8 [3, S, S]
    width: int = 0
    height: int = 0
    error: tuple[str, str] | None = None  # (code, message)


def decode_one(
    data: bytes, sha256: str | None, config: PreprocessConfig, max_pixels: int, draft: bool
) -> Decoded:
    """Runs in a decode process: bytes -> the model's uint8 input, or the image's error."""
    digest = sha256 or hashlib.sha256(data).hexdigest()
    key = config.model_dump_json()
    transform = _transforms.get(key)
    if transform is None:
        transform = _transforms[key] = EvalTransform(config)
    try:
        decoded = transform.decode(data, max_pixels=max_pixels, draft=draft)
        tensor = transform.to_uint8(decoded.image)
    except errors.ImageIQError as e:
        return Decoded(digest, None, error=(e.code, e.message))
    except Exception as e:  # Pillow's surprises on hostile bytes: the image's own error
        return Decoded(digest, None, error=("corrupt_image", f"{type(e).__name__}: {e}"))
    return Decoded(digest, tensor.numpy(), decoded.width, decoded.height)


def _init_decoder() -> None:
    torch.set_num_threads(1)  # decode processes never run a model: no OpenMP team


# --- the batch size -------------------------------------------------------------------------
def fastest_batch(
    classifier: Classifier, largest: int, *, seconds: float = 0.5
) -> tuple[int, dict[int, float]]:
    """The batch size, among the powers of two up to ``largest``, at which this model runs
    the most images per second on this device, and the rates measured. The biggest batch
    is not always the fastest: ResNet-50 on 2 CPU cores peaks at 8 and loses 4-10% at 32
    (docs/performance.md, "Bulk jobs"); a GPU keeps gaining up to its memory."""
    rates: dict[int, float] = {}
    for size in batch_sizes(largest):
        probe = torch.zeros((size, *classifier.input_shape), dtype=torch.uint8)
        classifier.predict_proba(probe)  # compiled (or allocated) already: not timed
        calls, started = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - started < seconds:
            classifier.predict_proba(probe)
            calls += 1
        rates[size] = calls * size / (time.perf_counter() - started)
    return max(rates, key=lambda s: rates[s]), rates


# --- the pipeline ---------------------------------------------------------------------------
@dataclass
class _Pending:
    position: int
    data: bytes | None
    sha256: str | None
    future: Future[Decoded] | None
    error: tuple[str, str] | None = None  # (code, message): this image's own failure
    outage: str | None = None  # the store failed: the whole chunk is retried


class BulkClassifier:
    """One model and the pools around it; :meth:`classify` runs one chunk's items."""

    def __init__(
        self,
        classifier: Classifier,
        *,
        batch_size: int,
        decode_processes: int,
        read_concurrency: int,
        max_image_bytes: int,
        max_pixels: int,
        draft: bool,
    ) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        self.processes = max(1, decode_processes)
        self.max_image_bytes = max_image_bytes
        self.max_pixels, self.draft = max_pixels, draft
        self.config = classifier.model.card.preprocessing
        self._readers = ThreadPoolExecutor(read_concurrency, thread_name_prefix="imageiq-read")
        self._lock = threading.Lock()
        self._decoders = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: forking a process whose torch has started its OpenMP threads can hang.
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_decoder,
        )

    def close(self) -> None:
        self._readers.shutdown(wait=False, cancel_futures=True)
        self._decoders.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        """Starts the decode processes now, not on the first chunk."""
        futures = [self._decoders.submit(_init_decoder) for _ in range(self.processes)]
        for f in futures:
            f.result()

    def _submit(self, item: _Pending) -> None:
        assert item.data is not None
        with self._lock:
            pool = self._decoders
        try:
            item.future = pool.submit(
                decode_one, item.data, item.sha256, self.config, self.max_pixels, self.draft
            )
        except (BrokenProcessPool, RuntimeError):
            item.future = None  # decoded again, alone, by the main thread

    def classify(
        self,
        items: Sequence[tuple[int, str]],
        *,
        read: Reader,
        top_k: int,
        min_confidence: float,
        on_batch: Callable[[list[ItemOutcome]], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Answers ``items`` ((position, ref)), handing each batch's outcomes to
        ``on_batch`` as it finishes; False if ``should_stop`` said stop first."""
        handoff: queue.Queue[_Pending | None] = queue.Queue()
        stop = threading.Event()
        reads = [(p, ref, self._readers.submit(read, ref)) for p, ref in items]

        def feed() -> None:
            for position, ref, future in reads:
                if stop.is_set():
                    break
                sha256 = ref[-64:] if ref.startswith(STORE_SCHEME) else None
                item = _Pending(position, None, sha256, None)
                try:
                    data = future.result()
                except errors.ImageIQError as e:
                    if e.status >= 500:  # the store is down: the chunk is retried
                        item.outage = e.message
                        handoff.put(item)
                        break
                    item.error = (e.code, e.message)
                except Exception as e:
                    item.outage = f"{type(e).__name__}: {e}"
                    handoff.put(item)
                    break
                else:
                    if not data:
                        item.error = ("empty_image", "The image is empty (0 bytes).")
                    elif len(data) > self.max_image_bytes:
                        item.error = (
                            "image_too_large",
                            f"The image is larger than {self.max_image_bytes} bytes.",
                        )
                    else:
                        item.data = data
                        self._submit(item)
                handoff.put(item)
            handoff.put(None)

        feeder = threading.Thread(target=feed, name="imageiq-feed", daemon=True)
        feeder.start()
        try:
            return self._consume(handoff, top_k, min_confidence, on_batch, should_stop)
        finally:
            stop.set()
            for _, _, future in reads:
                future.cancel()
            feeder.join()

    def _consume(
        self,
        handoff: queue.Queue[_Pending | None],
        top_k: int,
        min_confidence: float,
        on_batch: Callable[[list[ItemOutcome]], None],
        should_stop: Callable[[], bool],
    ) -> bool:
        ready: list[tuple[_Pending, Decoded]] = []
        failed: list[ItemOutcome] = []
        while True:
            item = handoff.get()
            if item is not None:
                if item.outage is not None:
                    raise errors.StorageUnavailable(item.outage)
                if item.error is not None:
                    failed.append(ItemOutcome(item.position, item.sha256, None, *item.error))
                else:
                    decoded = self._result(item)
                    if decoded.error is not None:
                        failed.append(
                            ItemOutcome(item.position, decoded.sha256, None, *decoded.error)
                        )
                    else:
                        ready.append((item, decoded))
            if len(ready) >= self.batch_size or (item is None and (ready or failed)):
                if should_stop():
                    return False
                on_batch(failed + self._infer(ready, top_k, min_confidence))
                ready, failed = [], []
            if item is None:
                return True

    def _result(self, item: _Pending) -> Decoded:
        """The item's decode, re-run alone in a fresh pool if the pool broke under it."""
        if item.future is not None:
            try:
                return item.future.result()
            except BrokenProcessPool:
                pass
        self._rebuild()
        assert item.data is not None
        with self._lock:
            pool = self._decoders
        try:
            return pool.submit(
                decode_one, item.data, item.sha256, self.config, self.max_pixels, self.draft
            ).result()
        except BrokenProcessPool:
            self._rebuild()
            digest = item.sha256 or hashlib.sha256(item.data).hexdigest()
            log.error("image %s crashed its decode process", digest)
            return Decoded(
                digest, None, error=("decoder_crashed", "The image crashed the image decoder.")
            )

    def _rebuild(self) -> None:
        with self._lock:
            broken = getattr(self._decoders, "_broken", False)
            if broken:
                self._decoders.shutdown(wait=False, cancel_futures=True)
                self._decoders = self._new_pool()

    def _infer(
        self, ready: list[tuple[_Pending, Decoded]], top_k: int, min_confidence: float
    ) -> list[ItemOutcome]:
        if not ready:
            return []
        batch = torch.from_numpy(np.stack([d.pixels for _, d in ready if d.pixels is not None]))
        probs = self.classifier.predict_proba(batch)
        predictions = self.classifier.postprocess(probs, top_k=top_k)
        outcomes = []
        for (item, decoded), prediction in zip(ready, predictions, strict=True):
            best = prediction.labels[0]
            result: dict[str, Any] = {
                "label": best.label,
                "score": best.score,
                "top_k": [s.as_dict() for s in prediction.labels if s.score >= min_confidence],
                "attributes": {h: s.as_dict() for h, s in prediction.attributes.items()},
                "width": decoded.width,
                "height": decoded.height,
            }
            outcomes.append(ItemOutcome(item.position, decoded.sha256, result))
        return outcomes
