"""RequestGuard on its own: a real ASGI app behind it, driven through httpx's ASGI transport."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

from bentos.http import RequestGuard

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


async def _slow(request: Request) -> JSONResponse:
    await asyncio.sleep(float(request.query_params.get("s", "5")))
    return JSONResponse({"slept": True})


async def _broken(request: Request) -> JSONResponse:
    raise RuntimeError("a bug")


def _guarded(**options: object) -> httpx.AsyncClient:
    # A bare router: no error middleware of its own, so whatever escapes reaches the guard.
    app = Router(
        routes=[
            Route("/echo", _echo, methods=["POST"]),
            Route("/slow", _slow),
            Route("/broken", _broken),
        ]
    )
    settings = {"max_body_bytes": lambda _: 1000, "max_in_flight": 8, "timeout_s": 5.0} | options
    guard = RequestGuard(app, **settings)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t")


def _code(resp: httpx.Response) -> str:
    assert resp.headers["x-request-id"] == resp.json()["error"]["request_id"]
    return resp.json()["error"]["code"]


async def test_body_cap_with_and_without_content_length() -> None:
    async with _guarded() as client:
        assert (await client.post("/echo", content=b"x" * 1000)).json() == {"bytes": 1000}
        resp = await client.post("/echo", content=b"x" * 1001)
        assert resp.status_code == 413 and _code(resp) == "payload_too_large"

        async def stream():  # chunked: no Content-Length
            for _ in range(5):
                yield b"x" * 300

        resp = await client.post("/echo", content=stream())
        assert resp.status_code == 413 and _code(resp) == "payload_too_large"


async def test_deadline_answers_504_in_the_envelope() -> None:
    async with _guarded(timeout_s=0.2) as client:
        resp = await client.get("/slow", params={"s": "5"})
        assert resp.status_code == 504 and _code(resp) == "timeout"
        assert (await client.get("/slow", params={"s": "0"})).status_code == 200


async def test_in_flight_cap_answers_503() -> None:
    async with _guarded(max_in_flight=2) as client:
        slow = [asyncio.create_task(client.get("/slow", params={"s": "0.5"})) for _ in range(2)]
        await asyncio.sleep(0.1)
        resp = await client.get("/slow", params={"s": "0"})
        assert resp.status_code == 503 and _code(resp) == "overloaded"
        assert resp.headers["retry-after"] == "1"
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
        assert (await client.get("/slow", params={"s": "0"})).status_code == 200


async def test_a_bug_is_a_500_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    async with _guarded() as client:
        resp = await client.get("/broken", headers={"X-Request-ID": "trace-me"})
    assert resp.status_code == 500 and _code(resp) == "internal_error"
    assert "a bug" not in resp.text  # no internals leak to the client
    assert any("trace-me" in r.getMessage() and r.exc_info for r in caplog.records)
