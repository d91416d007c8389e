"""Reading the two request shapes of the classify endpoints into images and options.

``multipart/form-data`` (files in ``image`` / ``images``, options as fields) or JSON
(``image_b64`` / ``images_b64`` and options as keys); options may also come in the query
string. Unknown fields are refused, so a typo such as ``topk`` is a 422, not a silent
default. For the batch endpoint a bad image does not fail the request: it becomes an
:class:`Upload` with an ``error``, answered in that image's result.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from bentos.schemas import BatchJSON, ClassifyJSON, ClassifyParams
from imageiq import errors

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
# JSON bodies (and base64 texts) larger than this are parsed (decoded) in a worker thread.
INLINE_JSON_BYTES = 256 * 1024
# Multipart parts parsed before counting (the body size limit bounds them anyway), so that
# too many images is answered by the rule about images, not the parser's.
_MAX_PARTS = 1000
MULTIPART = "multipart/form-data"
JSON = "application/json"


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes = b""
    error: errors.ImageIQError | None = None


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_images: int
    default_top_k: int


async def read_classify(request: Request, limits: Limits) -> tuple[ClassifyParams, Upload]:
    kind = _content_kind(request)
    if kind == JSON:
        body = _validated(
            ClassifyJSON,
            await _json(request, limits),
            limits,
            request=request,
            file_field="image_b64",
            strict=True,
        )
        upload = await _decoded(lambda: _from_b64(body.image_b64, None, limits), body.image_b64)
        if upload.error:
            raise upload.error
        return _params(body), upload
    form = await _multipart(request)
    try:
        files = form.getlist("image")
        if not files or not isinstance(files[0], UploadFile):
            raise errors.MissingImage("The multipart field 'image' must carry an image file.")
        fields = {k: v for k, v in form.multi_items() if k != "image"}
        params = _validated(ClassifyParams, fields, limits, request=request, file_field="image")
        if len(files) > 1:
            raise errors.InvalidParameter(
                "Send one 'image' per request; several go to /v1/classify/batch."
            )
        upload = await _from_file(files[0], limits)
    finally:
        await form.close()
    if upload.error:
        raise upload.error
    return params, upload


async def read_batch(request: Request, limits: Limits) -> tuple[ClassifyParams, list[Upload]]:
    kind = _content_kind(request)
    if kind == JSON:
        payload = await _json(request, limits)
        if isinstance(payload, dict) and isinstance(payload.get("images_b64"), list):
            _check_count(len(payload["images_b64"]), limits)
        body = _validated(
            BatchJSON, payload, limits, request=request, file_field="images_b64", strict=True
        )
        del payload
        uploads = await _decoded(
            lambda: [_from_b64(b64, None, limits) for b64 in body.images_b64], *body.images_b64
        )
        return _params(body), uploads
    form = await _multipart(request)
    try:
        items = form.getlist("images")
        _check_count(len(items), limits)
        fields = {k: v for k, v in form.multi_items() if k != "images"}
        params = _validated(ClassifyParams, fields, limits, request=request, file_field="images")
        # A text part is the request's mistake, not an image's (as on /v1/classify).
        for i, item in enumerate(items):
            if not isinstance(item, UploadFile):
                raise errors.MissingImage(
                    f"images[{i}] is a text value, not a file: send each image as a file part.",
                    details={"index": i},
                )
        uploads = [await _from_file(item, limits) for item in items if isinstance(item, UploadFile)]
    finally:
        await form.close()
    return params, uploads


async def _decoded(decode: Callable[[], R], *texts: str) -> R:
    """``decode()`` (base64 to bytes) here, or in a worker thread when the text is large."""
    if sum(len(t) for t in texts) > INLINE_JSON_BYTES:
        return await anyio.to_thread.run_sync(decode)
    return decode()


def _content_kind(request: Request) -> str:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == MULTIPART or (media == JSON or media.endswith("+json")):
        return MULTIPART if media == MULTIPART else JSON
    raise errors.UnsupportedMediaType(
        "Send multipart/form-data (image files) or application/json (base64 images); "
        f"got {content_type[:100] or 'no content type'}."
    )


async def _multipart(request: Request) -> FormData:
    """The multipart form, its files kept in memory. Starlette's ``request.form()`` spools
    a file past 1 MB to a temporary file on disk, each further chunk written through a
    worker thread: a 4000x3000 camera JPEG spent milliseconds there. In memory is bounded:
    RequestGuard (bentos/http.py) caps the body before it reaches this, and the image is
    read into memory right after anyway."""
    try:
        async with aclosing(request.stream()) as stream:
            parser = MultiPartParser(
                request.headers, stream, max_files=_MAX_PARTS, max_fields=_MAX_PARTS
            )
            parser.spool_max_size = 0  # SpooledTemporaryFile: 0 never rolls over to disk
            return await parser.parse()
    except MultiPartException as e:
        raise errors.MalformedRequest(e.message) from None


async def _json(request: Request, limits: Limits) -> Any:
    """The parsed JSON body. Its values are counted first (a C-speed scan for the bytes
    that open or separate them), so a body of a million tiny values, which parsing would
    blow up twenty-fold in memory, is refused unparsed; a large body is parsed in a worker
    thread, not on the event loop."""
    raw = await request.body()
    if not raw:
        raise errors.MalformedRequest("The JSON body is empty.")
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    most = _json_values(limits)
    if values > most:
        raise errors.PayloadTooLarge(
            f"The JSON body holds about {values} values; requests here need at most {most}.",
            details={"max_values": most},
        )
    if len(raw) > INLINE_JSON_BYTES:
        return await anyio.to_thread.run_sync(_parse_json, raw)
    return _parse_json(raw)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.MalformedRequest(f"The body is not valid JSON ({e}).") from None
    except RecursionError:  # e.g. [[[[...]]]] nested deeper than the parser's stack
        raise errors.MalformedRequest("The JSON body is nested too deeply.") from None


def _json_values(limits: Limits) -> int:
    """Values a valid body may hold: each image's string (a data: URI adds a comma), the
    options, and room for whitespace-free layouts of both."""
    return 4 * limits.max_images + 256


def _validated(
    model: type[M],
    payload: Any,
    limits: Limits | None,
    *,
    request: Request,
    file_field: str,
    strict: bool = False,
) -> M:
    """``payload`` and the query string as ``model`` (the classify defaults under them when
    ``limits`` is given), or the 4xx that says what is wrong. ``strict``: the payload is
    JSON, whose values must have the schema's types (``"top_k": "5"`` and ``"store": 0``
    are refused); the query string's and form fields' are text, read as their types."""
    if not isinstance(payload, dict):
        raise errors.InvalidRequest("The JSON body must be an object.")
    defaults = {"top_k": limits.default_top_k} if limits is not None else {}
    data = {**defaults, **request.query_params, **payload}
    try:
        validated = model.model_validate(data)
        if strict:
            validated = model.model_validate({**validated.model_dump(), **payload}, strict=True)
        else:
            _check_form_booleans(model, payload)
        return validated
    except ValidationError as e:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": _message(err)}
            for err in e.errors(include_url=False)
        ]
        if any(p["field"].split(".")[0] == file_field for p in problems):
            raise errors.MissingImage(
                f"'{file_field}' is missing or not what it should be.",
                details={"problems": problems},
            ) from None
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise errors.InvalidParameter(summary, details={"problems": problems}) from None


def _check_form_booleans(model: type[BaseModel], fields: dict[str, Any]) -> None:
    """A form field for a boolean option says ``true`` or ``false`` (as the schema's
    boolean reads in a form), not pydantic's other spellings (``0``, ``yes``, ``on``)."""
    for name, value in fields.items():
        info = model.model_fields.get(name)
        boolean = info is not None and info.annotation is bool
        if boolean and isinstance(value, str) and value.strip().lower() not in ("true", "false"):
            raise errors.InvalidParameter(
                f"{name}: send true or false, not {value[:20]!r}.",
                details={"problems": [{"field": name, "message": "true or false"}]},
            )


