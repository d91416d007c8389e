"""One model on one dedicated thread: load, warm up, then every inference batch.

Loading and running the model on the same OS thread keeps one OpenMP pool (two pools cost
about 25% on a 2-core node). Loading runs in the background so ``/livez`` answers at once
while ``/readyz`` stays 503 until the warm-up batch has run.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch

from imageiq.inference import Classifier

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]


class ModelRunner:
    def __init__(self, *, tag: str, device: str, threads: int, warmup_batch_size: int) -> None:
        self.tag = tag
        self.state: State = "loading"
        self.error: str | None = None
        self._classifier: Classifier | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imageiq-model")
        self._loaded = self._executor.submit(
            self._load, device=device, threads=threads, warmup_batch_size=warmup_batch_size
        )

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

    async def predict_proba(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        future = self._executor.submit(self.classifier.predict_proba, batch)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _load(self, *, device: str, threads: int, warmup_batch_size: int) -> None:
        try:
            torch.set_num_threads(threads)
            classifier = Classifier.load(self.tag, device=device)
            warmup = torch.zeros((warmup_batch_size, *classifier.input_shape), dtype=torch.uint8)
            classifier.predict_proba(warmup)
            self._classifier = classifier
            self.state = "ready"
            log.info(
                "model %s ready on %s (%d threads)",
                classifier.model.tag,
                classifier.device,
                torch.get_num_threads(),
            )
        except Exception as e:  # reported through /livez, /readyz and 503s
            self.error = f"{type(e).__name__}: {e}"
            self.state = "failed"
            log.exception("model %s failed to load", self.tag)
