"""Models on one dedicated thread: every warm-up and inference batch.

Every model of the process runs on the same OS thread (:class:`InferenceThread`), which
keeps one OpenMP pool busy: two pools running at once on a 2-core node cost about 25%, and
two models computing at once would only take turns on the same cores anyway. Reading the
weights happens on a short-lived loader thread, so a model being added by a reload does not
hold up the models that are serving, and neither does compiling it (``IMAGEIQ_COMPILE``);
only its warm-up batch takes a turn on the inference thread. ``/livez`` answers at once
while ``/readyz`` stays 503 until every model is warm.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import numpy as np
import torch

from imageiq.inference import Classifier, InferenceOptions, ModelIO
from imageiq.metrics import metrics
from imageiq.registry import RegisteredModel

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]
T = TypeVar("T")


@dataclass(frozen=True)
class BatchOutput:
    """One image's share of a batch: its probabilities per head, shape [1, C]."""

    probabilities: dict[str, torch.Tensor]
    batch_size: int
    inference_s: float


class Runner(Protocol):
    """Runs one model's batches: :class:`ModelRunner` in this process, or
    :class:`imageiq.model_client.RemoteRunner` in the model process
    (``IMAGEIQ_MODEL_PROCESS``). The batching queue and the pool see only this."""

    model: RegisteredModel
    tag: str
    state: State
    error: str | None

    @property
    def ready(self) -> bool: ...

    @property
    def io(self) -> ModelIO: ...

    def wait(self, timeout: float | None = None) -> State: ...

    async def loaded(self) -> State: ...

    async def run_batch(self, images: Sequence[torch.Tensor]) -> list[BatchOutput | Exception]:
        """One output per image, in order: its own row, or why it failed."""
        ...

    def close(self) -> None: ...


class InferenceThread:
    """The one thread that touches the models."""

    def __init__(self, *, threads: int) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imageiq-model")
        self._executor.submit(torch.set_num_threads, threads)

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        return self._executor.submit(fn, *args)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ModelRunner:
    """One registered model: loaded and warmed up in the background, then run in batches."""

    def __init__(
        self,
        *,
        model: RegisteredModel,
        thread: InferenceThread,
        device: str,
        options: InferenceOptions,
        warmup_batch_size: int,
    ) -> None:
        self.model = model
        self.tag = model.tag
        self.state: State = "loading"
        self.error: str | None = None
        self._classifier: Classifier | None = None
        self._thread = thread
        self._loaded: Future[None] = Future()
        threading.Thread(
            target=self._load,
            args=(device, options, warmup_batch_size),
            name=f"imageiq-load-{model.name}",
            daemon=True,
        ).start()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            raise RuntimeError(f"model {self.tag} is {self.state}")
        return self._classifier

    @property
    def io(self) -> ModelIO:
        return self.classifier

    def close(self) -> None:
        """Nothing to hand back: the weights go with the last reference."""

    def wait(self, timeout: float | None = None) -> State:
        self._loaded.result(timeout)
        return self.state

    async def loaded(self) -> State:
        await asyncio.wrap_future(self._loaded)
        return self.state

    async def predict_proba(
        self, batch: torch.Tensor | Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """A batch, or the images to stack into one: the copy runs on the inference thread
        too, not on the event loop's (see module docstring)."""
        return await self._thread.run(self._predict, batch)

    async def run_batch(self, images: Sequence[torch.Tensor]) -> list[BatchOutput | Exception]:
        """The images as one batch, each answered with its own row; the batch's time and
        size go to the metrics (once per batch, in the process that runs it)."""
        started = time.perf_counter()
        probs = await self.predict_proba(images)
        elapsed = time.perf_counter() - started
        n = len(images)
        m = metrics()
        m.inference_seconds.labels(self.model.name, self.model.version).observe(elapsed)
        m.batch_size.labels(self.model.name, self.model.version).observe(n)
        return [
            BatchOutput({h: p[i : i + 1] for h, p in probs.items()}, n, elapsed) for i in range(n)
        ]

    def _predict(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(batch, torch.Tensor):
            # NumPy's copy is serial: torch.stack's is an OpenMP region, whose threads then
            # spin on the cores an ONNX Runtime model needs (see Classifier.predict_proba).
            batch = torch.from_numpy(np.stack([image.numpy() for image in batch]))
        return self.classifier.predict_proba(batch)

    def _load(self, device: str, options: InferenceOptions, warmup_batch_size: int) -> None:
        try:
            classifier = Classifier.load(
                self.tag, device=device, options=options, threads=self._thread.threads
            )
            # Compiling takes a while: it happens here, on the loader thread, so the models
            # already serving keep the inference thread meanwhile.
            classifier.warm_up()
            warmup = torch.zeros((warmup_batch_size, *classifier.input_shape), dtype=torch.uint8)
            self._thread.submit(classifier.predict_proba, warmup).result()
            self._classifier = classifier
            self.state = "ready"
            log.info(
                "model %s ready on %s (%s)",
                self.tag,
                classifier.device,
                "onnxruntime int8" if classifier.int8 else f"{classifier.precision}, {options}",
            )
        except Exception as e:  # reported through /readyz, /v1/models and 503s
            self.error = f"{type(e).__name__}: {e}"
            self.state = "failed"
            log.exception("model %s failed to load: %s", self.tag, self.error)
        finally:
            self._loaded.set_result(None)