def _params(body: ClassifyParams) -> ClassifyParams:
    return ClassifyParams(
        top_k=body.top_k, min_confidence=body.min_confidence, model=body.model, store=body.store
    )


def _check_count(n: int, limits: Limits) -> None:
    if n == 0:
        raise errors.MissingImage("Send at least one image in 'images'.")
    if n > limits.max_images:
        raise errors.TooManyImages(
            f"{n} images in one request; at most {limits.max_images} are accepted.",
            details={"max_images": limits.max_images},
        )


async def _from_file(upload: UploadFile, limits: Limits) -> Upload:
    data = await upload.read(limits.max_image_bytes + 1)
    return _checked(upload.filename, data, limits)


def _from_b64(text: str, filename: str | None, limits: Limits) -> Upload:
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    text = "".join(text.split())  # line-wrapped base64 (MIME) is common
    if len(text) > (limits.max_image_bytes + 2) // 3 * 4 + 4:
        return Upload(filename, error=_too_large(limits))
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return Upload(filename, error=errors.InvalidBase64("The image is not valid base64."))
    return _checked(filename, data, limits)


def _checked(filename: str | None, data: bytes, limits: Limits) -> Upload:
    if len(data) > limits.max_image_bytes:
        return Upload(filename, error=_too_large(limits))
    if not data:
        return Upload(filename, error=errors.EmptyImage("The image is empty (0 bytes)."))
    return Upload(filename, data)


def _too_large(limits: Limits) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"The image is larger than {limits.max_image_bytes} bytes.",
        details={"max_bytes": limits.max_image_bytes},
    )


def _message(error: Any) -> str:
    if error["type"] == "string_pattern_mismatch" and error["loc"] == ("model",):
        return "not a model tag: a name or name:version, lowercase"
    return str(error["msg"])
