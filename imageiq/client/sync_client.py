"""The blocking client.

``classify_batch`` sends its chunks from a thread pool over the one ``httpx.Client``
(whose connection pool is thread-safe), not by running :class:`AsyncClient` in an event
loop of its own: ``asyncio.run`` cannot be called where a loop already runs (a notebook,
an async web app calling sync code), and the waiting is on the network, which threads do
as well as coroutines for a handful of requests in flight.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import httpx

from imageiq.client import api_errors, calls
from imageiq.client import responses as r
from imageiq.client.base import DEFAULT_URL, ClientBase
from imageiq.client.retrying import attempt_timeout, transport_retryable
from imageiq.client.uploads import BatchRun, ImageInput, OnResult, source_of

T = TypeVar("T")


class Client(ClientBase):
    """``Client(url, api_key=...)``; use it as a context manager or call :meth:`close`.

    ``timeout``: seconds per attempt (or an ``httpx.Timeout``); ``max_retries``: further
    attempts after a retryable failure (:mod:`imageiq.client.retrying`); ``deadline_s``: a
    bound on a whole call, retries included; ``concurrency``: batch requests in flight.
    ``transport`` or ``http_client`` replace the network (a mock transport, a proxy, event
    hooks); a client passed in is not closed by this one."""

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
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
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
        self._http = http_client or httpx.Client(transport=transport, timeout=self.timeout)
        self._sleep = sleep
        self.images = Images(self)
        self.jobs = Jobs(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # --- sending, with retries ------------------------------------------------------------
    def send(self, call: calls.Call[T], *, deadline: float | None = None) -> T:
        """``call`` sent, retried as :mod:`imageiq.client.retrying` says, its answer parsed."""
        if deadline is None:
            deadline = self.policy.deadline()
        attempt = 0
        while True:
            error: api_errors.ImageIQError
            cause: BaseException | None = None
            try:
                response = self._attempt(call, deadline)
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
            self._sleep(wait_s)
            attempt += 1

    def _attempt(self, call: calls.Call[Any], deadline: float | None) -> httpx.Response:
        args = self._request_args(call)
        timeout = attempt_timeout(self.timeout, deadline)
        if call.upload is None:
            return self._http.request(call.method, self._url(call), timeout=timeout, **args)
        with call.upload.open("rb") as body:
            return self._http.request(
                call.method, self._url(call), content=body, timeout=timeout, **args
            )

    # --- the API --------------------------------------------------------------------------
    def classify(
        self,
        image: ImageInput,
        *,
        top_k: int | None = None,
        min_confidence: float | None = None,
        model: str | None = None,
        store: bool | None = None,
    ) -> r.Classification:
        """One image: a path, bytes, a binary file object or a PIL image."""
        options = {"top_k": top_k, "min_confidence": min_confidence, "model": model}
        return self.send(calls.classify(source_of(image), store=store, **options))

    def classify_batch(
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
        """Any number of images, in as many batch requests as the server's limits need,
        ``concurrency`` of them in flight. Results come back in input order; an image that
        failed (or whose request did after its retries) has ``error`` set and does not fail
        the others. Errors every request would get (the key, the options, the model) are
        raised. ``on_result`` sees each item as it is answered (from a worker thread)."""
        run = _Batch(self, list(images), on_result=on_result)
        options = {"top_k": top_k, "min_confidence": min_confidence, "model": model}
        return run.execute(dict(options, store=store), concurrency or self.concurrency)

    def categories(self, *, model: str | None = None) -> r.Categories:
        return self.send(calls.categories(model=model))

    def models(self) -> r.Models:
        return self.send(calls.models())

    def whoami(self) -> r.Whoami:
        return self.send(calls.whoami())

    def feedback(
        self,
        image_id: str,
        *,
        label: str | None = None,
        attributes: dict[str, str] | None = None,
        source: str = "user",
        new_label: bool = False,
    ) -> r.Label:
        """A stored image's true label and/or attribute values (``POST
        /v1/images/{id}/labels``; the image was classified with ``store=True``)."""
        return self.send(
            calls.feedback(
                image_id, label=label, attributes=attributes, source=source, new_label=new_label
            )
        )


class _Batch(BatchRun):
    """One ``classify_batch``: its chunks from a thread pool."""

    def __init__(self, client: Client, images: list[ImageInput], *, on_result: OnResult | None):
        super().__init__(images, on_result=on_result)
        self.client = client

    def execute(self, options: dict[str, Any], concurrency: int) -> r.BatchResult:
        deadline = self.client.policy.deadline()
        chunks = self.client.limits.plan(self.sources, self.readable)
        if chunks:
            with ThreadPoolExecutor(max_workers=min(concurrency, len(chunks))) as pool:
                futures = [pool.submit(self._chunk, c, options, deadline) for c in chunks]
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for future in pending:
                    future.cancel()
                for future in done:
                    future.result()  # the first fatal error, raised here
        return self.result()

    def _chunk(self, indices: list[int], options: dict[str, Any], deadline: float | None) -> None:
        self.count_request()
        try:
            items = self.client.send(
                calls.classify_chunk(self.sources, indices, **options), deadline=deadline
            )
        except api_errors.APIError as e:
            parts = self.resplit(e, indices, self.client.limits)
            if parts is not None:
                for part in parts:
                    self._chunk(part, options, deadline)
                return
            items = self.failed(e, indices)
        except (api_errors.ImageIQError, OSError) as e:
            items = self.failed(e, indices)
        self.done(items)


class Images:
    """Stored images (``label`` scope; deleting needs ``admin``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, image_id: str) -> r.ImageDetail:
        return self._client.send(calls.get_image(image_id))

    def content(self, image_id: str) -> bytes:
        return self._client.send(calls.image_content(image_id))

    def list(self, *, limit: int = 20, offset: int = 0, **filters: Any) -> r.ImagePage:
        """Newest first; ``filters`` as ``GET /v1/images`` takes them (label, source,
        predicted_label, min_confidence, model, created_after, ...)."""
        return self._client.send(calls.list_images(limit=limit, offset=offset, **filters))

    def delete(self, image_id: str) -> r.Deleted:
        return self._client.send(calls.delete_image(image_id))


class Jobs:
    """Bulk jobs (``/v1/jobs``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(
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
        """Exactly one source: an S3 prefix, a manifest, stored image ids or a local archive
        (zip or tar, uploaded)."""
        return self._client.send(
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

    def get(self, job_id: str) -> r.Job:
        return self._client.send(calls.get_job(job_id))

    def list(self, *, limit: int = 50) -> builtins.list[r.Job]:
        return self._client.send(calls.list_jobs(limit=limit))

    def results(self, job_id: str) -> builtins.list[r.JobResultLine]:
        return self._client.send(calls.job_results(job_id))

    def cancel(self, job_id: str) -> r.Job:
        return self._client.send(calls.cancel_job(job_id))

    def wait(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None) -> r.Job:
        """Polls until the job has ended (or ``timeout_s`` passed: the job as it is then)."""
        until = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job.finished or (until is not None and time.monotonic() >= until):
                return job
            time.sleep(poll_s)
