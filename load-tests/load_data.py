"""What the load test sends: the images, the bad requests and the staged load, kept as data.

No locust here (the runner and the tests import it). The images are generated in memory,
deterministically: scikit-learn's digits (they ship inside scikit-learn) rendered as PNG,
JPEG and WebP at two sizes; any folder given adds its JPEG, PNG and WebP files.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_SIZES = (8, 64)
_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Sample:
    """An image file and what the service must say about it."""

    name: str
    data: bytes
    format: str  # as the service reports it: PNG, JPEG, WEBP
    width: int  # as displayed (after EXIF orientation)
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def fresh(sample: Sample, nonce: bytes) -> Sample:
    """The same picture in other bytes (a comment chunk holding ``nonce``): a new sha256,
    so the prediction cache cannot answer and the request runs the model, as a new photo
    would. JPEG: a COM segment after SOI; PNG: a tEXt chunk after IHDR; WebP: a chunk at the
    end of the RIFF container."""
    data = sample.data
    if sample.format == "JPEG":
        data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(nonce) + 2) + nonce + data[2:]
    elif sample.format == "PNG":
        text = b"tEXtnonce\x00" + nonce
        crc = struct.pack(">I", zlib.crc32(text) & 0xFFFFFFFF)
        data = data[:33] + struct.pack(">I", len(text) - 4) + text + crc + data[33:]
    elif sample.format == "WEBP":
        chunk = b"NONC" + struct.pack("<I", len(nonce)) + nonce + b"\x00" * (len(nonce) % 2)
        data = b"RIFF" + struct.pack("<I", len(data) - 8 + len(chunk)) + data[8:] + chunk
    return replace(sample, data=data)


def digit_samples() -> list[Sample]:
    """The first scan of each digit, at 8 and 64 px, in each format: 60 small files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    samples = []
    for digit in range(10):
        index = int(list(digits.target).index(digit))
        pixels = (digits.images[index] * (255.0 / 16.0)).round().astype("uint8")
        scan = Image.fromarray(pixels)
        for size in _SIZES:
            image = scan.resize((size, size), Image.Resampling.NEAREST)
            for fmt, suffix in _FORMATS.items():
                out = io.BytesIO()
                (image if fmt == "PNG" else image.convert("RGB")).save(out, fmt, quality=90)
                samples.append(
                    Sample(f"digit{digit}_{size}px.{suffix}", out.getvalue(), fmt, size, size)
                )
    return samples


def folder_samples(folder: Path) -> list[Sample]:
    """Every JPEG, PNG and WebP file under ``folder``, recursively, in path order."""
    if not folder.is_dir():
        raise SystemExit(f"--images: {folder} is not a folder")
    samples = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if image.getexif().get(0x0112) in _ROTATED:
                    width, height = height, width
                fmt = str(image.format)
        except OSError as e:
            raise SystemExit(f"--images: {path} is not a readable image ({e})") from e
        samples.append(Sample(str(path.relative_to(folder)), data, fmt, width, height))
    if not samples:
        raise SystemExit(f"--images: no {', '.join(IMAGE_SUFFIXES)} files under {folder}")
    return samples


# --- bad requests ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BadRequest:
    """A request the service must refuse with ``status`` and the error ``code``.

    ``auth``: "key" sends the load test's key, "none" no Authorization header, anything
    else is sent as the header as it is."""

    name: str
    status: int
    code: str
    path: str = "/v1/classify"
    method: str = "POST"
    auth: str = "key"
    files: list[tuple[str, tuple[str | None, bytes]]] = field(default_factory=list)
    data: dict[str, str] | None = None
    params: dict[str, str] | None = None
    body: bytes | None = None  # sent as is, with content_type
    content_type: str | None = None

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``requests``' ``request`` (besides method and URL)."""
        kwargs: dict[str, Any] = {"params": self.params}
        if self.files:
            kwargs["files"] = self.files
        if self.data is not None:
            kwargs["data"] = self.data
        headers: dict[str, str | None] = {}
        if self.body is not None:
            kwargs["data"] = self.body
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        if self.auth == "none":
            headers["Authorization"] = None  # drops the session's header
        elif self.auth != "key":
            headers["Authorization"] = self.auth
        kwargs["headers"] = headers
        return kwargs


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels and that holds almost nothing: a
    decompression bomb must be refused from the header, before anything is allocated."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _bad_crc(png: bytes) -> bytes:
    """The same PNG with one byte of its header chunk changed (its CRC no longer matches)."""
    broken = bytearray(png)
    broken[20] ^= 0x01  # inside IHDR's width/height
    return bytes(broken)


