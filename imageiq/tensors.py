"""The Open Inference Protocol's (v2, KServe and Triton) tensors, without the HTTP.

A request's one input becomes the core's images (:meth:`imageiq.classify.Classification.classify`):

- ``BYTES``, shape ``[N]`` (or ``[N, 1]``): N encoded images (JPEG, PNG, ...), decoded and
  prepared by the server exactly as ``/v1`` does. In JSON each element is the image in
  base64 (KServe's convention; raw bytes are not JSON text); with the binary extension,
  the elements are the protocol's length-prefixed bytes.
- ``UINT8``, shape ``[N, 3, S, S]``: pixels the client already prepared at the model's
  input size S (colour, resize, centre crop), as the model's batches hold them.
- ``FP32``, shape ``[N, 3, S, S]``: the same, standardised with the model's mean and std
  (what torchvision's transforms produce); turned back into those pixels, each rounded to
  the nearest grey level (:meth:`imageiq.preprocessing.EvalTransform.denormalize_array`).

Each head of the model is an output: ``FP32 [N, C]``, every value's probability in the
card's order; with the classification extension (``"parameters": {"classification": k}``
on a requested output, or on the request for all of them) a ``BYTES [N, k]`` tensor of
``"score:index:label"`` strings, best first. The binary extension
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data`` /
``binary_data_output``) works both ways. A request the model cannot take is a 400
``invalid_tensor`` whose message says what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from imageiq import errors
from imageiq.architectures import MAIN_HEAD
from imageiq.classify import Classified, Pixels
from imageiq.inference import ModelIO

# The extensions this server implements (the server metadata lists them).
EXTENSIONS = ("classification", "binary_tensor_data")
IMAGE_INPUT = "image"  # the metadata's name for the BYTES input (any name is taken)
PIXELS_INPUT = "pixels"  # and for the tensor input
_PIXEL_TYPES: dict[str, np.dtype[Any]] = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}


# The protocol's parameters are scalars (KServe: bool, int64, string).
Parameters = dict[str, bool | int | float | str]
# A tensor's data: flat (row-major), or nested as its shape; scalars of its datatype.
_DATA_SCHEMA = {
    "type": "array",
    "description": "Row-major, flat or nested as the shape; BYTES elements in base64.",
    "items": {
        "anyOf": [
            {"type": "number"},
            {"type": "string"},
            {"type": "boolean"},
            {"type": "array", "items": {"type": ["number", "string", "boolean", "array"]}},
        ]
    },
}


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: Parameters | None = None
    data: Annotated[Any, WithJsonSchema(_DATA_SCHEMA)] = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    # KServe's client adds model_name; what the protocol does not define is ignored.
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, max_length=256)
    parameters: Parameters | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=16)
    outputs: list[RequestedOutput] | None = Field(None, max_length=64)


def parse_request(
    body: bytes, header_length: str | None, *, max_values: int | None = None
) -> tuple[InferRequest, bytes]:
    """The request's JSON and the binary data after it (``Inference-Header-Content-Length``
    says where the JSON ends; without it the whole body is JSON). ``max_values``: JSON
    holding more values than that (counted unparsed, from the separators) is refused
    before parsing blows it up in memory."""
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 < size <= len(body):
            raise errors.InvalidTensor(
                f"Inference-Header-Content-Length is {header_length!r}: it must be the size "
                f"of the JSON at the start of the {len(body)}-byte body.",
                details={"field": "Inference-Header-Content-Length"},
            )
        head, rest = body[:size], body[size:]
    values = head.count(b",") + head.count(b"[") + head.count(b"{")
    if max_values is not None and values > max_values:
        raise errors.PayloadTooLarge(
            f"The request's JSON holds about {values} values; this model's requests need at "
            f"most {max_values}. Send large tensors with the binary extension.",
            details={"max_values": max_values},
        )
    try:
        raw = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise errors.MalformedRequest(f"The inference request is not valid JSON: {e}.") from e
    except RecursionError:
        raise errors.MalformedRequest("The inference request is nested too deeply.") from None
    try:
        return InferRequest.model_validate(raw), rest
    except ValidationError as e:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
            for err in e.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise errors.InvalidTensor(
            f"Not an inference request: {summary}.", details={"problems": problems}
        ) from e


def max_json_values(io: ModelIO, max_images: int) -> int:
    """The most values a valid request's JSON holds: a whole batch of pixels, and room for
    the rest of the request."""
    return max_images * math.prod(io.input_shape) + 4096


def read_images(
    request: InferRequest,
    binary: bytes,
    io: ModelIO,
    *,
    max_images: int,
    max_image_bytes: int,
) -> list[bytes | Pixels]:
    """The images of the request's one input, for the core."""
    if len(request.inputs) != 1:
        names = [i.name for i in request.inputs]
        raise errors.InvalidTensor(
            f"The model takes one input, not {len(names)} ({', '.join(names)}): either "
            f"{IMAGE_INPUT!r} (BYTES, encoded images) or {PIXELS_INPUT!r} (FP32/UINT8 NCHW).",
            details={"inputs": names},
        )
    tensor = request.inputs[0]
    raw = _binary_part(tensor, binary)
    if tensor.datatype == "BYTES":
        return list(_encoded_images(tensor, raw, max_images, max_image_bytes))
    if tensor.datatype in _PIXEL_TYPES:
        return list(_pixels(tensor, raw, io, max_images))
    raise errors.InvalidTensor(
        f"Input {tensor.name!r} is {tensor.datatype}: images come as BYTES (encoded images) "
        "or as a UINT8 or FP32 [N, 3, S, S] tensor.",
        details={"input": tensor.name, "datatype": tensor.datatype},
    )


