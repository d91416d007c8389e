"""The SDK's retry, deadline and error logic, on ``httpx.MockTransport``: exact timings and
orderings that a real server cannot be made to produce on demand. What the SDK does with
the real service is tested in tests/bentos/test_sdk.py."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from imageiq.client import (
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
)
from imageiq.client.retrying import RetryPolicy, parse_retry_after

OK_CATEGORIES = {"model": {"name": "m", "version": "v1"}, "labels": ["a", "b"], "attributes": {}}


def envelope(status: int, code: str, **headers: str) -> httpx.Response:
    error: dict[str, Any] = {"code": code, "message": f"{code}!", "request_id": "rid-1"}
    if code == "rate_limited":
        error["details"] = {"cost": 1, "burst": 5}
    body = {"error": error}
    return httpx.Response(status, json=body, headers={"X-Request-ID": "rid-1", **headers})


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[str]]:
    """A transport answering the given responses (or raising the given errors) in turn;
    the list records each request's method and path."""
    seen: list[str] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def client(transport: httpx.MockTransport, sleeps: list[float], **kwargs: object) -> Client:
    return Client("http://iq.test", api_key="k", transport=transport, sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]


def test_retry_after_as_seconds_or_http_date() -> None:
    now = datetime(2026, 12, 3, 8, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_429_waits_retry_after_then_succeeds() -> None:
    transport, seen = scripted(
        envelope(429, "rate_limited", **{"Retry-After": "2"}),
        httpx.Response(200, json=OK_CATEGORIES),
    )
    sleeps: list[float] = []
    with client(transport, sleeps) as c:
        assert c.categories().labels == ["a", "b"]
    assert sleeps == [2.0] and seen == ["GET /v1/categories"] * 2


def test_503_without_retry_after_backs_off_exponentially_with_jitter() -> None:
    transport, seen = scripted(
        *[envelope(503, "overloaded") for _ in range(3)], httpx.Response(200, json=OK_CATEGORIES)
    )
    sleeps: list[float] = []
    with client(transport, sleeps) as c:
        c.categories()
    policy = RetryPolicy()
    assert len(sleeps) == 3 and len(seen) == 4
    for attempt, slept in enumerate(sleeps):
        assert 0 <= slept <= policy.backoff_base_s * 2**attempt


def test_a_retry_past_the_deadline_is_not_attempted() -> None:
    transport, seen = scripted(envelope(429, "rate_limited", **{"Retry-After": "5"}))
    sleeps: list[float] = []
    with client(transport, sleeps, deadline_s=1.0) as c, pytest.raises(RateLimitedError) as e:
        c.categories()
    assert sleeps == [] and len(seen) == 1
    assert (e.value.status, e.value.code, e.value.retry_after) == (429, "rate_limited", 5.0)
    assert e.value.details == {"cost": 1, "burst": 5} and e.value.request_id == "rid-1"


def test_max_retries_bounds_the_attempts() -> None:
    transport, seen = scripted(*[envelope(503, "model_not_ready", **{"Retry-After": "1"})] * 3)
    sleeps: list[float] = []
    with client(transport, sleeps, max_retries=2) as c, pytest.raises(ServiceUnavailableError):
        c.models()
    assert sleeps == [1.0, 1.0] and len(seen) == 3


def test_502_is_retried_for_reads_but_not_for_a_job_submission() -> None:
    bad_gateway = httpx.Response(502, text="<html>bad gateway</html>")
    transport, seen = scripted(bad_gateway, httpx.Response(200, json=OK_CATEGORIES), bad_gateway)
    sleeps: list[float] = []
    with client(transport, sleeps) as c:
        c.categories()
        with pytest.raises(ServerError) as e:
            c.jobs.submit(image_ids=["a" * 64])
    assert seen == ["GET /v1/categories", "GET /v1/categories", "POST /v1/jobs"]
    assert (e.value.status, e.value.code) == (502, "http_502") and len(sleeps) == 1


def test_a_connection_never_made_is_retried_for_any_method() -> None:
    refused = httpx.ConnectError("refused")
    transport, seen = scripted(refused, refused)
    sleeps: list[float] = []
    with client(transport, sleeps, max_retries=1) as c, pytest.raises(TransportError) as e:
        c.jobs.cancel("0" * 32)
    assert len(seen) == 2 and e.value.status is None and e.value.code == "connection_error"
    assert isinstance(e.value.__cause__, httpx.ConnectError)


def test_errors_are_not_retried_and_keep_the_envelope() -> None:
    transport, seen = scripted(envelope(401, "unauthorized"))
    with client(transport, []) as c, pytest.raises(AuthenticationError) as e:
        c.models()
    assert len(seen) == 1 and isinstance(e.value, APIError)
    assert (e.value.status, e.value.code, e.value.request_id) == (401, "unauthorized", "rid-1")
    assert "unauthorized" in str(e.value) and "rid-1" in str(e.value)


def test_the_key_goes_in_the_header_and_never_in_repr() -> None:
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(200, json=OK_CATEGORIES)

    with Client(
        "http://iq.test", api_key="iiq_secret", transport=httpx.MockTransport(handler)
    ) as c:
        c.categories(model="m")
        assert "iiq_secret" not in repr(c)
    assert headers[0]["authorization"] == "Bearer iiq_secret"


def _batch_server(limit: int) -> tuple[httpx.MockTransport, list[int]]:
    """A batch endpoint refusing more than ``limit`` images as the service does, answering
    each image with its file name as label (a file named bad.* fails)."""
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        names = [part.split(b'"')[0].decode() for part in body.split(b'filename="')[1:]]
        sizes.append(len(names))
        if len(names) > limit:
            error = {"code": "too_many_images", "message": "no", "request_id": "r"}
            error["details"] = {"max_images": limit}  # type: ignore[assignment]
            return httpx.Response(413, json={"error": error})
        results: list[dict[str, object]] = []
        for i, name in enumerate(names):
            if name.startswith("bad"):
                results.append(
                    {
                        "index": i,
                        "error": {
                            "status": 415,
                            "code": "unsupported_image_format",
                            "message": "x",
                        },
                    }
                )
            else:
                results.append(
                    {"index": i, "filename": name, "predictions": [{"label": name, "score": 1.0}]}
                )
        return httpx.Response(
            200, json={"model": {"name": "m", "version": "v"}, "results": results}
        )

    return httpx.MockTransport(handler), sizes


def test_batch_learns_the_limit_from_413_and_keeps_input_order() -> None:
    transport, sizes = _batch_server(limit=3)
    images = [f"img{i}".encode() for i in range(10)]
    with Client("http://iq.test", transport=transport, max_batch_images=8, concurrency=1) as c:
        bad = io.BytesIO(b"not an image")
        bad.name = "bad.txt"
        result = c.classify_batch([*images[:4], bad, *images[4:]])
        assert c.limits.max_images == 3
    assert sizes[0] == 8 and max(sizes[1:]) <= 3
    assert [item.index for item in result.results] == list(range(11))
    labels = [item.top.label if item.top else None for item in result.results]
    assert labels == [f"image-{i}" for i in range(4)] + [None] + [
        f"image-{i}" for i in range(5, 11)
    ]
    assert (
        result.results[4].error is not None
        and result.results[4].error.code == "unsupported_image_format"
    )
    assert (result.succeeded, result.failed) == (10, 1)


def test_a_chunk_that_fails_for_good_fails_only_its_images() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return envelope(503, "overloaded", **{"Retry-After": "100"})  # past max wait
        body = request.read()
        n = body.count(b'filename="')
        results = [{"index": i, "predictions": [{"label": "x", "score": 1.0}]} for i in range(n)]
        return httpx.Response(
            200, json={"model": {"name": "m", "version": "v"}, "results": results}
        )

    transport = httpx.MockTransport(handler)
    with Client("http://iq.test", transport=transport, max_batch_images=2, concurrency=1) as c:
        result = c.classify_batch([b"a", b"b", b"c"])
    codes = [item.error.code if item.error else None for item in result.results]
    assert codes == ["overloaded", "overloaded", None] and result.failed == 2


def test_the_async_client_retries_the_same_way() -> None:
    transport, seen = scripted(
        envelope(429, "rate_limited", **{"Retry-After": "1"}),
        httpx.Response(200, json=OK_CATEGORIES),
    )
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> None:
        async_transport = httpx.MockTransport(transport.handler)
        async with AsyncClient("http://iq.test", transport=async_transport, sleep=fake_sleep) as c:
            assert (await c.categories()).labels == ["a", "b"]

    asyncio.run(main())
    assert sleeps == [1.0] and len(seen) == 2


def test_async_batch_learns_the_limit_and_keeps_order() -> None:
    transport, sizes = _batch_server(limit=4)

    async def main() -> list[str | None]:
        async with AsyncClient("http://iq.test", transport=transport, max_batch_images=6) as c:
            result = await c.classify_batch([f"{i}".encode() for i in range(13)])
        return [item.top.label if item.top else None for item in result.results]

    assert asyncio.run(main()) == [f"image-{i}" for i in range(13)]
    # The first chunks went out together, before the first refusal taught the limit.
    assert sorted(sizes)[-2:] == [6, 6] and sorted(sizes)[-3] <= 4


def test_the_sdk_imports_no_server_or_model_code() -> None:
    code = (
        "import sys, imageiq.client; "
        "print(sorted(m for m in ('torch', 'bentoml', 'fastapi', 'PIL', 'numpy', 'sqlalchemy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