def bad_requests(
    sample: Sample, *, max_batch_images: int, max_image_bytes: int
) -> list[BadRequest]:
    """One of each way of getting it wrong, with the answer the API documents for it
    (README, section Errors). ``sample`` is a valid image the broken ones are made from."""
    good, text = sample.data, b"not an image, just some text\n" * 8
    png = next(s.data for s in digit_samples() if s.format == "PNG")
    jpeg = next(s.data for s in digit_samples() if s.format == "JPEG")
    multipart, json = "multipart/form-data; boundary=x", "application/json"
    unnamed = b"--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--\r\n"

    def form(name: str, status: int, code: str, image: bytes = good, **kw: Any) -> BadRequest:
        return BadRequest(name, status, code, files=[("image", ("x.jpg", image))], **kw)

    def body(name: str, status: int, code: str, data: bytes, content_type: str) -> BadRequest:
        return BadRequest(name, status, code, body=data, content_type=content_type)

    return [
        form("no API key", 401, "unauthorized", auth="none"),
        form("unknown API key", 401, "unauthorized", auth="Bearer iiq_0123456789abcdef_nope"),
        form("not a bearer key", 401, "unauthorized", auth="Basic Zm9vOmJhcg=="),
        form("not an image", 415, "unsupported_image_format", text),
        form("truncated JPEG", 422, "corrupt_image", jpeg[: len(jpeg) // 2]),
        form("PNG with a bad CRC", 422, "corrupt_image", _bad_crc(png)),
        form("empty image file", 400, "empty_image", b""),
        form("too many pixels", 413, "image_too_large", _png_claiming(30_000, 30_000)),
        form("image over the byte limit", 413, "payload_too_large", bytes(max_image_bytes + 1)),
        form("top_k=0", 422, "invalid_parameter", data={"top_k": "0"}),
        form("top_k=abc", 422, "invalid_parameter", params={"top_k": "abc"}),
        form("top_k=101", 422, "invalid_parameter", data={"top_k": "101"}),
        form("min_confidence=2", 422, "invalid_parameter", data={"min_confidence": "2"}),
        form("unknown option", 422, "invalid_parameter", data={"topk": "3"}),
        form("unknown model", 404, "model_not_found", data={"model": "no-such-model"}),
        form("model not a tag", 422, "invalid_parameter", params={"model": "No Such!"}),
        BadRequest("wrong field name", 422, "missing_image", files=[("file", ("x.jpg", good))]),
        BadRequest("two images", 422, "invalid_parameter", files=[("image", ("x.jpg", good))] * 2),
        body("empty multipart body", 422, "missing_image", b"", multipart),
        body("multipart part without a name", 400, "malformed_request", unnamed, multipart),
        body("no multipart boundary", 400, "malformed_request", b"--x\r\n", "multipart/form-data"),
        body("text/plain body", 415, "unsupported_media_type", text, "text/plain"),
        body("empty JSON", 400, "malformed_request", b"", json),
        body("invalid JSON", 400, "malformed_request", b'{"image_b64": ', json),
        # More values than any request holds: refused unparsed (imageiq's value count).
        body("JSON nested too deeply", 413, "payload_too_large", b"[" * 10**5 + b"]" * 10**5, json),
        body("JSON not an object", 400, "invalid_request", b"[1, 2]", json),
        body("JSON without image_b64", 422, "missing_image", b'{"top_k": 3}', json),
        body("invalid base64", 422, "invalid_base64", b'{"image_b64": "%%%"}', json),
        BadRequest("GET /v1/classify", 405, "method_not_allowed", method="GET"),
        BadRequest("unknown path", 404, "not_found", path="/v1/classify/nope"),
        BadRequest(
            "batch without images",
            422,
            "missing_image",
            path="/v1/classify/batch",
            files=[("top_k", (None, b"3"))],
        ),
        BadRequest(
            "batch too large",
            413,
            "too_many_images",
            path="/v1/classify/batch",
            files=[("images", ("x.jpg", good))] * (max_batch_images + 1),
        ),
    ]


# --- the staged load ------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    seconds: float  # how long this stage lasts
    users: int  # users running during it
    spawn_rate: float  # users started (or stopped) per second to get there


# Smoke: CI's short run (45 s, 8 users at most). Default: ramp up, hold the peak, ramp down.
STAGES = {
    "smoke": [Stage(10, 4, 4), Stage(25, 8, 4), Stage(10, 4, 4)],
    "default": [Stage(30, 4, 2), Stage(60, 8, 2), Stage(60, 16, 2), Stage(30, 4, 4)],
}


def scaled(stages: list[Stage], *, peak_users: int | None, min_users: int) -> list[Stage]:
    """The stages with their user counts scaled so that the busiest has ``peak_users``
    (as they are without), never fewer than ``min_users`` (one per persona)."""
    top = max(s.users for s in stages)
    factor = (peak_users or top) / top
    return [
        Stage(s.seconds, max(min_users, round(s.users * factor)), s.spawn_rate * max(1.0, factor))
        for s in stages
    ]