def _binary_part(tensor: InferInput, binary: bytes) -> bytes | None:
    """The input's bytes from the binary section (it is the only input), or None for JSON."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if binary:
            raise errors.InvalidTensor(
                f"The body has {len(binary)} bytes after its JSON but input {tensor.name!r} "
                "declares no binary_data_size.",
                details={"input": tensor.name},
            )
        if tensor.data is None:
            raise errors.InvalidTensor(
                f"Input {tensor.name!r} has no data (nor a binary_data_size).",
                details={"input": tensor.name},
            )
        return None
    if tensor.data is not None:
        raise errors.InvalidTensor(
            f"Input {tensor.name!r} has both data and a binary_data_size.",
            details={"input": tensor.name},
        )
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise errors.InvalidTensor(
            f"Input {tensor.name!r} declares binary_data_size {size!r}, but the body has "
            f"{len(binary)} bytes after its JSON.",
            details={"input": tensor.name, "binary_bytes": len(binary)},
        )
    return binary


def _count(tensor: InferInput, max_images: int) -> int:
    if any(d < 0 for d in tensor.shape) or not tensor.shape:
        raise errors.InvalidTensor(
            f"Input {tensor.name!r} has shape {tensor.shape}: every dimension must be given.",
            details={"input": tensor.name, "shape": tensor.shape},
        )
    n = tensor.shape[0]
    if n < 1:
        raise errors.MissingImage(f"Input {tensor.name!r} holds no image (shape {tensor.shape}).")
    if n > max_images:
        raise errors.TooManyImages(
            f"Input {tensor.name!r} holds {n} images; at most {max_images} per request.",
            details={"max_images": max_images, "images": n},
        )
    return n


def _encoded_images(
    tensor: InferInput, raw: bytes | None, max_images: int, max_image_bytes: int
) -> Sequence[bytes]:
    if tensor.shape[1:] not in ([], [1]):
        raise errors.InvalidTensor(
            f"BYTES input {tensor.name!r} has shape {tensor.shape}: send [N] (or [N, 1]) "
            "encoded images.",
            details={"input": tensor.name, "shape": tensor.shape},
        )
    n = _count(tensor, max_images)
    images = _split_bytes(tensor, raw, n) if raw is not None else _base64_elements(tensor, n)
    for i, image in enumerate(images):
        if len(image) > max_image_bytes:
            raise errors.ImageTooLarge(
                f"Image {i} of input {tensor.name!r} is {len(image)} bytes; the limit is "
                f"{max_image_bytes}.",
                details={"index": i, "max_bytes": max_image_bytes},
            )
    return images


def _split_bytes(tensor: InferInput, raw: bytes, n: int) -> list[bytes]:
    """The protocol's binary BYTES: each element a little-endian uint32 length, then it."""
    out: list[bytes] = []
    at = 0
    while at < len(raw) and len(out) < n:
        if at + 4 > len(raw):
            break
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            break
        out.append(raw[at : at + size])
        at += size
    if len(out) != n or at != len(raw):
        raise errors.InvalidTensor(
            f"The binary data of BYTES input {tensor.name!r} is not {n} length-prefixed "
            "elements (a little-endian uint32 size before each).",
            details={"input": tensor.name},
        )
    return out


