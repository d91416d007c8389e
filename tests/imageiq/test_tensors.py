"""The v2 protocol's tensors (imageiq/tensors.py), without a server: parsing, the binary
extension both ways, tensor inputs back to the model's pixels, the classification
extension's strings."""

from __future__ import annotations

import base64
import json
import struct
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from imageiq import errors, tensors
from imageiq.classify import Classified, ImageFacts, Pixels, Timings
from imageiq.inference import ModelIO
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import ModelCard


def model_io(side: int = 4) -> ModelIO:
    card = ModelCard(
        architecture="resnet18",
        labels=["cat", "dog", "owl"],
        heads={"shiny": ["no", "yes"]},
        preprocessing=PreprocessConfig(resize_size=side, crop_size=side),
    )
    return ModelIO(SimpleNamespace(card=card))  # type: ignore[arg-type]


def serialized(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def read(request: dict[str, Any], binary: bytes = b"", **limits: int) -> list[Any]:
    head = json.dumps(request).encode()
    parsed, rest = tensors.parse_request(head + binary, str(len(head)) if binary else None)
    return tensors.read_images(
        parsed,
        rest,
        model_io(),
        max_images=limits.get("max_images", 8),
        max_image_bytes=limits.get("max_image_bytes", 1000),
    )


def test_bytes_inputs_json_base64_and_binary() -> None:
    images = [b"\x89PNG one", b"\xff\xd8 two"]
    as_json = read(
        {
            "inputs": [
                {
                    "name": "any",
                    "shape": [2, 1],
                    "datatype": "BYTES",
                    "data": [[base64.b64encode(i).decode()] for i in images],
                }
            ]
        }
    )
    binary = serialized(*images)
    as_binary = read(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(binary)},
                }
            ]
        },
        binary,
    )
    assert as_json == as_binary == images


@pytest.mark.parametrize(
    "payload",
    [
        serialized(b"abc")[:-1],  # an element cut short
        serialized(b"abc") + b"\x00",  # bytes left over
        struct.pack("<I", 2**31) + b"x",  # a length past the end
        serialized(b"a", b"b", b"c"),  # more elements than the shape says
    ],
)
def test_binary_bytes_that_do_not_add_up_are_refused(payload: bytes) -> None:
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [2] if payload.count(b"\x01\x00\x00\x00") == 3 else [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(payload)},
            }
        ]
    }
    with pytest.raises(errors.InvalidTensor):
        read(request, payload)


def test_limits_and_shapes() -> None:
    one = base64.b64encode(b"x" * 10).decode()
    with pytest.raises(errors.TooManyImages):
        read(
            {"inputs": [{"name": "i", "shape": [9], "datatype": "BYTES", "data": [one] * 9}]},
            max_images=8,
        )
    with pytest.raises(errors.ImageTooLarge):
        read(
            {"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": [one]}]},
            max_image_bytes=9,
        )
    for shape in ([1, 2], [-1], [], [0]):
        with pytest.raises((errors.InvalidTensor, errors.MissingImage)):
            read({"inputs": [{"name": "i", "shape": shape, "datatype": "BYTES", "data": [one]}]})


def test_fp32_pixels_round_trip_to_the_models_uint8() -> None:
    io = model_io()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 3, 4, 4), dtype=np.uint8)
    standardised = io.transform.normalize(torch.from_numpy(pixels)).numpy()
    # A float input a little off the grey levels rounds to the nearest one.
    nudged = standardised + np.float32(0.3 / 255) / np.asarray(io.transform.config.std).reshape(
        1, 3, 1, 1
    ).astype(np.float32)
    for data in (standardised, nudged):
        got = read(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [2, 3, 4, 4],
                        "datatype": "FP32",
                        "data": data.astype(np.float32).ravel().tolist(),
                    }
                ]
            }
        )
        assert all(isinstance(g, Pixels) for g in got)
        assert np.array_equal(np.stack([g.tensor.numpy() for g in got]), pixels)
    binary = pixels.tobytes()
    got = read(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [2, 3, 4, 4],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(binary)},
                }
            ]
        },
        binary,
    )
    assert np.array_equal(np.stack([g.tensor.numpy() for g in got]), pixels)


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP32", [5.0] * 48),  # not a standardised image (pixel ~1400)
        ("FP32", [float("nan")] * 48),
        ("UINT8", [256] * 48),
        ("UINT8", [1.5] * 48),
        ("UINT8", [True] * 48),
        ("UINT8", [1] * 47),
    ],
)
def test_tensors_that_are_not_images_are_refused(datatype: str, values: list[Any]) -> None:
    request = {
        "inputs": [{"name": "p", "shape": [1, 3, 4, 4], "datatype": datatype, "data": values}]
    }
    with pytest.raises(errors.InvalidTensor):
        read(request)


