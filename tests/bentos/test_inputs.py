"""Reading multipart classify requests (bentos/inputs.py) on its own, through httpx's ASGI
transport: large files stay in memory, and broken multipart is a 400 in the domain's terms."""

from __future__ import annotations

import os

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

from bentos.inputs import Limits, read_classify
from imageiq import errors

pytestmark = pytest.mark.anyio
LIMITS = Limits(max_image_bytes=8 * 1024 * 1024, max_images=4, default_top_k=3)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _read(request: Request) -> JSONResponse:
    try:
        params, upload = await read_classify(request, LIMITS)
    except errors.ImageIQError as e:
        return JSONResponse({"code": e.code, "message": e.message}, status_code=e.status)
    return JSONResponse(
        {"top_k": params.top_k, "bytes": len(upload.data), "head": upload.data[:8].hex()}
    )


def _client() -> httpx.AsyncClient:
    app = Router(routes=[Route("/classify", _read, methods=["POST"])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
def no_disk_spool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails any write to a temporary file: the reader must not spool uploads to disk."""
    import tempfile

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was spooled to a temporary file on disk")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", refuse)


async def test_a_file_over_one_megabyte_is_read_whole_in_memory(no_disk_spool: None) -> None:
    data = b"\xff\xd8" + os.urandom(3 * 1024 * 1024)  # past Starlette's 1 MB spool
    async with _client() as client:
        resp = await client.post(
            "/classify", files={"image": ("big.jpg", data, "image/jpeg")}, data={"top_k": "2"}
        )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"top_k": 2, "bytes": len(data), "head": data[:8].hex()}


async def test_a_file_past_the_image_limit_is_refused() -> None:
    data = b"\0" * (LIMITS.max_image_bytes + 1)
    async with _client() as client:
        resp = await client.post("/classify", files={"image": ("big.jpg", data, "image/jpeg")})
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"garbage", "multipart/form-data"),  # no boundary
        (
            b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),
    ],
    ids=["no-boundary", "part-without-name", "broken-header"],
)
async def test_broken_multipart_is_a_malformed_request(body: bytes, content_type: str) -> None:
    async with _client() as client:
        resp = await client.post("/classify", content=body, headers={"content-type": content_type})
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "malformed_request"
