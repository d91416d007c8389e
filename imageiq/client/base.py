"""What the sync and async clients share: their settings, the request a :class:`Call`
becomes, and how an answer becomes a result or an exception."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx

from imageiq import __version__
from imageiq.client import api_errors
from imageiq.client.calls import Call
from imageiq.client.retrying import RetryPolicy, parse_retry_after, status_retryable
from imageiq.client.uploads import BatchLimits

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:3000"


class ClientBase:
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
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.policy = RetryPolicy(
            max_retries=max_retries, deadline_s=deadline_s, max_wait_s=max_retry_wait_s
        )
        self.concurrency = concurrency
        self.limits = BatchLimits(**({"max_images": max_batch_images} if max_batch_images else {}))

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _request_args(self, call: Call[Any]) -> dict[str, Any]:
        """httpx ``request()`` arguments of one attempt (a body from a path is read here)."""
        headers = {"Accept": "application/json", "User-Agent": f"imageiq-python/{__version__}"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        headers.update(call.headers)
        args: dict[str, Any] = {"headers": headers}
        if call.params:
            args["params"] = call.params
        if call.json is not None:
            args["json"] = call.json
        if call.files is not None:
            args["files"] = call.files()
            args["data"] = call.data or {}
        return args

    def _url(self, call: Call[Any]) -> str:
        return f"{self.base_url}{call.path}"

    @staticmethod
    def _error(response: httpx.Response) -> api_errors.APIError:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return api_errors.from_response(response, retry_after=retry_after)

    @staticmethod
    def _retryable(response: httpx.Response, call: Call[Any]) -> bool:
        return status_retryable(response.status_code, idempotent=call.idempotent)