def _base64_elements(tensor: InferInput, n: int) -> list[bytes]:
    elements = _flatten(tensor.data)
    if len(elements) != n:
        raise errors.InvalidTensor(
            f"Input {tensor.name!r} has shape {tensor.shape} but {len(elements)} elements.",
            details={"input": tensor.name, "shape": tensor.shape, "elements": len(elements)},
        )
    out = []
    for i, element in enumerate(elements):
        if not isinstance(element, str):
            raise errors.InvalidTensor(
                f"Element {i} of BYTES input {tensor.name!r} is not a string: in JSON each "
                "image is its base64 text.",
                details={"input": tensor.name, "index": i},
            )
        try:
            out.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError) as e:
            raise errors.InvalidBase64(
                f"Element {i} of BYTES input {tensor.name!r} is not base64: in JSON each image "
                "is its base64 text (or use the binary extension).",
                details={"input": tensor.name, "index": i},
            ) from e
    return out


def _pixels(tensor: InferInput, raw: bytes | None, io: ModelIO, max_images: int) -> list[Pixels]:
    expected = list(io.input_shape)
    if len(tensor.shape) != 4 or tensor.shape[1:] != expected:
        raise errors.InvalidTensor(
            f"Input {tensor.name!r} has shape {tensor.shape}; this model takes "
            f"[N, {', '.join(map(str, expected))}] ({tensor.datatype}, NCHW, RGB).",
            details={"input": tensor.name, "shape": tensor.shape, "expected": [-1, *expected]},
        )
    n = _count(tensor, max_images)
    dtype = _PIXEL_TYPES[tensor.datatype]
    size = math.prod(tensor.shape)
    if raw is not None:
        if len(raw) != size * dtype.itemsize:
            raise errors.InvalidTensor(
                f"Input {tensor.name!r} ({tensor.datatype} {tensor.shape}) needs "
                f"{size * dtype.itemsize} bytes of binary data, not {len(raw)}.",
                details={"input": tensor.name},
            )
        array = np.frombuffer(raw, dtype=dtype)
    else:
        array = _json_numbers(tensor, size, dtype)
    array = array.reshape(tensor.shape)
    if tensor.datatype == "FP32":
        try:
            array = io.transform.denormalize_array(array)
        except ValueError as e:
            raise errors.InvalidTensor(
                f"FP32 input {tensor.name!r} is not a standardised image: {e}.",
                details={"input": tensor.name},
            ) from e
    pixels = torch.from_numpy(np.array(array, dtype=np.uint8, copy=True))
    return [Pixels(pixels[i]) for i in range(n)]


