"""Models on one dedicated thread: load, warm up, then every inference batch.

Every model of the process loads and runs on the same OS thread (:class:`InferenceThread`),
which keeps one OpenMP pool: two pools on a 2-core node cost about 25%, and two models
running at once would only take turns on the same cores anyway. Loading runs in the
background so ``/livez`` answers at once while ``/readyz`` stays 503 until every model's
warm-up batch has run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal, TypeVar

import torch

from imageiq.inference import Classifier, InferenceOptions
from imageiq.registry import RegisteredModel

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]
T = TypeVar("T")


class InferenceThread:
    """The one thread that touches the models."""

    def __init__(self, *, threads: int) -> None:
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
        self._loaded = thread.submit(self._load, device, options, warmup_batch_size)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            raise RuntimeError(f"model {self.tag} is {self.state}")
        return self._classifier

    def wait(self, timeout: float | None = None) -> State:
        self._loaded.result(timeout)
        return self.state

    async def loaded(self) -> State:
        await asyncio.wrap_future(self._loaded)
        return self.state

    async def predict_proba(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return await self._thread.run(self.classifier.predict_proba, batch)

    def _load(self, device: str, options: InferenceOptions, warmup_batch_size: int) -> None:
        try:
            classifier = Classifier.load(self.tag, device=device, options=options)
            warmup = torch.zeros((warmup_batch_size, *classifier.input_shape), dtype=torch.uint8)
            classifier.predict_proba(warmup)
            self._classifier = classifier
            self.state = "ready"
            log.info(
                "model %s ready on %s (%s, %d threads)",
                self.tag,
                classifier.device,
                options,
                torch.get_num_threads(),
            )
        except Exception as e:  # reported through /readyz, /v1/models and 503s
            self.error = f"{type(e).__name__}: {e}"
            self.state = "failed"
            log.exception("model %s failed to load: %s", self.tag, self.error)
