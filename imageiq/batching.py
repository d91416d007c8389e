"""Adaptive batching, one queue per served model.

The queue is BentoML's ``CorkDispatcher``: the same algorithm that drives a
``@bentoml.api(batchable=True)`` endpoint. It learns how long a batch of n takes and holds
requests back only while waiting is expected to pay off, within ``max_latency_ms``. A
batchable endpoint owns exactly one dispatcher, so several models side by side each get
their own here, and images reach it without an HTTP hop. It is imported from BentoML's
internals (pinned ``bentoml==1.4.39``; the service tests exercise it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from imageiq.errors import Overloaded
from imageiq.metrics import metrics
from imageiq.runner import ModelRunner


@dataclass(frozen=True)
class BatchOutput:
    """One image's share of a batch: its probabilities per head, shape [1, C]."""

    probabilities: dict[str, torch.Tensor]
    batch_size: int
    inference_s: float


class _Dropped(Exception):
    """The dispatcher gave up on a queued image (it would miss its latency budget)."""


def _dropped() -> BatchOutput:
    raise _Dropped


class Batcher:
    """Queues single preprocessed images (uint8 [3, S, S]) for ``runner`` and answers each
    with its own row of the batch. ``max_batch_size=1`` runs every image on its own."""

    def __init__(self, runner: ModelRunner, *, max_batch_size: int, max_latency_ms: int) -> None:
        self.runner = runner
        self.max_batch_size = max_batch_size
        self._dispatcher: CorkDispatcher[torch.Tensor, BatchOutput] | None = None
        if max_batch_size > 1:
            self._dispatcher = CorkDispatcher(
                max_latency_in_ms=max_latency_ms,
                max_batch_size=max_batch_size,
                fallback=_dropped,
                get_batch_size=lambda _: 1,
            )
            self._queued = self._dispatcher(self._run_batch)

    async def __call__(self, image: torch.Tensor) -> BatchOutput:
        if self._dispatcher is None:
            return (await self._run_batch([image]))[0]
        try:
            return await self._queued(image)  # type: ignore[return-value]
        except _Dropped:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # our own request was cancelled
                raise asyncio.CancelledError from None
            raise Overloaded(
                f"Model {self.runner.tag} has more queued work than its latency budget "
                "allows; retry shortly."
            ) from None

    async def _run_batch(self, images: Sequence[torch.Tensor]) -> list[BatchOutput]:
        started = time.perf_counter()
        probs = await self.runner.predict_proba(images)
        elapsed = time.perf_counter() - started
        n = len(images)
        m, model = metrics(), self.runner.model
        m.inference_seconds.labels(model.name, model.version).observe(elapsed)
        m.batch_size.labels(model.name, model.version).observe(n)
        return [
            BatchOutput({h: p[i : i + 1] for h, p in probs.items()}, n, elapsed) for i in range(n)
        ]

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.shutdown()
