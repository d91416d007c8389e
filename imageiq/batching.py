"""Adaptive batching, one queue per served model: continuous batching that never waits.

When the model is idle, a request runs at once, alone. While a batch runs, new requests
queue; when it finishes, the next batch takes what is queued and runs at once. So the batch
size follows the load by itself: 1 at one client, larger under load. There is no timer and
no learned model of the batch cost, so no request ever waits for a batch to fill, and a
burst leaves nothing behind (see docs/performance.md: BentoML's ``CorkDispatcher``, which
learns when to wait, kept waiting at one client after a burst of 64, and was slower there
than no batching at all).

A batch takes at most half the images in demand (queued, running, or announced by the
caller while it decodes them), rounded up, and at most ``max_batch_size``. With 16 clients
that is two batches of 8 taking turns: while one runs, the other's clients read their
answers and send their next images, so the model never waits for the network. One batch of
all 16 would leave the model idle during that round trip, and in practice splits into a
batch of 1 (the first image back, on an idle model) and one of 15.

``max_latency_ms`` sheds load: an image that waited longer than that for its batch is
refused with 503 ``overloaded`` instead of being run late.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from imageiq.errors import Overloaded
from imageiq.runner import BatchOutput, Runner

__all__ = ["BatchOutput", "Batcher"]


@dataclass
class _Queued:
    image: torch.Tensor
    answer: asyncio.Future[BatchOutput]
    since: float


class Batcher:
    """Queues single preprocessed images (uint8 [3, S, S]) for ``runner`` and answers each
    with its own row of the batch. ``max_batch_size=1`` runs every image on its own."""

    def __init__(self, runner: Runner, *, max_batch_size: int, max_latency_ms: int) -> None:
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000
        self._queue: collections.deque[_Queued] = collections.deque()
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self._waiting = 0  # images between __call__ and their answer
        self._announced = 0  # images their callers are still preparing (see announce)

    @property
    def demand(self) -> int:
        return self._waiting + self._announced

    @contextlib.contextmanager
    def announce(self) -> Iterator[None]:
        """An image on its way here (being decoded): counted in the demand that sizes the
        batches from the moment its request starts, not only once it is queued."""
        self._announced += 1
        try:
            yield
        finally:
            self._announced -= 1

    async def __call__(self, image: torch.Tensor) -> BatchOutput:
        if self._closed:
            raise Overloaded(f"Model {self.runner.tag} was retired; retry.")
        answer: asyncio.Future[BatchOutput] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(image, answer, time.monotonic()))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        self._waiting += 1
        try:
            return await answer  # a cancelled request leaves a cancelled future: skipped
        finally:
            self._waiting -= 1

    async def _drain(self) -> None:
        """Runs batches back to back while anything is queued."""
        while self._queue:
            batch = self._take()
            if not batch:
                continue
            try:
                outputs = await self.runner.run_batch([q.image for q in batch])
            except Exception as e:  # the model failed: every image of the batch hears why
                for q in batch:
                    if not q.answer.done():
                        q.answer.set_exception(e)
                continue
            for q, out in zip(batch, outputs, strict=True):
                if q.answer.done():
                    continue
                if isinstance(out, Exception):
                    q.answer.set_exception(out)
                else:
                    q.answer.set_result(out)

    def batch_limit(self) -> int:
        """The largest batch to take now: half the demand, rounded up (see the module
        docstring), within 1 and ``max_batch_size``."""
        return max(1, min(self.max_batch_size, (self.demand + 1) // 2))

    def _take(self) -> list[_Queued]:
        batch: list[_Queued] = []
        now = time.monotonic()
        limit = self.batch_limit()
        while self._queue and len(batch) < limit:
            q = self._queue.popleft()
            if q.answer.done():  # its request was cancelled
                continue
            if now - q.since > self.max_latency_s:
                q.answer.set_exception(
                    Overloaded(
                        f"Model {self.runner.tag} has more queued work than its latency "
                        "budget allows; retry shortly."
                    )
                )
                continue
            batch.append(q)
        return batch

    def close(self) -> None:
        """No new images; the queued ones are refused (a retired model has none left)."""
        self._closed = True
        while self._queue:
            q = self._queue.popleft()
            if not q.answer.done():
                q.answer.set_exception(Overloaded(f"Model {self.runner.tag} was retired; retry."))