def test_the_pixels_digest_is_not_an_images() -> None:
    t = torch.zeros(3, 4, 4, dtype=torch.uint8)
    assert Pixels(t).digest() != Pixels(torch.ones(3, 4, 4, dtype=torch.uint8)).digest()
    assert Pixels(t).digest() == Pixels(t.clone()).digest()


def classified(label: list[float], shiny: list[float]) -> Classified:
    return Classified(
        labels=[],
        scored=[],
        attributes={},
        image=ImageFacts(sha256="0" * 64, width=1, height=1, format="PNG", bytes=1),
        batch_size=1,
        cached=False,
        timing_ms=Timings(0, 0, 0, 0, 0),
        probabilities={"label": label, "shiny": shiny},
    )


def test_outputs_probabilities_classification_and_binary() -> None:
    io = model_io()
    results = [classified([0.2, 0.7, 0.1], [0.4, 0.6]), classified([0.5, 0.2, 0.3], [0.9, 0.1])]
    request = tensors.InferRequest.model_validate(
        {
            "id": "abc",
            "inputs": [{"name": "i", "shape": [2], "datatype": "BYTES", "data": ["", ""]}],
            "outputs": [
                {"name": "label", "parameters": {"classification": 2}},
                {"name": "shiny", "parameters": {"binary_data": True}},
            ],
        }
    )
    body, binary = tensors.build_response(request, results, io, model_name="m", model_version="v")
    assert body["id"] == "abc" and body["model_name"] == "m" and body["model_version"] == "v"
    label, shiny = body["outputs"]
    assert label == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["0.700000:1:dog", "0.200000:0:cat", "0.500000:0:cat", "0.300000:2:owl"],
    }
    assert shiny["datatype"] == "FP32" and shiny["shape"] == [2, 2] and "data" not in shiny
    assert shiny["parameters"]["binary_data_size"] == len(binary) == 16
    assert np.frombuffer(binary, dtype="<f4").tolist() == pytest.approx([0.4, 0.6, 0.9, 0.1])
    # Every head by default, as JSON; request-level classification and binary for all.
    all_heads = tensors.InferRequest.model_validate(
        {
            "inputs": [{"name": "i", "shape": [2], "datatype": "BYTES", "data": ["", ""]}],
            "parameters": {"classification": 1, "binary_data_output": True},
        }
    )
    body, binary = tensors.build_response(all_heads, results, io, model_name="m", model_version="v")
    assert [o["name"] for o in body["outputs"]] == ["label", "shiny"]
    assert binary == serialized(b"0.700000:1:dog", b"0.500000:0:cat") + serialized(
        b"0.600000:1:yes", b"0.900000:0:no"
    )


@pytest.mark.parametrize(
    "outputs",
    [
        [{"name": "nope"}],
        [{"name": "label", "parameters": {"classification": 0}}],
        [{"name": "label", "parameters": {"classification": "3"}}],
        [{"name": "label", "parameters": {"binary_data": "yes"}}],
    ],
)
def test_bad_requested_outputs(outputs: list[dict[str, Any]]) -> None:
    request = tensors.InferRequest.model_validate(
        {
            "inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": [""]}],
            "outputs": outputs,
        }
    )
    with pytest.raises(errors.InvalidTensor):
        tensors.build_response(
            request, [classified([1, 0, 0], [1, 0])], model_io(), model_name="m", model_version="v"
        )


@pytest.mark.parametrize(
    ("body", "header"),
    [(b"{}", None), (b"[1]", None), (b"\xff", None), (b'{"inputs": []}', "0"), (b"{}", "-1")],
)
def test_requests_that_are_not_inference_requests(body: bytes, header: str | None) -> None:
    with pytest.raises((errors.InvalidTensor, errors.MalformedRequest)):
        tensors.parse_request(body, header)


def test_nested_data_is_flattened_row_major() -> None:
    assert tensors._flatten([[1, 2], [3, [4, 5]]]) == [1, 2, 3, 4, 5]
    with pytest.raises(errors.InvalidTensor):
        deep: list[Any] = [1]
        for _ in range(20):
            deep = [deep]
        tensors._flatten(deep)


def test_json_too_deep_or_with_too_many_values_is_refused_unparsed() -> None:
    with pytest.raises(errors.MalformedRequest):
        tensors.parse_request(b"[" * 100_000 + b"]" * 100_000, None)
    io = model_io()
    most = tensors.max_json_values(io, max_images=2)
    assert most == 2 * 3 * 4 * 4 + 4096
    body = json.dumps(
        {"inputs": [{"name": "p", "shape": [1], "datatype": "UINT8", "data": [0] * most}]}
    ).encode()
    with pytest.raises(errors.PayloadTooLarge):
        tensors.parse_request(body, None, max_values=most)