def _json_numbers(tensor: InferInput, size: int, dtype: np.dtype[Any]) -> np.ndarray:
    values = _flatten(tensor.data)
    if len(values) != size:
        raise errors.InvalidTensor(
            f"Input {tensor.name!r} has shape {tensor.shape} ({size} values) but "
            f"{len(values)} values.",
            details={"input": tensor.name, "values": len(values)},
        )
    if not all(type(v) in (int, float) for v in values):  # no bools, strings or nulls
        raise errors.InvalidTensor(
            f"Input {tensor.name!r} ({tensor.datatype}) holds values that are not numbers.",
            details={"input": tensor.name},
        )
    array = np.asarray(values, dtype=np.float64)
    if dtype.kind == "u":
        if not np.isfinite(array).all() or (array != np.rint(array)).any():
            raise errors.InvalidTensor(
                f"UINT8 input {tensor.name!r} holds values that are not whole numbers.",
                details={"input": tensor.name},
            )
        if array.size and (array.min() < 0 or array.max() > 255):
            raise errors.InvalidTensor(
                f"UINT8 input {tensor.name!r} holds values outside 0..255.",
                details={"input": tensor.name},
            )
    return array.astype(dtype)


def _flatten(data: Any) -> list[Any]:
    """The protocol allows the data flat (row-major) or nested as the shape."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise errors.InvalidTensor("The data is nested deeper than any shape here.")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


# --- outputs ---------------------------------------------------------------------------------


def head_values(io: ModelIO) -> dict[str, list[str]]:
    """Each output (head) and its values, the main head (``label``) first."""
    return {MAIN_HEAD: list(io.labels), **{h: list(v) for h, v in io.heads.items()}}


def model_metadata(io: ModelIO, *, name: str, versions: list[str]) -> dict[str, Any]:
    side = io.input_shape[-1]
    return {
        "name": name,
        "versions": versions,
        "platform": "pytorch_torchvision",
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, 3, side, side]},
        ],
        "outputs": [
            {"name": head, "datatype": "FP32", "shape": [-1, len(values)]}
            for head, values in head_values(io).items()
        ],
    }


def build_response(
    request: InferRequest,
    results: Sequence[Classified],
    io: ModelIO,
    *,
    model_name: str,
    model_version: str,
) -> tuple[dict[str, Any], bytes]:
    """The response's JSON and the binary data after it (empty when all is JSON)."""
    heads = head_values(io)
    params = request.parameters or {}
    wanted = request.outputs or [RequestedOutput(name=h) for h in heads]
    binary_default = _flag(params, "binary_data_output", "request")
    outputs, chunks = [], []
    for out in wanted:
        values = heads.get(out.name)
        if values is None:
            raise errors.InvalidTensor(
                f"The model has no output {out.name!r}; its outputs: {', '.join(heads)}.",
                details={"output": out.name, "outputs": list(heads)},
            )
        own = out.parameters or {}
        k = own.get("classification", params.get("classification"))
        binary = _flag(own, "binary_data", out.name) if "binary_data" in own else binary_default
        rows = np.asarray([_distributions(r)[out.name] for r in results], dtype=np.float32)
        tensor: dict[str, Any] = {"name": out.name}
        if k is not None:
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise errors.InvalidTensor(
                    f"classification on output {out.name!r} must be a positive whole number, "
                    f"not {k!r}.",
                    details={"output": out.name},
                )
            k = min(k, len(values))
            order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
            strings = [
                f"{rows[r, i]:f}:{i}:{values[i]}" for r in range(len(rows)) for i in order[r]
            ]
            tensor.update(datatype="BYTES", shape=[len(rows), k])
            if binary:
                data = b"".join(
                    struct.pack("<I", len(b)) + b for b in (s.encode() for s in strings)
                )
            else:
                tensor["data"] = strings
        else:
            tensor.update(datatype="FP32", shape=[len(rows), len(values)])
            if binary:
                data = rows.astype("<f4").tobytes()
            else:
                tensor["data"] = rows.astype(np.float32).ravel().tolist()
        if binary:
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        outputs.append(tensor)
    body: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": outputs,
    }
    if request.id is not None:
        body["id"] = request.id
    return body, b"".join(chunks)


def _distributions(result: Classified) -> dict[str, list[float]]:
    if result.probabilities is None:
        raise ValueError("classify with full=True for the v2 outputs")
    return result.probabilities


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise errors.InvalidTensor(
            f"{key} on {where} must be true or false, not {value!r}.", details={"field": key}
        )
    return value
