"""RequestGuard on its own: a real ASGI app behind it, driven through httpx's ASGI transport."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

from bentos.http import RequestGuard
from imageiq.settings import Settings

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


def _guarded(
    *,
    max_body: int = 1000,
    timeout_s: float = 5.0,
    **settings: object,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(
            app=_guard(max_body=max_body, timeout_s=timeout_s, **settings)
        ),
        base_url="http://t",
    )


def _guard(*, max_body: int = 1000, timeout_s: float = 5.0, **settings: object) -> RequestGuard:
    # A bare router: no error middleware of its own, so whatever escapes reaches the guard.
    app = Router(
        routes=[
            Route("/echo", _echo, methods=["POST"]),
            Route("/slow", _slow),
            Route("/broken", _broken),
        ]
    )
    options: dict[str, object] = {"auth_enabled": False, "max_in_flight": 8} | settings
    guard = RequestGuard(app, settings=Settings(**options))  # type: ignore[arg-type]
    guard.max_body_bytes = lambda _: max_body  # type: ignore[method-assign]
    guard.timeout_s = timeout_s  # type: ignore[assignment]
    return guard


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
    # The request id is the server's own; the client's is kept apart and echoed back.
    server_id = resp.headers["x-request-id"]
    assert server_id != "trace-me" and resp.headers["x-client-request-id"] == "trace-me"
    assert any(server_id in r.getMessage() and r.exc_info for r in caplog.records)


async def test_byte_budget_refuses_what_does_not_fit_now_and_what_never_fits() -> None:
    # JSON costs 4x its bytes: a 900-byte body takes 3600 of the 4000-byte budget.
    async with _guarded(max_in_flight_bytes=4000) as client:
        json_body = {"content-type": "application/json"}
        assert (
            await client.post("/echo", content=b"x" * 900, headers=json_body)
        ).status_code == 200

        release = asyncio.Event()

        async def trickle():  # holds its share while it streams
            yield b"x" * 900
            await release.wait()
            yield b"x"

        held = asyncio.create_task(
            client.post("/echo", content=trickle(), headers=json_body | {"content-length": "901"})
        )
        await asyncio.sleep(0.1)
        resp = await client.post("/echo", content=b"x" * 200, headers=json_body)
        assert resp.status_code == 503 and _code(resp) == "overloaded"
        assert resp.headers["retry-after"] == "1" and resp.headers["connection"] == "close"
        release.set()
        assert (await held).status_code == 200
        # Given back: the same request now fits.
        assert (
            await client.post("/echo", content=b"x" * 200, headers=json_body)
        ).status_code == 200
    async with _guarded(max_in_flight_bytes=2000) as client:  # 900 x 4 can never fit
        resp = await client.post("/echo", content=b"x" * 900, headers=json_body)
        assert resp.status_code == 413 and _code(resp) == "payload_too_large"


async def test_a_stalled_body_gets_408_within_the_body_deadline() -> None:
    async with _guarded(body_timeout_s=0.3) as client:

        async def stall():
            yield b"x" * 10
            await asyncio.sleep(30)
            yield b"x"

        started = asyncio.get_running_loop().time()
        resp = await client.post("/echo", content=stall(), headers={"content-length": "11"})
        assert resp.status_code == 408 and _code(resp) == "body_timeout"
        assert asyncio.get_running_loop().time() - started < 5


async def test_a_client_that_leaves_mid_upload_is_a_499_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = _guard()
    messages = [
        {"type": "http.request", "body": b"x" * 10, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "root_path": "",
        "headers": [(b"content-length", b"100")],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
    }
    with caplog.at_level("INFO"):
        await guard(scope, receive, send)  # type: ignore[arg-type]
    access = [r for r in caplog.records if r.name == "imageiq.access"]
    assert [(r.status, r.code) for r in access] == [(499, "client_closed_request")]  # type: ignore[attr-defined]
    assert not any(r.levelname == "ERROR" for r in caplog.records)
