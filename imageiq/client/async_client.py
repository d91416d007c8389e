"""The asyncio client: the same calls as :class:`~imageiq.client.sync_client.Client`, each a
coroutine; ``classify_batch`` runs its chunks as tasks, ``concurrency`` at a time."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from imageiq.client import api_errors, calls
from imageiq.client import responses as r
from imageiq.client.base import DEFAULT_URL, ClientBase
from imageiq.client.retrying import attempt_timeout, transport_retryable
from imageiq.client.uploads import BatchRun, ImageInput, OnResult, source_of

T = TypeVar("T")
_CHUNK = 1024 * 1024


class AsyncClient(ClientBase):
    """``async with AsyncClient(url, api_key=...) as client: await client.classify(...)``.
    The arguments are :class:`~imageiq.client.sync_client.Client`'s."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3,
        deadline_s: float | None = None,
        max_retry_wait_s: float = 60.0,
        concurrency: int = 4,
        max_batch_images: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            deadline_s=deadline_s,
            max_retry_wait_s=max_retry_wait_s,
            concurrency=concurrency,
            max_batch_images=max_batch_images,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(transport=transport, timeout=self.timeout)
        self._sleep = sleep
        self.images = AsyncImages(self)
        self.jobs = AsyncJobs(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def send(self, call: calls.Call[T], *, deadline: float | None = None) -> T:
        """As :meth:`Client.send`."""
        if deadline is None:
            deadline = self.policy.deadline()
        attempt = 0
        while True:
            error: api_errors.ImageIQError
            cause: BaseException | None = None
            try:
                response = await self._attempt(call, deadline)
            except httpx.TransportError as e:
                error, cause = api_errors.from_transport(e), e
                retryable = transport_retryable(e, idempotent=call.idempotent)
            else:
                if response.status_code < 400:
                    return call.parse(response)
                error, retryable = self._error(response), self._retryable(response, call)
            wait_s = self.policy.wait_before_retry(
                error, attempt=attempt, retryable=retryable, deadline=deadline
            )
            if wait_s is None:
                raise error from cause
            await self._sleep(wait_s)
            attempt += 1

    async def _attempt(self, call: calls.Call[Any], deadline: float | None) -> httpx.Response:
        # Reading a path's bytes (multipart) happens in a worker thread, off the loop.
        args = await asyncio.to_thread(self._request_args, call)
        timeout = attempt_timeout(self.timeout, deadline)
        if call.upload is not None:
            args["content"] = _file_chunks(call.upload)
        return await self._http.request(call.method, self._url(call), timeout=timeout, **args)

    async def classify(
        self,
        image: ImageInput,
        *,
        top_k: int | None = None,
        min_confidence: float | None = None,
        model: str | None = None,
        store: bool | None = None,
    ) -> r.Classification:
        options = {"top_k": top_k, "min_confidence": min_confidence, "model": model}
        return await self.send(calls.classify(source_of(image), store=store, **options))

    async def classify_batch(
        self,
        images: Iterable[ImageInput],
        *,
        top_k: int | None = None,
        min_confidence: float | None = None,
        model: str | None = None,
        store: bool | None = None,
        concurrency: int | None = None,
        on_result: OnResult | None = None,
    ) -> r.BatchResult:
        """As :meth:`Client.classify_batch`; a fatal error cancels the chunks still running."""
        run = BatchRun(list(images), on_result=on_result)
        options = {"top_k": top_k, "min_confidence": min_confidence, "model": model}
        options["store"] = store
        deadline = self.policy.deadline()
        slots = asyncio.Semaphore(concurrency or self.concurrency)

        async def chunk(indices: list[int]) -> None:
            async with slots:
                await self._chunk(run, indices, options, deadline)

        tasks = [
            asyncio.ensure_future(chunk(c)) for c in self.limits.plan(run.sources, run.readable)
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return run.result()

    async def _chunk(
        self, run: BatchRun, indices: list[int], options: dict[str, Any], deadline: float | None
    ) -> None:
        run.count_request()
        try:
            items = await self.send(
                calls.classify_chunk(run.sources, indices, **options), deadline=deadline
            )
        except api_errors.APIError as e:
            parts = run.resplit(e, indices, self.limits)
            if parts is not None:
                for part in parts:
                    await self._chunk(run, part, options, deadline)
                return
            items = run.failed(e, indices)
        except (api_errors.ImageIQError, OSError) as e:
            items = run.failed(e, indices)
        run.done(items)

    async def categories(self, *, model: str | None = None) -> r.Categories:
        return await self.send(calls.categories(model=model))

    async def models(self) -> r.Models:
        return await self.send(calls.models())

    async def whoami(self) -> r.Whoami:
        return await self.send(calls.whoami())

    async def feedback(
        self,
        image_id: str,
        *,
        label: str | None = None,
        attributes: dict[str, str] | None = None,
        source: str = "user",
        new_label: bool = False,
    ) -> r.Label:
        return await self.send(
            calls.feedback(
                image_id, label=label, attributes=attributes, source=source, new_label=new_label
            )
        )


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk


class AsyncImages:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, image_id: str) -> r.ImageDetail:
        return await self._client.send(calls.get_image(image_id))

    async def content(self, image_id: str) -> bytes:
        return await self._client.send(calls.image_content(image_id))

    async def list(self, *, limit: int = 20, offset: int = 0, **filters: Any) -> r.ImagePage:
        return await self._client.send(calls.list_images(limit=limit, offset=offset, **filters))

    async def delete(self, image_id: str) -> r.Deleted:
        return await self._client.send(calls.delete_image(image_id))


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def submit(
        self,
        *,
        s3_prefix: str | None = None,
        manifest: str | None = None,
        image_ids: Sequence[str] | None = None,
        archive: str | Path | None = None,
        model: str | None = None,
        top_k: int | None = None,
        min_confidence: float | None = None,
        callback_url: str | None = None,
        progress_webhooks: bool = False,
    ) -> r.JobCreated:
        return await self._client.send(
            calls.submit_job(
                s3_prefix=s3_prefix,
                manifest=manifest,
                image_ids=image_ids,
                archive=archive,
                model=model,
                top_k=top_k,
                min_confidence=min_confidence,
                callback_url=callback_url,
                progress_webhooks=progress_webhooks,
            )
        )

    async def get(self, job_id: str) -> r.Job:
        return await self._client.send(calls.get_job(job_id))

    async def list(self, *, limit: int = 50) -> builtins.list[r.Job]:
        return await self._client.send(calls.list_jobs(limit=limit))

    async def results(self, job_id: str) -> builtins.list[r.JobResultLine]:
        return await self._client.send(calls.job_results(job_id))

    async def cancel(self, job_id: str) -> r.Job:
        return await self._client.send(calls.cancel_job(job_id))

    async def wait(
        self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None
    ) -> r.Job:
        until = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.get(job_id)
            if job.finished or (until is not None and time.monotonic() >= until):
                return job
            await asyncio.sleep(poll_s)
