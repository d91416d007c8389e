"""The Open Inference Protocol (v2) at /v2, through the real clients: Triton's
``tritonclient.http`` (JSON and binary, BYTES input, classification output) and KServe's
``InferenceRESTClient``, against the running service; /v2 answers equal /v1's; its errors,
keys, per-image rate limits, metrics and records are /v1's."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from tritonclient.utils import InferenceServerException

from imageiq.db.schema import Prediction
from imageiq.keys import create_key
from imageiq.preprocessing import EvalTransform
from imageiq.registry import RegisteredModel
from tests.backends import Stack, wait_for
from tests.conftest import Server
from tests.imageiq.images_helpers import encode, photo

pytestmark = pytest.mark.slow


def digits(digits_dir: Path, n: int) -> list[bytes]:
    files = sorted(digits_dir.glob("*/*.png"))
    step = max(1, len(files) // n)
    return [f.read_bytes() for f in files[::step][:n]]


def headers(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key}"}


def triton_client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


def v1_top(server: Server, image: bytes, k: int, model: str) -> dict[str, Any]:
    resp = server.post(
        "/v1/classify",
        files={"image": ("x.png", image)},
        data={"top_k": str(k), "model": model},
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def classification(row: np.ndarray) -> list[tuple[float, int, str]]:
    out = []
    for item in row:
        text = item.decode() if isinstance(item, bytes) else str(item)
        score, index, label = text.split(":", 2)
        out.append((float(score), int(index), label))
    return out


def test_health_and_server_metadata_need_no_key(served: Server) -> None:
    client = triton_client(served)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "imageiq" and "classification" in meta["extensions"]
    assert "binary_tensor_data" in meta["extensions"]
    for path in ("/v2", "/v2/", "/v2/health/live", "/v2/health/ready"):
        resp = served.get(path, auth=False, follow_redirects=False)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)

    async def kserve_checks() -> tuple[bool, bool]:
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as rest:
            return await rest.is_server_live(served.url), await rest.is_server_ready(served.url)

    assert asyncio.run(kserve_checks()) == (True, True)


def test_model_metadata_ready_and_errors(
    served: Server, digits_model: RegisteredModel, species_model: RegisteredModel
) -> None:
    client = triton_client(served)
    meta = client.get_model_metadata(digits_model.name, headers=headers(served))
    assert meta["name"] == digits_model.name
    assert digits_model.version in meta["versions"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "image": "BYTES",
        "pixels": "FP32",
    }
    assert meta["inputs"][1]["shape"] == [-1, 3, 16, 16]
    assert meta["outputs"] == [{"name": "label", "datatype": "FP32", "shape": [-1, 10]}]
    species = client.get_model_metadata(species_model.name, headers=headers(served))
    assert [o["name"] for o in species["outputs"]] == ["label", "shiny", "shadow"]
    assert client.is_model_ready(digits_model.name, headers=headers(served))
    assert client.is_model_ready(
        digits_model.name, model_version=digits_model.version, headers=headers(served)
    )
    assert not client.is_model_ready("no-such-model", headers=headers(served))
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("no-such-model", headers=headers(served))
    assert "not served" in raised.value.message()
    # The protocol's error form, with the code and request id beside the message.
    resp = served.get("/v2/models/no-such-model")
    assert resp.status_code == 404
    assert resp.json()["code"] == "model_not_found" and isinstance(resp.json()["error"], str)
    assert resp.json()["request_id"] == resp.headers["X-Request-ID"]
    resp = served.get(f"/v2/models/{digits_model.name}", auth=False)
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
    resp = served.get(f"/v2/models/{digits_model.name}", headers={"Authorization": "Bearer iiq_x"})
    assert resp.status_code == 401 and isinstance(resp.json()["error"], str)

    async def kserve_ready() -> bool:
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as rest:
            return await rest.is_model_ready(served.url, digits_model.name, headers=headers(served))

    assert asyncio.run(kserve_ready())


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_bytes_input_with_classification_matches_v1(
    served: Server, digits_model: RegisteredModel, digits_dir: Path, binary: bool
) -> None:
    images = digits(digits_dir, 6)
    client = triton_client(served)
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:  # in JSON an image is its base64 text
        b64 = [base64.b64encode(i) for i in images]
        tensor.set_data_from_numpy(np.array(b64, dtype=np.object_), binary_data=False)
    outputs = [triton.InferRequestedOutput("label", binary_data=binary, class_count=3)]
    result = client.infer(
        digits_model.name, [tensor], outputs=outputs, headers=headers(served), request_id="r-1"
    )
    top = result.as_numpy("label")
    assert top.shape == (len(images), 3)
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == digits_model.version
    for image, row in zip(images, top, strict=True):
        v1 = v1_top(served, image, 3, digits_model.tag)["predictions"]
        got = classification(row)
        assert [g[2] for g in got] == [p["label"] for p in v1]
        assert [g[1] for g in got] == [int(p["label"]) for p in v1]  # the digits' indices
        for (score, _, _), p in zip(got, v1, strict=True):
            assert score == pytest.approx(p["score"], abs=1e-5)

    # Without the extension: the whole distribution, FP32 [N, 10].
    probs = client.infer(
        digits_model.name,
        [tensor],
        outputs=[triton.InferRequestedOutput("label", binary_data=binary)],
        headers=headers(served),
    ).as_numpy("label")
    assert probs.dtype == np.float32 and probs.shape == (len(images), 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert [str(i) for i in probs.argmax(axis=1)] == [classification(r)[0][2] for r in top]


def test_tensor_inputs_equal_the_encoded_images(
    served: Server, digits_model: RegisteredModel, digits_dir: Path
) -> None:
    """UINT8 pixels and FP32 standardised pixels (as torchvision's transforms make them)
    give the same answer as the encoded image the server prepares itself."""
    images = digits(digits_dir, 4)
    transform = EvalTransform(digits_model.card.preprocessing)
    pixels = np.stack(
        [transform.to_uint8(transform.decode(i, max_pixels=10**7).image).numpy() for i in images]
    )
    standardised = transform.normalize(torch.from_numpy(pixels)).numpy()
    client = triton_client(served)
    encoded = triton.InferInput("image", [len(images)], "BYTES")
    encoded.set_data_from_numpy(np.array(images, dtype=np.object_))
    want = client.infer(digits_model.name, [encoded], headers=headers(served)).as_numpy("label")
    for datatype, array, binary in (
        ("UINT8", pixels, True),
        ("UINT8", pixels, False),
        ("FP32", standardised.astype(np.float32), True),
        ("FP32", standardised.astype(np.float32), False),
    ):
        tensor = triton.InferInput("pixels", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        got = client.infer(digits_model.name, [tensor], headers=headers(served)).as_numpy("label")
        assert np.allclose(got, want, atol=1e-5), (datatype, binary)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_kserve_client_matches_v1_with_attribute_heads(
    served: Server, species_model: RegisteredModel, binary: bool
) -> None:
    images = [encode(photo(40 + 7 * i, 30 + 5 * i, seed=i), "PNG") for i in range(3)]
    if binary:
        tensor = InferInput("image", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:
        b64 = [base64.b64encode(i).decode() for i in images]
        tensor = InferInput("image", [len(images)], "BYTES", data=b64)
    request = InferRequest(
        model_name=species_model.name,
        infer_inputs=[tensor],
        request_outputs=[
            RequestedOutput("label", parameters={"classification": 2, "binary_data": binary}),
            RequestedOutput("shiny", parameters={"binary_data": binary}),
            RequestedOutput("shadow", parameters={"binary_data": binary}),
        ],
    )

    async def run() -> Any:
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as rest:
            return await rest.infer(
                served.url, request, model_name=species_model.name, headers=headers(served)
            )

    response = asyncio.run(run())
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert outputs["label"].shape == (3, 2)
    assert outputs["shiny"].shape == outputs["shadow"].shape == (3, 2)
    for i, image in enumerate(images):
        v1 = v1_top(served, image, 2, species_model.name)
        got = classification(outputs["label"][i])
        assert [g[2] for g in got] == [p["label"] for p in v1["predictions"]]
        assert got[0][0] == pytest.approx(v1["predictions"][0]["score"], abs=1e-5)
        for head in ("shiny", "shadow"):
            best = int(outputs[head][i].argmax())
            assert ["no", "yes"][best] == v1["attributes"][head]["label"]
            assert outputs[head][i][best] == pytest.approx(
                v1["attributes"][head]["score"], abs=1e-5
            )


def infer_raw(
    server: Server, model: str, body: bytes | dict[str, Any], **kwargs: Any
) -> httpx.Response:
    if isinstance(body, dict):
        return server.post(f"/v2/models/{model}/infer", json=body, **kwargs)
    return server.post(f"/v2/models/{model}/infer", content=body, **kwargs)


def bytes_input(images: list[str]) -> dict[str, Any]:
    return {
        "inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": images}]
    }


def test_bad_requests_are_4xx_in_the_protocol_form(
    served: Server, digits_model: RegisteredModel, digits_dir: Path
) -> None:
    name = digits_model.name
    good = base64.b64encode(digits(digits_dir, 1)[0]).decode()
    pixels = {"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 16, 16]}
    cases: list[tuple[bytes | dict[str, Any], dict[str, str], int, str]] = [
        (b"{not json", {}, 400, "malformed_request"),
        ({"inputs": []}, {}, 400, "invalid_tensor"),
        ({"inputs": [{"name": "image"}]}, {}, 400, "invalid_tensor"),
        ({"inputs": "x", "extra": 1}, {}, 400, "invalid_tensor"),
        (bytes_input([good]) | {"outputs": [{"name": "nope"}]}, {}, 400, "invalid_tensor"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]},
            {},
            400,
            "invalid_tensor",
        ),
        (bytes_input(["not base64!"]), {}, 422, "invalid_base64"),
        (
            bytes_input([base64.b64encode(b"plain text").decode()]),
            {},
            415,
            "unsupported_image_format",
        ),
        (bytes_input([good] * 33), {}, 413, "too_many_images"),
        (
            {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [good]}]},
            {},
            400,
            "invalid_tensor",
        ),
        (
            {"inputs": [pixels | {"shape": [1, 3, 224, 224], "data": [0]}]},
            {},
            400,
            "invalid_tensor",
        ),
        ({"inputs": [pixels | {"data": [300] * 768}]}, {}, 400, "invalid_tensor"),
        ({"inputs": [pixels | {"data": ["a"] * 768}]}, {}, 400, "invalid_tensor"),
        ({"inputs": [pixels | {"data": [0] * 767}]}, {}, 400, "invalid_tensor"),
        (
            {"inputs": [pixels | {"datatype": "FP32", "data": [1e9] * 768}]},
            {},
            400,
            "invalid_tensor",
        ),
        (
            bytes_input([good])
            | {"outputs": [{"name": "label", "parameters": {"classification": 0}}]},
            {},
            400,
            "invalid_tensor",
        ),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400, "invalid_tensor"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "x"}, 400, "invalid_tensor"),
    ]
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 10},
                }
            ]
        }
    ).encode()
    for tail in (b"\x05\x00\x00\x00abcdef", struct.pack("<I", 99) + b"abcdef"):
        cases.append(
            (
                head + tail,
                {"Inference-Header-Content-Length": str(len(head))},
                400,
                "invalid_tensor",
            )
        )
    for body, extra, status, code in cases:
        resp = infer_raw(served, name, body, headers=extra)
        assert resp.status_code == status, (
            body if isinstance(body, dict) else body[:80],
            resp.text,
        )
        answer = resp.json()
        assert answer["code"] == code and isinstance(answer["error"], str), answer
        assert resp.headers["X-Error-Code"] == code
    # A batch with one bad image fails whole (the protocol has no per-item errors), naming it.
    resp = infer_raw(served, name, bytes_input([good, base64.b64encode(b"GIF89a").decode()]))
    assert resp.status_code in (415, 422) and "Image 1" in resp.json()["error"]
    # Unknown routes and methods are the protocol's errors too.
    assert served.get("/v2/nothing").json()["code"] == "not_found"
    assert served.get(f"/v2/models/{name}/infer").status_code == 405


def test_v2_shares_v1s_rate_limit_records_and_metrics(
    served: Server, stack: Stack, digits_model: RegisteredModel, digits_dir: Path
) -> None:
    from imageiq.backends import open_database
    from imageiq.settings import Settings

    settings = Settings(database_url=served.env["IMAGEIQ_DATABASE_URL"])
    engine = open_database(settings)
    try:
        key, _ = create_key(
            engine,
            name="v2-limited",
            scopes=["classify"],
            pepper=settings.pepper,
            rate_limit_per_minute=6,
        )
    finally:
        engine.dispose()
    auth = {"Authorization": f"Bearer {key}"}
    images = [base64.b64encode(i).decode() for i in digits(digits_dir, 6)]
    # Six images cost six: more than the burst (5) at once is a 413, as on /v1.
    resp = infer_raw(served, digits_model.name, bytes_input(images), headers=auth)
    assert resp.status_code == 413 and resp.json()["code"] == "too_many_images"
    resp = infer_raw(served, digits_model.name, bytes_input(images[:4]), headers=auth)
    assert resp.status_code == 200, resp.text
    # Four spent of five: two more images are over the limit, on /v2 and on /v1 alike.
    resp = infer_raw(served, digits_model.name, bytes_input(images[:2]), headers=auth)
    assert resp.status_code == 429 and resp.json()["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    v1 = served.post(
        "/v1/classify/batch",
        files=[
            ("images", ("a.png", base64.b64decode(images[0]))),
            ("images", ("b.png", base64.b64decode(images[1]))),
        ],
        headers=auth,
    )
    assert v1.status_code == 429
    # The four images were recorded under the key, like /v1's.
    key_id = key.split("_")[1]

    def recorded() -> int:
        return stack.count(Prediction, Prediction.api_key_id == key_id)

    wait_for(lambda: recorded() == 4, what="the v2 predictions recorded")
    metrics = served.get("/metrics").text
    assert 'endpoint="/v2/models/{name}/infer"' in metrics
    series = [line for line in metrics.splitlines() if line.startswith("imageiq_requests_total{")]
    assert any(
        'endpoint="/v2/models/{name}/infer"' in line and 'code="rate_limited"' in line
        for line in series
    ), series
